"""A processor's hold on the store: its slot, its item's lease, and self-fencing (design.md, "Fencing").

`Leases` renews the slot while the processor waits, renews the slot and the
held item together (`heartbeat`) while it holds one, checks both right before
every send, and keeps the self-fencing deadline that `Watchdog` enforces on a
request in flight.
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
import time
from typing import Callable

from bulkgen_cli.model import Item
from bulkgen_cli.settings import RunSettings
from bulkgen_cli.store.base import Store

#: Leases are renewed every quarter of a lease while an item is held.
RENEW_EVERY = 0.25
#: Self-fencing: a request still in flight this far into a lease after the last
#: successful renewal is aborted, and a reply arriving later is never recorded
#: (design.md, "Self-fencing"). The rest of the lease is the margin for the
#: abort to land and for clocks that disagree.
FENCE_AFTER = 0.75
#: How often the watchdog looks at the deadline.
WATCH_EVERY = 0.05


def _clock_id() -> int | None:
    """A clock that keeps counting while the machine sleeps (a closed laptop lid) or the process is stopped."""
    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux: CLOCK_MONOTONIC stops during suspend
        return time.CLOCK_BOOTTIME
    if sys.platform == "darwin" and hasattr(time, "CLOCK_MONOTONIC"):  # counts during sleep there
        return time.CLOCK_MONOTONIC
    return None


_CLOCK = _clock_id()


def ticks() -> float:
    """Seconds on a monotonic clock that includes suspend and SIGSTOP time."""
    return time.clock_gettime(_CLOCK) if _CLOCK is not None else time.monotonic()


class Leases:
    def __init__(self, store: Store, owner: str, settings: RunSettings, host: str, pid: int,
                 clock: Callable[[], dt.datetime], ticker: Callable[[], float], stop: threading.Event):
        self.store, self.owner, self.settings = store, owner, settings
        self.host, self.pid = host, pid
        self.clock, self.ticker, self._stop = clock, ticker, stop
        #: whether this processor holds a slot
        self.holding = False
        self._slot_renewed_at = 0.0
        #: self-fencing: past this tick, the held item's request must not be in flight
        self.fence_deadline = 0.0

    # -- the slot ------------------------------------------------------------------

    def renew_slot(self, lazily: bool = False) -> bool:
        """Take or renew a slot; `lazily`: not again within a third of a lease."""
        if lazily and self.holding and self.ticker() < self._slot_renewed_at + self.settings.lease / 3:
            return True
        self.holding = self.store.acquire_processor_lease(
            self.owner, self.settings.lease, self.clock(), self.host, self.pid, self.settings.concurrency
        )
        if self.holding:
            self._slot_renewed_at = self.ticker()
        return self.holding

    def release_slot(self) -> None:
        if self.holding:
            self.store.release_processor_lease(self.owner)
            self.holding = False

    def hold_for(self, seconds: float) -> None:
        """Wait (until a stop), renewing the slot so that waiting never loses it."""
        deadline = self.ticker() + seconds
        while not self._stop.is_set():
            left = deadline - self.ticker()
            if left <= 0:
                return
            self._stop.wait(min(left, self.settings.lease / 3))
            if self.holding and self.ticker() < deadline:
                self.renew_slot()

    # -- the held item -----------------------------------------------------------

    def heartbeat(self, item: Item) -> bool:
        """Renew the slot and the item's lease in one conditional write; move the self-fencing deadline."""
        tick = self.ticker()  # before the write: the store's lease can only end later than this says
        if not self.store.heartbeat(item.id, self.owner, self.settings.lease, self.clock()):
            return False
        self._slot_renewed_at = tick
        self.fence_deadline = tick + self.settings.lease * FENCE_AFTER
        return True

    def check_before_send(self, item: Item) -> bool:
        """Right before each request: renew both leases; nothing is sent unless both are still ours."""
        return self.heartbeat(item) and not self.fenced()

    def fenced(self) -> bool:
        """Past the self-fencing deadline: the store may hand the item to another processor soon."""
        return self.ticker() >= self.fence_deadline

    def wait_holding(self, item: Item, seconds: float) -> bool:
        """Wait (until a stop) while keeping the item's lease and the slot; False if either was lost."""
        deadline = self.ticker() + seconds
        while not self._stop.is_set():
            left = deadline - self.ticker()
            if left <= 0:
                return True
            self._stop.wait(min(left, self.settings.lease * RENEW_EVERY))
            if not self.heartbeat(item):
                return False
        return True


class Watchdog:
    """Self-fencing that waits for nothing: past the deadline, abort the request even while a renewal hangs."""

    def __init__(self, leases: Leases, abort: Callable[[], None]):
        self._leases, self._abort = leases, abort
        self.done, self.fired = threading.Event(), threading.Event()

    def watch(self) -> None:
        while not self.done.wait(WATCH_EVERY):
            if self._leases.fenced():
                self.fired.set()
                self._abort()
