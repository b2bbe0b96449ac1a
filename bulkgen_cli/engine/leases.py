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

from bulkgen_cli.core.model import Item
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.store.base import Store

#: Leases are renewed every quarter of a lease while an item is held.
RENEW_EVERY = 0.25
#: Self-fencing: a request still in flight this far into a lease after the last
#: successful renewal must renew at once (design.md, "Self-fencing").
FENCE_AFTER = 0.75
#: ... and is aborted when that renewal has not succeeded within this part of a
#: lease (by 7/8 of the lease when the deadline is seen in time). The rest of
#: the lease is the margin for the abort to land and for clocks that disagree.
RESCUE_WITHIN = 0.125
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
        #: self-fencing: past this tick, the held item's request must renew or be aborted
        self.fence_deadline = 0.0
        #: when the last successful renewal of the held item's lease started (a tick)
        self.renewed_at = 0.0

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

    def claimed(self, tick: float) -> None:
        """An item was claimed (its lease taken) at `tick`."""
        self.renewed_at = tick

    def heartbeat(self, item: Item, sent: bool = False) -> bool:
        """Renew the slot and the item's lease in one conditional write; move the self-fencing deadline.

        `sent`: the check right before a request, which marks the try sent in the same write.
        """
        tick = self.ticker()  # before the write: the store's lease can only end later than this says
        if not self.store.heartbeat(item.id, self.owner, self.settings.lease, self.clock(), sent=sent):
            return False
        self._slot_renewed_at = self.renewed_at = tick
        self.fence_deadline = tick + self.settings.lease * FENCE_AFTER
        return True

    def check_before_send(self, item: Item) -> bool:
        """Right before each request: renew both leases and mark the try sent; nothing is sent unless both are ours."""
        return self.heartbeat(item, sent=True) and not self.fenced()

    def fenced(self) -> bool:
        """Past the self-fencing deadline: renew now, or the store may hand the item to another processor."""
        return self.ticker() >= self.fence_deadline

    def lease_left(self) -> float:
        """Seconds until the held item's lease ends in the store, counted from its last successful renewal."""
        return self.renewed_at + self.settings.lease - self.ticker()

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
    """Self-fencing that waits for nothing: past the deadline, give one renewal (the thread waiting for the
    reply makes it) `RESCUE_WITHIN` of a lease to succeed, then abort the request even while that renewal hangs."""

    def __init__(self, leases: Leases, abort: Callable[[], None]):
        self._leases, self._abort = leases, abort
        self.done, self.fired = threading.Event(), threading.Event()

    def watch(self) -> None:
        rescue_until: float | None = None
        while not self.done.wait(WATCH_EVERY):
            if self.fired.is_set():
                self._abort()  # repeated: an abort that raced the request's start is not lost
            elif not self._leases.fenced():
                rescue_until = None  # renewed in time
            elif rescue_until is None:  # seen now, however late (a stall): the renewal's window starts
                rescue_until = self._leases.ticker() + self._leases.settings.lease * RESCUE_WITHIN
            elif self._leases.ticker() >= rescue_until:
                self.fired.set()
                self._abort()
