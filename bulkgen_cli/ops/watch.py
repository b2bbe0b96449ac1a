"""Following a bulk job from the store alone: what `watch` shows, processing nothing."""

from __future__ import annotations

import time
from typing import Callable

from bulkgen_cli.ops import jobs
from bulkgen_cli.core.errors import NotFound, TimedOut
from bulkgen_cli.core.model import ENDED_BULK, BulkJob, BulkStatus, utcnow
from bulkgen_cli.core.events import Event, Snapshot, Waiting
from bulkgen_cli.store.base import Store

ENDED = {s.value for s in ENDED_BULK}
#: Seconds without a live processor, while a job waits, before `watch` says so.
NO_PROCESSOR_HINT = 3.0


def follow(
    store: Store,
    bulk_ids: list[str],
    on_event: Callable[[Event], None],
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    hint_after: float = NO_PROCESSOR_HINT,
    timeout: float | None = None,
) -> list[BulkJob]:
    """Report the jobs' progress every `poll` seconds until all have ended; return them ended.

    When no processor has held a live lease for `hint_after` seconds while a job
    waits in the queue, say so once, and how to start one.
    """
    unattended_since: float | None = None
    hinted = False
    give_up = None if timeout is None else time.monotonic() + timeout
    while True:
        bulks = []
        for bulk_id in bulk_ids:
            bulk = store.get_bulk(bulk_id)
            if bulk is None:
                raise NotFound(f"bulk job {bulk_id} is gone from the store.")
            bulks.append(jobs.as_seen(store, bulk))  # an end not yet recorded is an end (design.md, "Repair")
        lease = store.processor_lease()
        live = lease is not None and lease.expires_at >= utcnow()
        holder = f"{lease.host} pid {lease.pid}" if lease and live else "no processor"
        waiting = any(b.status in (BulkStatus.queued.value, BulkStatus.processing.value) for b in bulks)
        unattended_since = None if live or not waiting else (unattended_since or time.monotonic())
        if unattended_since is not None and not hinted and time.monotonic() - unattended_since >= hint_after:
            hinted = True
            on_event(Waiting("no processor is running, so nothing moves: start one with `bulkgen run` "
                             "(or `bulkgen run --forever` for a long-lived worker)", poll))
        in_flight = [i for i in store.in_flight() if i.bulk_job_id in bulk_ids]
        on_event(Snapshot(bulks, in_flight, holder))
        if all(b.status in ENDED for b in bulks):
            return bulks
        if give_up is not None and time.monotonic() >= give_up:
            states = "; ".join(f"{b.id} {b.status}, {b.completed_items} of {b.total_items} completed" for b in bulks)
            raise TimedOut(f"stopped watching after {timeout:g} s (--timeout); not ended yet: {states}.")
        sleep(poll)
