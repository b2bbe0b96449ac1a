"""One claimed item's life: pace, check, send, sort the reply, retry in place, record (design.md, "The processor").

`Attempt(parts, processor, item).run()` returns the processor's next `Step`; the
attempt sees its processor only through `Host` (what it asks of it) and `Parts`
(what it works with), so this module does not import the processor. Every
send is fenced (design.md, "Fencing"): the leases are checked right before
it (which marks the try sent), renewed while it is in flight, and past the
self-fencing deadline renewed at once or aborted by a watchdog. A reply in
hand is recorded when the store still holds the item under this claim's token,
however late it came (design.md, "A reply in hand").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from bulkgen_cli.content import Generator, Reply, ReplyKind, content_text, count_words
from bulkgen_cli.core.errors import ServiceUnavailable, StoreUnavailable
from bulkgen_cli.core.events import Event, ItemLost, ItemRetrying, ItemStarted
from bulkgen_cli.core.model import (
    CLAIMABLE_BULK, BulkJob, BulkStatus, Counts, Item, ItemStatus, Outcome, iso, later, next_generation,
)
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.core.steps import Step
from bulkgen_cli.engine import quality
from bulkgen_cli.engine.leases import RENEW_EVERY, RESCUE_WITHIN, Leases, Watchdog
from bulkgen_cli.store.base import Store

CLAIMABLE_STATUSES = {s.value for s in CLAIMABLE_BULK}
#: How often a waiting request checks for a stop.
STOP_POLL = 0.1
#: How often a request in flight checks that its item is still held (not cancelled).
HELD_POLL = 0.5
#: How long to wait between two tries of a store write that failed while a reply is in hand.
KEEP_RETRY = 0.25


T = TypeVar("T")


@dataclass(frozen=True)
class Parts:
    """What an attempt works with: its processor's store, leases, settings and generator, its name (the
    claims' owner), its clocks (wall time for the store, monotonic for waits) and where events go."""

    store: Store
    leases: Leases
    settings: RunSettings
    generator: Generator
    owner: str
    clock: Callable[[], dt.datetime]
    ticker: Callable[[], float]
    on_event: Callable[[Event], None]


class Host(Protocol):
    """What an attempt asks of the processor that claimed its item (processor.Processor is one): whether it
    is stopping (or must abort now), whether it runs forever, the job's state as last known, the waits, the
    request pool, where an item's end is reported, and the three things the attempt leaves for the next one
    (the item in hand, when the last request ended, how many items a stop handed back)."""

    forever: bool
    working_on: Item | None
    last_request_end: float | None
    handed_back: int

    @property
    def stopping(self) -> bool: ...

    def abort_now(self) -> bool: ...

    def known_bulk(self, bulk_id: str) -> BulkJob: ...

    def backoff(self, attempt: int) -> float: ...

    def between(self) -> float: ...

    def pool(self) -> ThreadPoolExecutor: ...

    def report(self, bulk_id: str, counts: Counts,
               finished: tuple[Item, Outcome, float, float] | None = None) -> Counts: ...


class Attempt:
    def __init__(self, parts: Parts, host: Host, item: Item):
        self.p, self.item = host, item
        self.store, self.leases, self.settings = parts.store, parts.leases, parts.settings
        self.generator, self.owner, self.on_event = parts.generator, parts.owner, parts.on_event
        self.clock, self.ticker = parts.clock, parts.ticker
        self.tries = item.attempts  # the try being made (counted at the claim and by begin_attempt)
        self.rate_limited_for = 0.0
        self.started = parts.ticker()
        #: time spent in requests to the service (all tries), not in waits before them
        self.request_seconds = 0.0
        self._paused = False
        self.leases.claimed(self.started)  # the item's lease was taken just now

    def run(self) -> Step:
        """Generate the item with in-place retries, then record its end."""
        bulk = self.p.known_bulk(self.item.bulk_job_id)
        self.on_event(ItemStarted(self.item, bulk))
        self.p.working_on = self.item
        try:
            while True:
                result = self._one_try()
                if isinstance(result, Step):
                    return result
                if isinstance(result, Outcome):
                    return self._record(result)
        finally:
            self.p.working_on = None

    def _one_try(self) -> Step | Outcome | None:
        """A try: what to return, the item's end, or None to try again."""
        if self.p.stopping:
            return self._hand_back()
        if (self.tries > self.item.attempts or self.rate_limited_for) and not self._still_wanted():
            return self._given_back()
        reply = self._send()
        if isinstance(reply, Step):
            return reply
        return self._sort(reply)

    def _still_wanted(self) -> bool:
        """Before a retry: not if a pause or cancel came meanwhile."""
        current = self.store.get_bulk(self.item.bulk_job_id)
        self._paused = current is not None and current.status == BulkStatus.paused.value
        return current is not None and current.status in CLAIMABLE_STATUSES

    def _given_back(self) -> Step:
        # The failed tries stay counted; the one not made is not.
        self.store.release_item(self.item.id, self.owner, charge=False, now=self.clock())
        return Step.released if self._paused else self._lost()

    def _send(self) -> Reply | Step:
        """Pace, wait out a shared cooldown, check both leases, and send; a Step when it must not be sent."""
        if not self._pace() or not self._cool_down():
            return self._lost()
        if self.p.stopping:
            return self._hand_back()
        if self.generator.remote and not self.leases.check_before_send(self.item):
            return self._lost()  # a local generator sends nothing anywhere: its claim is its check
        reply = self._call()
        if reply is None:
            return self._lost()
        if reply.kind is ReplyKind.fenced and not self.store.is_held(self.item.id, self.owner):
            return self._lost()  # a newer claim holds it: not a failure, not a try
        return reply

    def _sort(self, reply: Reply) -> Step | Outcome | None:
        if reply.kind is ReplyKind.ok:
            return self._gate(self._result(reply))
        if reply.kind in (ReplyKind.permanent, ReplyKind.fenced):
            return Outcome(ItemStatus.failed, error=reply.error)
        if reply.kind is ReplyKind.aborted or self.p.stopping:
            return self._hand_back()
        if reply.kind is ReplyKind.unreachable:
            self.store.release_item(self.item.id, self.owner, now=self.clock())
            return Step.unreachable
        if reply.kind is ReplyKind.rate_limited:
            return self._rate_limited(reply)
        return self._transient(reply)

    def _rate_limited(self, reply: Reply) -> Step | None:
        wait = reply.retry_after if reply.retry_after is not None else self.p.backoff(1)
        self.rate_limited_for += wait
        if self.rate_limited_for > self.settings.give_up and not self.p.forever:
            self.store.release_item(self.item.id, self.owner, now=self.clock())
            raise ServiceUnavailable(
                f"the content service kept answering 429 (rate limited) for over "
                f"{self.settings.give_up:g} s; the item went back to the queue."
            )
        if self.settings.concurrency > 1:  # every slot waits, in every processor
            self.store.set_cooldown(later(self.clock(), wait))
        self.on_event(ItemRetrying(self.item, reply.error or "rate limited", wait, charged=False))
        return None if self.leases.wait_holding(self.item, wait) else Step.released

    def _transient(self, reply: Reply) -> Step | Outcome | None:
        if self.tries >= self.settings.max_attempts:
            return Outcome(ItemStatus.failed, error=f"{reply.error} (gave up after {self.tries} tries)")
        wait = self.p.backoff(self.tries)
        self.on_event(ItemRetrying(self.item, reply.error or "transient error", wait, charged=True))
        if not self.leases.wait_holding(self.item, wait) or not self._begin_attempt():
            return Step.released
        self.tries += 1
        return None

    def _gate(self, result: dict[str, Any]) -> Outcome | Step | None:
        """The quality gate (design.md, "The quality gate"): keep the article, fail the item, or ask again."""
        bulk = self.p.known_bulk(self.item.bulk_job_id)
        verdict = quality.judge(self.item, result["content"], bulk.quality_ratio,
                                self.store.completed_contents(bulk.id), next_generation(self.item.verdict))
        action = quality.decide(bulk.quality, verdict, self.tries, self.settings.max_attempts)
        if action is quality.Action.keep:
            return Outcome(ItemStatus.completed, result=result, verdict=verdict.to_dict())
        if action is quality.Action.fail:
            return Outcome(ItemStatus.failed, result=result, error=quality.failure(verdict, bulk.quality, self.tries),
                           verdict=verdict.to_dict())
        return self._regenerate(verdict)

    def _regenerate(self, verdict: quality.Verdict) -> Step | None:
        """Count a try and ask for a new article; the flagged verdict is kept on the item meanwhile."""
        self.on_event(ItemRetrying(self.item, "quality: " + ", ".join(verdict.reasons), 0.0, charged=True))
        rejected = verdict.to_dict()
        if not self._begin_attempt(rejected):
            return Step.released
        self.item = dataclasses.replace(self.item, verdict=rejected)  # the next request asks for the next generation
        self.tries += 1
        return None

    def _record(self, outcome: Outcome) -> Step:
        # The item's end and its job's counters (and end) in one step (design.md, "Counters"), written while the
        # claim's token stands, even past its lease (design.md, "A reply in hand").
        now = self.clock()  # one time for every try of the write: a try that landed is known by it
        counts = self._keep(lambda: self.store.finish_item(self.item.id, self.owner, outcome, now,
                                                           self.p.between(), fence=self.item.fence))
        if counts is None:
            return self._lost()  # taken by a newer claim, or cancelled: the reply goes
        self.p.report(self.item.bulk_job_id, counts,
                      finished=(self.item, outcome, self.request_seconds, self.ticker() - self.started))
        return Step.done

    def _begin_attempt(self, rejected: dict[str, Any] | None = None) -> bool:
        """Count the next try (held: a new request needs a live hold); a local generator's is sent at once."""
        sent_at = None if self.generator.remote else self.clock()
        return self.store.begin_attempt(self.item.id, self.owner, rejected, sent_at=sent_at)

    def _keep(self, write: Callable[[], T]) -> T:
        """A store write with a reply in hand: retried on a store fault until the item's lease ends, then given up.

        Until then no other processor may take the item, so the write may still land;
        after that the loss is said, and the item is asked for again (design.md, "A reply in hand").
        """
        while True:
            try:
                return write()
            except StoreUnavailable as exc:
                left = self.leases.lease_left()
                if left <= 0 or self.p.abort_now():
                    raise StoreUnavailable(
                        f"{exc} The reply for item {self.item.id} of job {self.item.bulk_job_id} could not be "
                        "recorded and is lost; the item will be asked for again."
                    ) from exc
                time.sleep(min(KEEP_RETRY, left))

    def _result(self, reply: Reply) -> dict:
        return {
            "content": reply.content,
            "generator": self.generator.name,
            "generated_at": iso(self.clock()),
            "seconds": round(self.request_seconds, 3),
            "waited": round(max(self.ticker() - self.started - self.request_seconds, 0.0), 3),
            "words": count_words(content_text(reply.content)),
        }

    # -- waiting before a send -------------------------------------------------------

    def _pace(self) -> bool:
        """Keep `delay` seconds between two requests to a remote service; False if the item was lost."""
        if not self.generator.remote or self.p.last_request_end is None:
            return True
        left = self.p.last_request_end + self.settings.delay - self.ticker()
        return left <= 0 or self.leases.wait_holding(self.item, left)

    def _cool_down(self) -> bool:
        """With several slots, wait out a 429 cooldown another slot recorded; False if the item was lost."""
        if self.settings.concurrency == 1:
            return True
        until = self.store.cooldown_until()
        wait = 0.0 if until is None else (until - self.clock()).total_seconds()
        return wait <= 0 or self.leases.wait_holding(self.item, wait)

    # -- the request -------------------------------------------------------------------

    def _call(self) -> Reply | None:
        """One try; a remote call runs in a worker thread while this one renews leases.

        None when the item was lost meanwhile (cancelled, taken over, or this
        processor failed to renew by its self-fencing deadline) and no reply worth
        keeping came; a reply that came is returned however late (the store decides).
        """
        generator = self.generator
        sent = self.ticker()
        if not generator.remote:
            try:
                return generator.generate(self.item)
            finally:
                self.request_seconds += self.ticker() - sent
        watchdog = Watchdog(self.leases, generator.abort)
        try:
            pool = self.p.pool()
            future = pool.submit(generator.generate, self.item)
            pool.submit(watchdog.watch)
            return self._await(future, watchdog)
        finally:
            watchdog.done.set()
            self.p.last_request_end = self.ticker()
            self.request_seconds += self.p.last_request_end - sent

    def _await(self, future: Future[Reply], watchdog: Watchdog) -> Reply | None:
        """Wait for the reply, renewing the leases and watching for a cancel or a stop."""
        beat_every = self.settings.lease * RENEW_EVERY
        # Past the deadline, renewals are tried a few times within the rescue window, not at every poll.
        rescue_every = min(0.25, self.settings.lease * RESCUE_WITHIN / 4)
        next_beat = self.ticker() + beat_every
        next_check = self.ticker() + HELD_POLL
        next_rescue = 0.0
        lost = False
        while True:
            # Awake at the self-fencing deadline, not a poll later: its renewal has little time.
            wake = next_rescue if self.leases.fenced() else self.leases.fence_deadline
            try:
                reply = future.result(timeout=min(STOP_POLL, max(wake - self.ticker(), 0.005)))
            except FutureTimeout:
                pass
            else:  # a reply in hand is kept (the store decides at its record); an abort's remains are not
                gone = lost or watchdog.fired.is_set()
                return None if gone and reply.kind not in (ReplyKind.ok, ReplyKind.permanent) else reply
            now = self.ticker()
            if lost or watchdog.fired.is_set() or self.p.abort_now():
                self.generator.abort()  # repeated each poll: an abort that raced the request's start is not lost
            elif now >= next_beat or (self.leases.fenced() and now >= next_rescue):  # a stall: renew now
                next_beat, next_check, next_rescue = now + beat_every, now + HELD_POLL, now + rescue_every
                lost = not self._asking(lambda: self.leases.heartbeat(self.item))
            elif now >= next_check:
                next_check = now + HELD_POLL
                lost = not self._asking(lambda: self.store.is_held(self.item.id, self.owner))

    @staticmethod
    def _asking(question: Callable[[], bool]) -> bool:
        """A renewal or a look while a request is in flight; a store fault is no answer (the watchdog keeps time)."""
        try:
            return question()
        except StoreUnavailable:
            return True

    # -- letting go ------------------------------------------------------------------

    def _lost(self) -> Step:
        """The item is no longer this processor's to send: leave it to whoever holds it now."""
        # Still ours only when self-fencing gave it up or the slot passed on: hand it back uncounted.
        if self.store.release_item(self.item.id, self.owner, now=self.clock()):
            self.on_event(ItemLost(self.item, "this processor stopped renewing its lease in time "
                                                "(it was stalled); the item went back to the queue"))
            return Step.released
        bulk = self.store.get_bulk(self.item.bulk_job_id)
        cancelled = bulk is not None and bulk.status == BulkStatus.cancelled.value
        reason = "its bulk job was cancelled" if cancelled else "another processor took it over"
        current = None if cancelled else self.store.get_item(self.item.id)
        if current is not None and current.status == ItemStatus.cancelled.value:
            reason = "it was cancelled"  # bulkgen item cancel
        self.on_event(ItemLost(self.item, reason))
        return Step.released

    def _hand_back(self) -> Step:
        if self.store.release_item(self.item.id, self.owner, now=self.clock()) and self.p.stopping:
            self.p.handed_back += 1
        return Step.released


def new_pool() -> ThreadPoolExecutor:
    """The request's thread and its self-fencing watchdog."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="bulkgen-request")
