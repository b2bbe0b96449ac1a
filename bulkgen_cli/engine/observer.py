"""What an attached `bulkgen run` shows while another processor holds the lease.

It processes nothing: it reads the store and reports a `Snapshot` of the
active jobs and the item in flight; jobs that ended since the last look are
shown once more with their final counts.
"""

from __future__ import annotations

from typing import Callable

from bulkgen_cli.core.events import Event, Snapshot, Waiting
from bulkgen_cli.core.model import ACTIVE_BULK, CLAIMABLE_BULK
from bulkgen_cli.store.base import Store

CLAIMABLE_STATUSES = {s.value for s in CLAIMABLE_BULK}


class Observer:
    def __init__(self, store: Store, on_event: Callable[[Event], None]):
        self.store, self.on_event = store, on_event
        self._watched: set[str] = set()

    def look(self, report: bool, poll: float) -> bool:
        """Show what the other processor does; False when nothing is left for it to do."""
        lease = self.store.processor_lease()
        who = f"{lease.host} pid {lease.pid}" if lease else "another process"
        if report:
            self.on_event(Waiting(f"another processor ({who}) is running; attached to it", poll))
        bulks = self.store.list_bulks(None, 100, ACTIVE_BULK)
        active = {b.id for b in bulks}
        ended = [self.store.get_bulk(i) for i in self._watched - active]
        self._watched = active
        bulks = sorted(bulks + [b for b in ended if b is not None], key=lambda b: (b.created_at, b.id))
        in_flight = self.store.in_flight()
        self.on_event(Snapshot(bulks, in_flight, who))
        return bool(in_flight) or any(b.status in CLAIMABLE_STATUSES for b in bulks)

    def finish(self) -> None:
        """After having watched: show where those jobs ended up."""
        if self._watched:
            final = [self.store.get_bulk(i) for i in sorted(self._watched)]
            self.on_event(Snapshot([b for b in final if b is not None], [], "nobody"))
