"""Repair (design.md, "Repair"): bulk jobs whose stored state disagrees with their items, found and finished.

The policy is written once, here, over small store reads (`pending_bulk_ids`,
`item_counts`, `list_bulks`), so it is the same for both stores. Every fix is
a verb of a normal run: `refresh_counters` derives the job from its items and
records its end and outbox once (design.md, "Invariants", 6), `cancel_bulk` runs its
idempotent sweeps again, `retry_item` finishes an item retry that stopped
half-way. A repaired job therefore ends, and is notified, exactly as if
nothing had happened. Every processor runs the cheap look (`thorough=False`:
active jobs and jobs with a pending item, never a scan of finished ones) at
start and on its regular look for expired leases; `bulkgen doctor` runs the
thorough one (every job).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from bulkgen_cli.core.model import ACTIVE_BULK, BulkJob, BulkStatus, Counts, ItemStatus
from bulkgen_cli.store.base import Store

ACTIVE_STATUSES = {s.value for s in ACTIVE_BULK}
#: list_bulks' limit when every job is meant.
EVERY_JOB = 2 ** 62


@dataclass(frozen=True)
class Finding:
    """One job whose stored state disagrees with its items."""

    bulk: BulkJob  # as read when it was found
    items: Counts  # its items, counted by status when it was found
    problem: str  # what is wrong, one sentence
    #: after a fix: the refresh's counts (`ended_now` when the fix recorded the job's end), and whether it holds now
    counts: Counts | None = None
    fixed: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def diagnose(bulk: BulkJob, items: Counts) -> str | None:
    """What is wrong with a job whose items are counted `items`, in one sentence; None when nothing is."""
    total = items.pending + items.completed + items.failed + items.cancelled
    if bulk.status in ACTIVE_STATUSES and items.pending == 0:
        return (f"it is {bulk.status} but none of its {_plural(total, 'item')} is pending: "
                f"its end was never recorded")
    if bulk.status == BulkStatus.cancelled.value and items.pending:
        return f"it is cancelled but {_plural(items.pending, 'item')} of it still wait or run"
    if bulk.status == BulkStatus.completed.value and items.pending:
        return (f"it is completed but {_plural(items.pending, 'item')} of it were queued again "
                f"(an item retry that stopped half-way)")
    stored = (bulk.completed_items, bulk.failed_items, bulk.cancelled_items)
    if stored != (items.completed, items.failed, items.cancelled):
        return ("its counters say {} completed, {} failed, {} cancelled; its items say {}, {}, {}"
                .format(*stored, items.completed, items.failed, items.cancelled))
    return None


def seen(bulk: BulkJob, items: Counts) -> BulkJob:
    """An active job as its items say it is, for reading commands (they never write).

    Counters that disagree with the items are shown as the items count them; a
    job with nothing pending is shown `completed` without ETA, its `completed_at`
    still None until a processor or `doctor --fix` records the end (`UNRECORDED_END`).
    """
    if bulk.status not in ACTIVE_STATUSES:
        return bulk
    shown = dataclasses.replace(bulk, completed_items=items.completed, failed_items=items.failed,
                                cancelled_items=items.cancelled)
    if items.pending:
        return shown
    return dataclasses.replace(shown, status=BulkStatus.completed.value, estimated_completion=None,
                               completed_at=None)


def unrecorded_end(bulk: BulkJob) -> bool:
    """Whether a job shown completed has its end still to be recorded (`seen`)."""
    return bulk.status == BulkStatus.completed.value and bulk.completed_at is None


#: What status says of such a job.
UNRECORDED_END = ("not recorded yet: nothing of it is pending, and any `bulkgen run` (or `bulkgen doctor --fix`) "
                  "records its end and sends its notifications")


def look(store: Store, thorough: bool = False) -> list[Finding]:
    """The jobs that disagree with their items, oldest first.

    Routine (`thorough` False): only the jobs whose state can disagree, from two
    indexed reads (the active jobs; the jobs with a queued or processing item):
    an active job without a pending item, or a pending item in a job that is not
    active; each such job's items are then counted. Counters that are off in an
    active job with items pending are left to that job's next refresh (every
    item's end makes one). Thorough: every job, each counted.
    """
    pending = set(store.pending_bulk_ids())
    active = {b.id: b for b in store.list_bulks(limit=EVERY_JOB, statuses=ACTIVE_BULK)}
    if thorough:
        jobs = {b.id: b for b in store.list_bulks(limit=EVERY_JOB)}
    else:
        jobs = {bulk_id: bulk for bulk_id, bulk in active.items() if bulk_id not in pending}
    for bulk_id in pending - active.keys() - jobs.keys():
        bulk = store.get_bulk(bulk_id)
        if bulk is not None:
            jobs[bulk_id] = bulk
    findings = []
    for bulk in sorted(jobs.values(), key=lambda b: (b.created_at, b.id)):
        items = store.item_counts(bulk.id)
        problem = diagnose(bulk, items)
        if problem is not None:
            findings.append(Finding(bulk, items, problem))
    return findings


def fix(store: Store, finding: Finding, now: dt.datetime, seconds_between_items: float = 0.0) -> Finding:
    """Finish a job found inconsistent with the verbs of a normal run; the refresh records its end once."""
    bulk_id = finding.bulk.id
    current = store.get_bulk(bulk_id)
    if current is not None and current.status == BulkStatus.cancelled.value:
        store.cancel_bulk(bulk_id, now)  # its sweeps again: idempotent
    elif current is not None and current.status == BulkStatus.completed.value and finding.items.queued:
        queued = next((i for i in store.list_items(bulk_id) if i.status == ItemStatus.queued.value), None)
        if queued is not None:  # queued again by an item retry whose job write never came: the retry finishes it
            store.retry_item(queued.id, ItemStatus.queued, now)
    counts = store.refresh_counters(bulk_id, now, seconds_between_items)
    after = store.get_bulk(bulk_id)
    fixed = after is not None and diagnose(after, store.item_counts(bulk_id)) is None
    return dataclasses.replace(finding, counts=counts, fixed=fixed)


def repair(store: Store, now: dt.datetime, seconds_between_items: float = 0.0,
           thorough: bool = False) -> list[Finding]:
    """Look, and fix what was found; each finding says whether it holds now and what the refresh recorded."""
    return [fix(store, finding, now, seconds_between_items) for finding in look(store, thorough)]
