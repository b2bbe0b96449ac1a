"""The processor (design.md, "The processor"): at most `--concurrency` items in flight in the whole store.

Built like rq's worker: `run` repeats one step (`work_once`: hold a slot, take
back expired items, claim one and hand it to an `Attempt`), and after each
step a named handler says what comes next. Failures are recorded on the item,
never raised. The store, generator, clocks and settings come in through the
constructor, so tests hand in real ones on temporary paths. It never prints:
it reports events (`bulkgen_cli.core.events`), and the CLI renders them.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import socket
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from bulkgen_cli.store import repair
from bulkgen_cli.engine.attempt import Attempt, Parts, new_pool
from bulkgen_cli.content import Generator
from bulkgen_cli.core.errors import ServiceUnavailable, StoreUnavailable
from bulkgen_cli.core.events import (  # noqa: F401  (re-exported: the events are the processor's words)
    BulkEnded,
    Event,
    JobChanged,
    ItemFinished,
    ItemLost,
    ItemRetrying,
    ItemStarted,
    Snapshot,
    Waiting,
)
from bulkgen_cli.engine.leases import Leases, ticks
from bulkgen_cli.core.model import ACTIVE_BULK, BulkJob, BulkStatus, Counts, Item, Outcome, utcnow
from bulkgen_cli.delivery.notify import Notifier
from bulkgen_cli.engine.observer import Observer
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.core.steps import Step
from bulkgen_cli.store.base import Store

ACTIVE_STATUSES = {s.value for s in ACTIVE_BULK}
#: Idle polling backs off from the first value to the second (seconds).
POLL_MIN, POLL_MAX = 0.2, 5.0
#: Waiting on a dead processor's lease or an unreachable service backs off to this.
WAIT_MAX = 30.0
#: How often the states of the jobs this processor worked on are looked at again (seconds).
JOB_LOOK = 1.0


@dataclass
class Backoff:
    """The loop's waiting state, reset by progress."""

    idle: float
    unreachable: float
    unreachable_since: float | None = None
    busy_reported: bool = False


class Processor:
    def __init__(
        self,
        store: Store,
        generator: Generator,
        settings: RunSettings,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        owner: str | None = None,
        notifier: Notifier | None = None,
        ticker: Callable[[], float] = ticks,
        observer: Observer | None = None,
    ):
        self.store, self.generator, self.settings = store, generator, settings
        self.notifier = notifier
        self.on_event = on_event or (lambda event: None)
        #: wall time (leases in the store) and the monotonic clock of waits and self-fencing
        self.clock, self.ticker = clock, ticker
        host, pid = socket.gethostname(), os.getpid()
        self.owner = owner or f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self.leases = Leases(store, self.owner, settings, host, pid, clock, ticker, self._stop)
        self.observer = observer or Observer(store, self.on_event)
        #: when the last request to the service ended (pacing)
        self.last_request_end: float | None = None
        #: running forever: a 429 never gives up
        self.forever = False
        #: the item this processor holds now, if any
        self.working_on: Item | None = None
        #: items handed back to the queue because of a stop
        self.handed_back = 0
        self._pool: ThreadPoolExecutor | None = None
        self._random = random.Random()
        self._hard_stop = False
        self._stop_at = 0.0
        self._next_requeue = 0.0
        #: the latest known state of each job, for the events (saves a read per item)
        self._bulks: dict[str, BulkJob] = {}
        self._next_job_look = 0.0
        #: `run --forever`: when the next schedule occurrence is due (runner.Runner sets it), to wake up for it
        self.wake_at: Callable[[], dt.datetime | None] | None = None

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking work (safe from a signal handler).

        The request in flight may finish within `grace` seconds and is recorded;
        past that, or on a second stop, it is aborted and its item goes back to
        the queue without counting the try.
        """
        if self._stop.is_set():
            self._hard_stop = True
        else:
            self._stop_at = self.ticker()
            self._stop.set()

    def abort_now(self) -> bool:
        return self.stopping and (self._hard_stop or self.ticker() - self._stop_at >= self.settings.grace)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def holding(self) -> bool:
        return self.leases.holding

    # -- the loop ------------------------------------------------------------------

    def run(self, until_idle: bool = True, until: Callable[[], bool] | None = None) -> None:
        """Process items until the queue is idle (or `until()` holds, or forever).

        Raises ServiceUnavailable when the service stays unreachable past
        `give_up` seconds (unless running forever).
        """
        self.forever = not until_idle
        self._until_idle, self._leave_when_idle = until_idle, until_idle and until is None
        waits = Backoff(POLL_MIN, self._first_unreachable_wait())
        after = {Step.done: self._after_done, Step.unreachable: self._after_unreachable,
                 Step.busy: self._after_busy, Step.idle: self._after_idle, Step.released: self._after_released}
        try:
            self.repair()  # at start: a job a stopped processor left half-recorded is finished first
            while not self.stopping and not (until is not None and until()):
                step = self.work_once()
                self._look_at_jobs()
                if step is not Step.unreachable:  # the unreachable backoff grows only while it lasts
                    waits.unreachable = self._first_unreachable_wait()
                if not after[step](waits):
                    return
        finally:
            if sys.exc_info()[1] is None:
                self.observer.finish()
            self.release(quietly=sys.exc_info()[1] is not None)

    def work_once(self) -> Step:
        """One step: hold a slot, take back expired items, claim and process one."""
        # Per item, only the claim must touch the store: the slot is renewed and
        # dead processors' items are looked for once per third of a lease.
        if not self.leases.renew_slot(lazily=True):
            return Step.busy
        now = self.clock()
        if self.ticker() >= self._next_requeue:
            self._next_requeue = self.ticker() + self.settings.lease / 3
            for bulk_id in self.store.requeue_expired(now, self.settings.max_attempts):
                self.refresh(bulk_id)
            self.repair()
        # A local generator sends nothing anywhere: its claim is its send (design.md, "When a try counts").
        item = self.store.claim_next(self.owner, self.settings.lease, now, self.settings.concurrency,
                                     sent=not self.generator.remote)
        if item is None:
            self._next_requeue = 0.0  # idle: look again at once next time
            return Step.idle
        return self.process(item)

    def process(self, item: Item) -> Step:
        """Generate a claimed item with in-place retries, then record its end."""
        parts = Parts(self.store, self.leases, self.settings, self.generator, self.owner, self.clock, self.ticker,
                      self.on_event)
        return Attempt(parts, self, item).run()

    # Each handler: what follows a step; False ends the run.

    def _after_done(self, waits: Backoff) -> bool:
        waits.idle, waits.unreachable_since, waits.busy_reported = POLL_MIN, None, False
        self._scan_outboxes()
        return True

    def _after_released(self, waits: Backoff) -> bool:
        return True

    def _after_unreachable(self, waits: Backoff) -> bool:
        waits.unreachable_since = waits.unreachable_since or self.ticker()
        if self._until_idle and self.ticker() - waits.unreachable_since > self.settings.give_up:
            raise ServiceUnavailable(
                f"the content service at {self.settings.api_url} could not be reached "
                f"for {self.settings.give_up:g} s; the item went back to the queue."
            )
        self.on_event(Waiting("the content service is unreachable", waits.unreachable))
        self.leases.hold_for(waits.unreachable)
        waits.unreachable = min(waits.unreachable * 2, WAIT_MAX)
        return True

    def _after_busy(self, waits: Backoff) -> bool:
        """Another processor holds the lease: deliver what is due (steps have their own locks) and watch it."""
        self._scan_outboxes()
        working = self.observer.look(report=not waits.busy_reported, poll=self._lease_poll())
        waits.busy_reported = True
        if not working and self._leave_when_idle and self._notifications_due() is None:
            return False  # attached, and the queue went idle
        self._stop.wait(self._lease_poll())
        return True

    def _after_idle(self, waits: Backoff) -> bool:
        wait = self._orphan_wait() or self._notification_wait()
        if wait is not None:
            self.leases.hold_for(wait)
            return True
        if self._leave_when_idle:
            return False
        start = self.store.next_start(self.clock())
        if start is not None:  # wake up when a scheduled job may start, not later
            waits.idle = min(waits.idle, max((start - self.clock()).total_seconds(), 0.05))
        due = self.wake_at() if self.wake_at is not None else None
        if due is not None and due > self.clock():  # a schedule's next occurrence: its job is there just after
            waits.idle = min(waits.idle, (due - self.clock()).total_seconds() + 0.05)
        self.leases.hold_for(waits.idle)
        waits.idle = min(waits.idle * 2, POLL_MAX)
        return True

    def _look_at_jobs(self) -> None:
        """Report jobs this processor worked on that someone paused, resumed or cancelled meanwhile."""
        if self.ticker() < self._next_job_look:
            return
        self._next_job_look = self.ticker() + JOB_LOOK
        for bulk_id in list(self._bulks):
            current = self.store.get_bulk(bulk_id)
            if current is not None:
                self._remember(current)
        self._bulks = {i: b for i, b in self._bulks.items() if b.status in ACTIVE_STATUSES}

    def _remember(self, bulk: BulkJob) -> None:
        """Keep the job's latest state; report it when someone else paused, resumed or cancelled it."""
        known = self._bulks.get(bulk.id)
        self._bulks[bulk.id] = bulk
        if known is None or known.status == bulk.status:
            return
        if bulk.status in (BulkStatus.paused.value, BulkStatus.cancelled.value) or known.status == BulkStatus.paused.value:
            self.on_event(JobChanged(bulk))

    def _orphan_wait(self) -> float | None:
        """A dead processor's item: how long until its lease expires and it can be taken back."""
        expiry = self._orphan_expiry()
        if expiry is None:
            return None
        wait = (expiry - self.clock()).total_seconds() + 0.05
        self.on_event(Waiting("an item of a stopped processor waits for its lease to expire", wait))
        return min(max(wait, 0.05), WAIT_MAX)

    def _notification_wait(self) -> float | None:
        """Idle, but a notification waits for another try: deliver it before leaving."""
        self._scan_outboxes(force=True)
        due = self._notifications_due()
        if due is None:
            return None
        wait = min(max((due - self.clock()).total_seconds(), 0.05), WAIT_MAX)
        self.on_event(Waiting("a notification waits for its next try", wait))
        return wait

    def _orphan_expiry(self) -> dt.datetime | None:
        """When the lease of an item whose processor holds no live slot runs out (a dead one's)."""
        if self.store.next_lease_expiry() is None:
            return None
        now = self.clock()
        live = {lease.owner for lease in self.store.processor_leases() if lease.expires_at >= now}
        expiries = [i.lease_expires_at for i in self.store.in_flight()
                    if i.lease_owner not in live and i.lease_expires_at is not None]
        return min(expiries) if expiries else None

    def _first_unreachable_wait(self) -> float:
        return self.settings.backoff or 1.0

    def _lease_poll(self) -> float:
        return min(1.0, self.settings.lease / 4)

    # -- notifications ---------------------------------------------------------------

    def _notifications_due(self) -> dt.datetime | None:
        return self.notifier.next_due() if self.notifier is not None else None

    def _scan_outboxes(self, force: bool = False) -> None:
        """Deliver what other deliverers left pending (a crash, a receiver that was down)."""
        if self.notifier is not None:
            self.notifier.scan(force)

    # -- what an attempt asks of its processor ----------------------------------------

    def known_bulk(self, bulk_id: str) -> BulkJob:
        bulk = self._bulks.get(bulk_id) or self.store.get_bulk(bulk_id)
        assert bulk is not None
        self._bulks.setdefault(bulk_id, bulk)
        return bulk

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = new_pool()
        return self._pool

    def repair(self) -> None:
        """Finish jobs whose state disagrees with their items (design.md, "Repair"), through the same
        refresh as a normal end: a job's end recorded here is reported and delivered as any other."""
        for finding in repair.repair(self.store, self.clock(), self.between()):
            if finding.counts is not None:
                self.report(finding.bulk.id, finding.counts)

    def between(self) -> float:
        """The pause between two items that the job's estimate counts (seconds)."""
        return self.settings.delay if self.generator.remote else 0.0

    def refresh(self, bulk_id: str) -> Counts:
        """Recompute the job's counters; report the job's end if this call recorded it."""
        return self.report(bulk_id, self.store.refresh_counters(bulk_id, self.clock(), self.between()))

    def report(self, bulk_id: str, counts: Counts,
               finished: tuple[Item, Outcome, float, float] | None = None) -> Counts:
        """After a refresh (or an item's end, which refreshes): report the item's end, and the job's if
        that step recorded it, and deliver its notifications (whoever records the end delivers at once)."""
        if finished is not None or counts.ended_now:
            bulk = self.store.get_bulk(bulk_id)
            assert bulk is not None
            if not counts.ended_now:  # an end this call recorded is reported as BulkEnded
                self._remember(bulk)
            self._bulks[bulk_id] = bulk
            if finished is not None:
                item, outcome, seconds, total = finished
                self.on_event(ItemFinished(item, bulk, outcome, seconds, waited=max(total - seconds, 0.0)))
            if counts.ended_now:
                self.on_event(BulkEnded(bulk))
                if self.notifier is not None:
                    self.notifier.deliver(bulk)  # whoever records the end delivers at once
        return counts

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        base = self.settings.backoff * (2 ** max(attempt - 1, 0))
        return base / 2 + self._random.uniform(0, base / 2)

    def release(self, quietly: bool = False) -> None:
        """Give the slot back; `quietly` (an error is on its way out): a store fault here must not hide it."""
        try:
            self.leases.release_slot()
        except StoreUnavailable:
            if not quietly:
                raise  # else the slot expires by itself
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
