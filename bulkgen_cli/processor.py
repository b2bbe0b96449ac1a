"""The sequential processor (design.md, "The processor"): one item in flight in the whole store.

Built like rq's worker: `run` repeats one step (`work_once`), which claims an
item and hands it to `process`; failures are recorded on the item, never
raised. The store, generator, clock and settings come in through the
constructor, so tests hand in real ones on temporary paths. It never prints:
it reports through `on_event`, and the CLI renders.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from bulkgen_cli.content import Generator, Reply, ReplyKind, content_text, count_words
from bulkgen_cli.errors import ServiceUnavailable
from bulkgen_cli.notify import Notifier
from bulkgen_cli.model import (
    ACTIVE_BULK,
    CLAIMABLE_BULK,
    BulkJob,
    BulkStatus,
    Counts,
    Item,
    ItemStatus,
    Outcome,
    iso,
    later,
    utcnow,
)
from bulkgen_cli.settings import RunSettings
from bulkgen_cli.store.base import Store

CLAIMABLE_STATUSES = {s.value for s in CLAIMABLE_BULK}
#: Idle polling backs off from the first value to the second (seconds).
POLL_MIN, POLL_MAX = 0.2, 5.0
#: Waiting on a dead processor's lease or an unreachable service backs off to this.
WAIT_MAX = 30.0
#: How often a busy processor looks for notifications left pending by others.
OUTBOX_SCAN = 5.0
#: How often a waiting request checks for a stop.
STOP_POLL = 0.1
#: How often a request in flight checks that its item is still held (not cancelled).
HELD_POLL = 0.5
#: Leases are renewed every quarter of a lease while an item is held.
RENEW_EVERY = 0.25
#: Self-fencing: a request still in flight this far into a lease after the last
#: successful renewal is aborted, and a reply arriving later is never recorded
#: (design.md, "Self-fencing"). The rest of the lease is the margin for the
#: abort to land and for clocks that disagree.
FENCE_AFTER = 0.75


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


# -- events: what the processor reports -----------------------------------------


@dataclass(frozen=True)
class ItemStarted:
    item: Item
    bulk: BulkJob


@dataclass(frozen=True)
class ItemFinished:
    item: Item
    bulk: BulkJob  # counters as refreshed after this item
    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class ItemRetrying:
    item: Item
    error: str
    wait: float
    charged: bool  # False for a 429: the try is not counted


@dataclass(frozen=True)
class ItemLost:
    """The item stopped being this processor's mid-request: cancelled, or its lease passed on."""

    item: Item
    reason: str


@dataclass(frozen=True)
class BulkEnded:
    bulk: BulkJob


@dataclass(frozen=True)
class Snapshot:
    """What another processor is doing, for a run that attached instead of processing."""

    bulks: list[BulkJob]
    in_flight: list[Item]
    holder: str


@dataclass(frozen=True)
class Waiting:
    reason: str
    seconds: float


Event = ItemStarted | ItemFinished | ItemRetrying | ItemLost | BulkEnded | Waiting | Snapshot


class Step(str, Enum):
    #: an item was processed and recorded
    done = "done"
    #: nothing to claim right now
    idle = "idle"
    #: another processor holds the lease
    busy = "busy"
    #: the service could not be reached; the item went back uncharged
    unreachable = "unreachable"
    #: the item was lost to another processor (lease expired meanwhile) or stopped
    released = "released"


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
    ):
        self.store = store
        self.notifier = notifier
        self.generator = generator
        self.settings = settings
        self.on_event = on_event or (lambda event: None)
        self.clock = clock
        #: the monotonic clock of leases and self-fencing; tests hand in one they can move
        self.ticker = ticker
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = owner or f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.holding = False
        self._stop = threading.Event()
        self._last_request_end: float | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._random = random.Random()
        self._forever = False
        self._hard_stop = False
        self._stop_at = 0.0
        self._watched: set[str] = set()
        self._next_outbox_scan = 0.0
        self._renewed_at = 0.0
        #: self-fencing: past this tick, the held item's request must not be in flight
        self._fence_deadline = 0.0
        self._next_requeue = 0.0
        #: the latest known state of each job, for the events (saves a read per item)
        self._bulks: dict[str, BulkJob] = {}

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

    def _abort_now(self) -> bool:
        return self.stopping and (
            self._hard_stop or self.ticker() - self._stop_at >= self.settings.grace
        )

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(max(seconds, 0.0))

    # -- the loop --------------------------------------------------------------

    def run(self, until_idle: bool = True, until: Callable[[], bool] | None = None) -> None:
        """Process items until the queue is idle (or `until()` holds, or forever).

        Raises ServiceUnavailable when the service stays unreachable past
        `give_up` seconds (unless running forever).
        """
        self._forever = not until_idle
        idle_wait = POLL_MIN
        unreachable_since: float | None = None
        unreachable_wait = self.settings.backoff or 1.0
        busy_reported = False
        try:
            while not self.stopping:
                if until is not None and until():
                    return
                step = self.work_once()
                if step is Step.done:
                    idle_wait, unreachable_since, busy_reported = POLL_MIN, None, False
                    self._scan_outboxes()
                    continue
                if step is Step.unreachable:
                    started = unreachable_since = unreachable_since or self.ticker()
                    if until_idle and self.ticker() - started > self.settings.give_up:
                        raise ServiceUnavailable(
                            f"the content service at {self.settings.api_url} could not be reached "
                            f"for {self.settings.give_up:g} s; the item went back to the queue."
                        )
                    self.on_event(Waiting("the content service is unreachable", unreachable_wait))
                    self._hold_for(unreachable_wait)
                    unreachable_wait = min(unreachable_wait * 2, WAIT_MAX)
                    continue
                unreachable_wait = self.settings.backoff or 1.0
                if step is Step.busy:
                    # Deliveries do not need the processor lease: each step has its own lock.
                    self._scan_outboxes()
                    working = self._watch_other(report=not busy_reported)
                    busy_reported = True
                    if not working and until_idle and until is None and self._notifications_due() is None:
                        return  # attached, and the queue went idle
                    self._sleep(self._lease_poll())
                    continue
                if step is Step.idle:
                    expiry = self._orphan_expiry()
                    if expiry is not None:
                        # A dead processor's item: wait for its lease, then take it back.
                        wait = (expiry - self.clock()).total_seconds() + 0.05
                        self.on_event(Waiting("an item of a stopped processor waits for its lease to expire", wait))
                        self._hold_for(min(max(wait, 0.05), WAIT_MAX))
                        continue
                    self._scan_outboxes(force=True)
                    due = self._notifications_due()
                    if due is not None:
                        # Idle, but a notification waits for another try: deliver it before leaving.
                        wait = min(max((due - self.clock()).total_seconds(), 0.05), WAIT_MAX)
                        self.on_event(Waiting("a notification waits for its next try", wait))
                        self._hold_for(wait)
                        continue
                    if until_idle and until is None:
                        return
                    start = self.store.next_start(self.clock())
                    if start is not None:  # wake up when a scheduled job may start, not later
                        idle_wait = min(idle_wait, max((start - self.clock()).total_seconds(), 0.05))
                    self._hold_for(idle_wait)
                    idle_wait = min(idle_wait * 2, POLL_MAX)
        finally:
            if self._watched:  # attached at some point: show where those jobs ended up
                final = [self.store.get_bulk(i) for i in sorted(self._watched)]
                self.on_event(Snapshot([b for b in final if b is not None], [], "nobody"))
            self.release()

    def _orphan_expiry(self) -> dt.datetime | None:
        """When the lease of an item whose processor holds no live slot runs out (a dead one's)."""
        if self.store.next_lease_expiry() is None:
            return None
        now = self.clock()
        live = {lease.owner for lease in self.store.processor_leases() if lease.expires_at >= now}
        expiries = [i.lease_expires_at for i in self.store.in_flight()
                    if i.lease_owner not in live and i.lease_expires_at is not None]
        return min(expiries) if expiries else None

    def _notifications_due(self) -> dt.datetime | None:
        return self.notifier.next_due() if self.notifier is not None else None

    def _scan_outboxes(self, force: bool = False) -> None:
        """Deliver what other deliverers left pending (a crash, a receiver that was down)."""
        if self.notifier is None or (not force and self.ticker() < self._next_outbox_scan):
            return
        self._next_outbox_scan = self.ticker() + OUTBOX_SCAN
        self.notifier.deliver_due()

    def _watch_other(self, report: bool) -> bool:
        """While another processor holds the lease: show what it does. False when idle."""
        lease = self.store.processor_lease()
        who = f"{lease.host} pid {lease.pid}" if lease else "another process"
        if report:
            self.on_event(Waiting(f"another processor ({who}) is running; attached to it", self._lease_poll()))
        bulks = self.store.list_bulks(None, 100, ACTIVE_BULK)
        active = {b.id for b in bulks}
        # Jobs that ended since the last look: shown once more, with their final counts.
        ended = [self.store.get_bulk(i) for i in self._watched - active]
        self._watched = active
        bulks = sorted(bulks + [b for b in ended if b is not None], key=lambda b: (b.created_at, b.id))
        in_flight = self.store.in_flight()
        self.on_event(Snapshot(bulks, in_flight, who))
        return bool(in_flight) or any(b.status in CLAIMABLE_STATUSES for b in bulks)

    def release(self) -> None:
        if self.holding:
            self.store.release_processor_lease(self.owner)
            self.holding = False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _lease_poll(self) -> float:
        return min(1.0, self.settings.lease / 4)

    def _renew(self, lazily: bool = False) -> bool:
        """Take or renew the processor lease; `lazily`: not again within a third of it."""
        if lazily and self.holding and self.ticker() < self._renewed_at + self.settings.lease / 3:
            return True
        self.holding = self.store.acquire_processor_lease(
            self.owner, self.settings.lease, self.clock(), self.host, self.pid, self.settings.concurrency
        )
        if self.holding:
            self._renewed_at = self.ticker()
        return self.holding

    def _hold_for(self, seconds: float) -> None:
        """Wait, renewing the processor lease so that waiting never loses it."""
        deadline = self.ticker() + seconds
        while not self.stopping:
            left = deadline - self.ticker()
            if left <= 0:
                return
            self._sleep(min(left, self.settings.lease / 3))
            if self.holding and self.ticker() < deadline:
                self._renew()

    def work_once(self) -> Step:
        """One step: hold the lease, take back expired items, claim and process one."""
        # Per item, only the claim must touch the store: the lease is renewed and
        # dead processors' items are looked for once per third of a lease.
        if not self._renew(lazily=True):
            return Step.busy
        now = self.clock()
        if self.ticker() >= self._next_requeue:
            self._next_requeue = self.ticker() + self.settings.lease / 3
            for bulk_id in self.store.requeue_expired(now, self.settings.max_attempts):
                self._refresh(bulk_id)
        item = self.store.claim_next(self.owner, self.settings.lease, now, self.settings.concurrency)
        if item is None:
            self._next_requeue = 0.0  # idle: look again at once next time
            return Step.idle
        return self.process(item)

    # -- one item ----------------------------------------------------------------

    def process(self, item: Item) -> Step:
        """Generate a claimed item with in-place retries, then record its end."""
        bulk = self._bulks.get(item.bulk_job_id) or self.store.get_bulk(item.bulk_job_id)
        assert bulk is not None
        self.on_event(ItemStarted(item, bulk))
        started = self.ticker()
        attempt = item.attempts
        rate_limited_for = 0.0
        while True:
            if self.stopping:
                return self._hand_back(item)
            if attempt > item.attempts or rate_limited_for:
                # A retry: not if a pause or cancel came meanwhile.
                current = self.store.get_bulk(item.bulk_job_id)
                if current is None or current.status not in CLAIMABLE_STATUSES:
                    paused = current is not None and current.status == BulkStatus.paused.value
                    # The failed tries stay counted; the one not made is not.
                    self.store.release_item(item.id, self.owner, charge=False)
                    return Step.released if paused else self._lost(item)
            if not self._pace(item) or not self._cool_down(item):
                return self._lost(item)
            if self.stopping:
                return self._hand_back(item)
            if not self._check_before_send(item):
                return self._lost(item)
            reply = self._call(item)
            if reply is None:
                return self._lost(item)
            if reply.kind is ReplyKind.fenced and not self.store.is_held(item.id, self.owner):
                return self._lost(item)  # a newer claim holds it: not a failure, not a try
            if reply.kind is ReplyKind.ok:
                outcome = Outcome(ItemStatus.completed, result=self._result(reply, started))
                break
            if reply.kind in (ReplyKind.permanent, ReplyKind.fenced):
                outcome = Outcome(ItemStatus.failed, error=reply.error)
                break
            if reply.kind is ReplyKind.aborted or self.stopping:
                return self._hand_back(item)
            if reply.kind is ReplyKind.unreachable:
                self.store.release_item(item.id, self.owner)
                return Step.unreachable
            if reply.kind is ReplyKind.rate_limited:
                wait = reply.retry_after if reply.retry_after is not None else self._backoff(1)
                rate_limited_for += wait
                if rate_limited_for > self.settings.give_up and not self._forever:
                    self.store.release_item(item.id, self.owner)
                    raise ServiceUnavailable(
                        f"the content service kept answering 429 (rate limited) for over "
                        f"{self.settings.give_up:g} s; the item went back to the queue."
                    )
                if self.settings.concurrency > 1:  # every slot waits, in every processor
                    self.store.set_cooldown(later(self.clock(), wait))
                self.on_event(ItemRetrying(item, reply.error or "rate limited", wait, charged=False))
                if not self._wait_holding(item, wait):
                    return Step.released
                continue
            # transient
            if attempt >= self.settings.max_attempts:
                outcome = Outcome(ItemStatus.failed, error=f"{reply.error} (gave up after {attempt} tries)")
                break
            wait = self._backoff(attempt)
            self.on_event(ItemRetrying(item, reply.error or "transient error", wait, charged=True))
            if not self._wait_holding(item, wait):
                return Step.released
            if not self.store.begin_attempt(item.id, self.owner):
                return Step.released
            attempt += 1
        if not self.store.finish_item(item.id, self.owner, outcome, self.clock()):
            return Step.released
        self._refresh(item.bulk_job_id, finished=(item, outcome, self.ticker() - started))
        return Step.done

    def _lost(self, item: Item) -> Step:
        """The item is no longer this processor's to send: leave it to whoever holds it now."""
        # Still ours only when self-fencing gave it up or the slot passed on: hand it back uncounted.
        if self.store.release_item(item.id, self.owner):
            self.on_event(ItemLost(item, "this processor stopped renewing its lease in time "
                                         "(it was stalled); the item went back to the queue"))
            return Step.released
        bulk = self.store.get_bulk(item.bulk_job_id)
        cancelled = bulk is not None and bulk.status == BulkStatus.cancelled.value
        self.on_event(ItemLost(item, "its bulk job was cancelled" if cancelled else "another processor took it over"))
        return Step.released

    def _hand_back(self, item: Item) -> Step:
        self.store.release_item(item.id, self.owner)
        return Step.released

    def _result(self, reply: Reply, started: float) -> dict:
        return {
            "content": reply.content,
            "generator": self.generator.name,
            "generated_at": iso(self.clock()),
            "seconds": round(self.ticker() - started, 3),
            "words": count_words(content_text(reply.content)),
        }

    def _refresh(self, bulk_id: str, finished: tuple[Item, Outcome, float] | None = None) -> Counts:
        between = self.settings.delay if self.generator.remote else 0.0
        counts = self.store.refresh_counters(bulk_id, self.clock(), between)
        if finished is not None or counts.ended_now:
            bulk = self.store.get_bulk(bulk_id)
            assert bulk is not None
            self._bulks[bulk_id] = bulk
            if finished is not None:
                item, outcome, seconds = finished
                self.on_event(ItemFinished(item, bulk, outcome, seconds))
            if counts.ended_now:
                self.on_event(BulkEnded(bulk))
                if self.notifier is not None:
                    self.notifier.deliver(bulk)  # whoever records the end delivers at once
        return counts

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        base = self.settings.backoff * (2 ** max(attempt - 1, 0))
        return base / 2 + self._random.uniform(0, base / 2)

    def _pace(self, item: Item) -> bool:
        """Keep `delay` seconds between two requests to a remote service; False if the item was lost."""
        if not self.generator.remote or self._last_request_end is None:
            return True
        left = self._last_request_end + self.settings.delay - self.ticker()
        return left <= 0 or self._wait_holding(item, left)

    def _cool_down(self, item: Item) -> bool:
        """With several slots, wait out a 429 cooldown another slot recorded; False if the item was lost."""
        if self.settings.concurrency == 1:
            return True
        until = self.store.cooldown_until()
        wait = 0.0 if until is None else (until - self.clock()).total_seconds()
        return wait <= 0 or self._wait_holding(item, wait)

    def _wait_holding(self, item: Item, seconds: float) -> bool:
        """Wait while keeping the item's lease and the slot; False if either was lost."""
        deadline = self.ticker() + seconds
        while not self.stopping:
            left = deadline - self.ticker()
            if left <= 0:
                return True
            self._sleep(min(left, self.settings.lease * RENEW_EVERY))
            if not self._heartbeat(item):
                return False
        return True

    def _heartbeat(self, item: Item) -> bool:
        """Renew the slot and the item's lease in one conditional write; move the self-fencing deadline."""
        tick = self.ticker()  # before the write: the store's lease can only end later than this says
        if not self.store.heartbeat(item.id, self.owner, self.settings.lease, self.clock()):
            return False
        self._renewed_at = tick
        self._fence_deadline = tick + self.settings.lease * FENCE_AFTER
        return True

    def _check_before_send(self, item: Item) -> bool:
        """Right before each request: renew both leases; nothing is sent unless both are still ours.

        A local generator sends nothing anywhere: its claim is its check.
        """
        if not self.generator.remote:
            return True
        return self._heartbeat(item) and self.ticker() < self._fence_deadline

    def _call(self, item: Item) -> Reply | None:
        """One try; a remote call runs in a worker thread while this one renews leases.

        None when the item was lost meanwhile (cancelled, taken over, or this
        processor failed to renew before its self-fencing deadline); a reply that
        arrives after that deadline is never returned.
        """
        done, fenced = threading.Event(), threading.Event()
        try:
            if not self.generator.remote:
                return self.generator.generate(item)
            if self._pool is None:  # the request, and its self-fencing watchdog
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bulkgen-request")
            future = self._pool.submit(self.generator.generate, item)
            self._pool.submit(self._watchdog, done, fenced)
            beat_every = self.settings.lease * RENEW_EVERY
            next_beat = self.ticker() + beat_every
            next_check = self.ticker() + HELD_POLL
            lost = False
            while True:
                try:
                    reply = future.result(timeout=STOP_POLL)
                    late = fenced.is_set() or self.ticker() >= self._fence_deadline
                    return None if lost or late else reply
                except FutureTimeout:
                    pass
                now = self.ticker()
                lost = lost or fenced.is_set()
                if lost or self._abort_now():
                    # Repeated each poll: an abort that raced the request's start is not lost.
                    self.generator.abort()
                elif now >= next_beat:
                    next_beat = now + beat_every
                    next_check = now + HELD_POLL
                    lost = not self._heartbeat(item)
                elif now >= next_check:
                    next_check = now + HELD_POLL
                    lost = not self.store.is_held(item.id, self.owner)
        finally:
            done.set()
            self._last_request_end = self.ticker()

    def _watchdog(self, done: threading.Event, fenced: threading.Event) -> None:
        """Self-fencing that waits for nothing: past the deadline, abort the request even while a renewal hangs."""
        while not done.wait(STOP_POLL / 2):
            if self.ticker() >= self._fence_deadline:
                fenced.set()
                self.generator.abort()
