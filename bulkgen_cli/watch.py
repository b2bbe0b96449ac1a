"""Following a bulk job from the store alone: what `watch` shows, processing nothing."""

from __future__ import annotations

import time
from typing import Callable

from bulkgen_cli.errors import NotFound
from bulkgen_cli.model import ENDED_BULK, BulkJob
from bulkgen_cli.events import Event, Snapshot
from bulkgen_cli.store.base import Store

ENDED = {s.value for s in ENDED_BULK}


def follow(
    store: Store,
    bulk_ids: list[str],
    on_event: Callable[[Event], None],
    poll: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> list[BulkJob]:
    """Report the jobs' progress every `poll` seconds until all have ended; return them ended."""
    while True:
        bulks = []
        for bulk_id in bulk_ids:
            bulk = store.get_bulk(bulk_id)
            if bulk is None:
                raise NotFound(f"bulk job {bulk_id} is gone from the store.")
            bulks.append(bulk)
        lease = store.processor_lease()
        holder = f"{lease.host} pid {lease.pid}" if lease else "no processor"
        in_flight = [i for i in store.in_flight() if i.bulk_job_id in bulk_ids]
        on_event(Snapshot(bulks, in_flight, holder))
        if all(b.status in ENDED for b in bulks):
            return bulks
        sleep(poll)
