"""The operations on bulk jobs, as a library: the CLI calls them, and so will a server.

Each takes a store and plain values and returns plain data (records and
dataclasses); none prints, reads flags, builds a notifier or exits (a
notifier is passed in). Errors are `BulkgenError`s whose exit code the caller
maps.

The input layer (`manifest`, and with it yaml: about 20 ms of a cold start) is
imported by `submit`, not with the module: `status` and `list` load this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bulkgen_cli.ops import control, items
from bulkgen_cli.core.errors import BulkgenError, NotFound, UsageError
from bulkgen_cli.core.model import (
    DEFAULT_QUALITY_RATIO, BulkJob, BulkStatus, Item, Priority, QualityPolicy, new_id, split_sizes, utcnow,
)
from bulkgen_cli.store import repair
from bulkgen_cli.store.base import Store
from bulkgen_cli.core.text import quoted

if TYPE_CHECKING:
    from bulkgen_cli.store.rules import Quota
    from bulkgen_cli.input.manifest import Manifest

#: A bulk job's name is cut to this many characters.
NAME_LIMIT = 200


@dataclass(frozen=True)
class Submitted:
    #: each part's job and whether this call stored it (False: its idempotency key was used already)
    jobs: list[tuple[BulkJob, bool]]
    #: the --split group's id, when the file became several jobs
    group: str | None
    sizes: list[int]

    @property
    def ids(self) -> list[str]:
        return [bulk.id for bulk, _ in self.jobs]


def submit(store: Store, parsed: Manifest, user: str, *, name: str | None = None,
           idempotency_key: str | None = None, notify: list[str] | None = None,
           priority: Priority = Priority.normal, not_before: dt.datetime | None = None,
           split: bool = False, quality: QualityPolicy = QualityPolicy.warn,
           quality_ratio: float = DEFAULT_QUALITY_RATIO,
           notify_policy: dict[str, Any] | None = None, limits: Quota | None = None) -> Submitted:
    """Store a validated file as one bulk job (or, with `split`, balanced parts linked by a group), all or nothing.

    When storing a part fails, the parts stored before it are cancelled (a half
    group must not run) and the error is raised, saying which part could not be
    cancelled if any. `quality` and `quality_ratio`: the quality gate's policy and words ratio (0 to 1).
    `limits`: the user's quota, checked by the store with each insert (QuotaExceeded; design.md, "Quotas").
    """
    if not 0 <= quality_ratio <= 1:
        raise UsageError(f"the quality ratio must be between 0 and 1 (0 turns the words check off), got {quality_ratio:g}.")
    sizes = split_sizes(len(parsed.articles)) if split else [len(parsed.articles)]
    group = new_id() if len(sizes) > 1 else None
    base_name = (name or parsed.name).strip()[:NAME_LIMIT] or parsed.name
    jobs: list[tuple[BulkJob, bool]] = []
    offset = 0
    from bulkgen_cli.input.manifest import stored_size  # see the module's docstring

    try:
        for number, size in enumerate(sizes, start=1):
            part = group is not None
            articles = parsed.articles[offset:offset + size]
            bulk = BulkJob(
                id=new_id(), userId=user, mode=parsed.mode.value,
                name=f"{base_name} ({number}/{len(sizes)})" if part else base_name,
                status=BulkStatus.queued.value, total_items=size, created_at=utcnow(),
                idempotency_key=f"{idempotency_key}#{number}" if part and idempotency_key else idempotency_key,
                notify=list(notify or []), priority=priority.value, not_before=not_before, group_id=group,
                quality=QualityPolicy(quality).value, quality_ratio=float(quality_ratio),
                notify_policy=notify_policy, stored_bytes=stored_size(articles),
            )
            jobs.append(store.create_bulk(bulk, articles, limits))
            offset += size
    except BulkgenError as exc:
        _undo(store, [bulk for bulk, created in jobs if created], exc)
        raise
    return Submitted(jobs, group, sizes)


def _undo(store: Store, stored: list[BulkJob], failure: BulkgenError) -> None:
    """Cancel the parts of a group stored before `failure`; name any that could not be cancelled in it."""
    for bulk in stored:
        try:
            store.cancel_bulk(bulk.id, utcnow())
            store.refresh_counters(bulk.id, utcnow())
        except BulkgenError as cleanup:
            failure.args = (f"{failure} Bulk job {bulk.id}, stored before the failure, could not be cancelled: "
                            f"{cleanup} Cancel it with `bulkgen cancel {bulk.id}`.",)


def visible(store: Store, bulk_id: str, user: str, all_users: bool = False) -> BulkJob:
    """The bulk job if it exists and `user` may see it; NotFound (exit 3) otherwise."""
    bulk = store.get_bulk(bulk_id)
    if bulk is None or (not all_users and bulk.userId != user):
        cli, http = _not_a_job(store, bulk_id, user, all_users)
        raise NotFound(f"no bulk job {quoted(bulk_id)} for this user", cli=cli, http=http)
    return bulk


def _not_a_job(store: Store, ref: str, user: str, all_users: bool) -> tuple[str, str]:
    """The end of "no bulk job" (for the CLI, for HTTP): a hint when `ref` is an item's id (or prefix), else
    where to look."""
    try:
        item = items.resolve(store, ref, user, all_users)
    except BulkgenError:
        return (" (see `bulkgen list`; --all-users to look wider; job ids are whole, never prefixes).",
                " (job ids are whole, never prefixes).")
    return (f": that is an item of bulk job {item.bulk_job_id}: `bulkgen show {ref.strip().lower()}` shows it.",
            f": that is an item of bulk job {item.bulk_job_id}: GET /api/items/{ref.strip().lower()} shows it.")


def targets(store: Store, bulk_id: str | None, group: str | None, user: str, all_users: bool = False) -> list[BulkJob]:
    """The job named, or every job of a --split group, as `user` may see them."""
    if (bulk_id is None) == (group is None):
        raise UsageError("name one bulk job (BULK_ID) or one group (--group GROUP).")
    if bulk_id is not None:
        return [visible(store, bulk_id, user, all_users)]
    bulks = sorted(store.list_bulks(None if all_users else user, 10_000, group_id=group),
                   key=lambda b: (b.created_at, b.id))
    if not bulks:
        raise NotFound(f"no group {quoted(group)} for this user (--all-users to look wider).")
    return bulks


def status(store: Store, bulk_id: str | None, group: str | None, user: str, all_users: bool = False,
           with_items: bool = False) -> list[tuple[BulkJob, list[Item] | None]]:
    """The jobs named (as their items say they are: `as_seen`), each with its items when asked."""
    return [(as_seen(store, bulk), store.list_items(bulk.id) if with_items else None)
            for bulk in targets(store, bulk_id, group, user, all_users)]


def list_jobs(store: Store, user: str, all_users: bool = False, limit: int = 20,
              status_filter: BulkStatus | None = None) -> list[BulkJob]:
    """`user`'s bulk jobs (everyone's with `all_users`), newest first, as their items say they are."""
    bulks = store.list_bulks(None if all_users else user, limit, [status_filter] if status_filter else None)
    seen = [as_seen(store, bulk) for bulk in bulks]
    # An unrecorded end is shown completed: it is no longer what a filter on `processing` asks for.
    return [bulk for bulk in seen if status_filter is None or bulk.status == BulkStatus(status_filter).value]


def as_seen(store: Store, bulk: BulkJob) -> BulkJob:
    """An active job as its items say it is (`repair.seen`): never shown running when nothing of it is pending,
    whatever a stopped process left unrecorded (design.md, "Repair"). One count of its items; writes nothing."""
    if bulk.status not in repair.ACTIVE_STATUSES:
        return bulk
    return repair.seen(bulk, store.item_counts(bulk.id))


def apply(store: Store, action: control.Action, bulk_id: str, user: str, all_users: bool = False,
          notifier: control.Notifies | None = None) -> control.Result:
    """Pause, resume, cancel or retry-failed a job `user` may see, by the state rules (control.py).

    A cancel that ends the job delivers its notifications at once through `notifier` (control.notify_end).
    """
    visible(store, bulk_id, user, all_users)
    result = control.apply(store, action, bulk_id)
    if result.ended_now:
        control.notify_end(store, result.bulk.id, notifier)
    return result
