"""The fencing argument, tested by interleaving (design.md, "Fencing").

A deterministic harness pauses processor A before its k-th store call, for
every k of a run: while A is paused, time jumps past A's lease (a laptop lid
closed, a SIGSTOP, a long GC pause), processor B takes the lease over and works
the queue to its end, then A resumes and carries on as if nothing happened.
After every store call of either processor, and at the end, it checks:

- never more than N items are `processing`;
- the reference service never saw two requests for one item at once unless
  the earlier one was aborted by its client or refused as stale (409), and no
  item was generated twice;
- every item is completed once, and the counters equal the items.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from bulkgen_cli.content.http import HttpGenerator
from bulkgen_cli.content.reference import ReferenceService
from bulkgen_cli.core.model import ItemStatus, utcnow
from bulkgen_cli.engine.processor import Processor
from bulkgen_cli.core.settings import RunSettings
from tests.conftest import submit_articles, wait_for

LEASE = 0.4
LATENCY = 0.25
ITEMS = 2
#: Outcomes of a request that made no article: the earlier of two overlapping requests must have one.
NOT_GENERATED = {"closed-by-client", "stale", "replayed"}


class Clock:
    """Wall time that jumps forward when A stalls; A's monotonic clock jumps with it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=self.offset)

    def a_ticks(self) -> float:
        return time.monotonic() + self.offset


class Paused(Exception):
    pass


class PausingStore:
    """A's store: pauses before call number `pause_at` until released; checks the bound after every call.

    With `inside` (MongoDB only), it pauses instead before the `pause_at`-th
    collection operation made inside one of those verbs: between the single-document
    writes of which the fenced claim is built (design.md, "The fenced MongoDB claim").
    """

    def __init__(self, store: Any, check: Any, pause_at: int | None, inside: frozenset[str] = frozenset()) -> None:
        self._store, self._check, self._pause_at, self._inside = store, check, pause_at, inside
        self.calls: list[str] = []
        self.current: str | None = None
        self.paused = threading.Event()
        self.resume = threading.Event()
        if inside:
            for name in ("items", "bulks", "leases", "meta", "keys"):
                setattr(store, name, Collection(getattr(store, name), self, name))

    def pause_here(self, name: str) -> None:
        if len(self.calls) == self._pause_at:
            self.paused.set()
            self.resume.wait(30)
        self.calls.append(name)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._inside:
                self.pause_here(name)
            self.current = name
            try:
                result = target(*args, **kwargs)
            finally:
                self.current = None
            self._check()
            return result

        return call


class Collection:
    """A MongoDB collection of A's whose operations inside the chosen verbs are pause points."""

    def __init__(self, collection: Any, owner: PausingStore, name: str) -> None:
        self._collection, self._owner, self._name = collection, owner, name

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._collection, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            inside = self._owner.current in self._owner._inside
            if inside:
                self._owner.pause_here(f"{self._owner.current}:{self._name}.{name}")
            result = target(*args, **kwargs)
            if inside:
                self._owner._check()
            return result

        return call


class CheckingStore:
    """B's store: checks the bound after every call."""

    def __init__(self, store: Any, check: Any) -> None:
        self._store, self._check = store, check

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            result = target(*args, **kwargs)
            self._check()
            return result

        return call


def open_stores(kind: str, tmp_path) -> list[Any]:
    """Three connections to one store: A's, B's and the checker's."""
    if kind == "sqlite":
        from bulkgen_cli.store.sqlite import SqliteStore

        return [SqliteStore(tmp_path / "fence.db") for _ in range(3)]
    import mongomock

    from bulkgen_cli.store.mongo import MongoStore

    client = mongomock.MongoClient(tz_aware=True)
    return [MongoStore(client, "bulkgen") for _ in range(3)]


def settings(concurrency: int) -> RunSettings:
    return RunSettings(delay=0.0, timeout=5.0, max_retries=3, backoff=0.01, lease=LEASE, give_up=5.0,
                       concurrency=concurrency)


def scenario(kind: str, tmp_path, pause_at: int | None, concurrency: int,
             inside: frozenset[str] = frozenset()) -> tuple[list[str], bool]:
    """One run with A paused before its `pause_at`-th store call; returns A's calls and whether it paused."""
    store_a, store_b, checker = open_stores(kind, tmp_path)
    service = ReferenceService(latency=LATENCY).start()
    clock = Clock()
    violations: list[str] = []

    def check() -> None:
        processing = len(checker.in_flight())
        if processing > concurrency:
            violations.append(f"{processing} items processing with {concurrency} slots")

    try:
        bulk = submit_articles(checker, [{"topic": f"Fenced {i}", "word_count": 300} for i in range(ITEMS)])
        wrapped = PausingStore(store_a, check, pause_at, inside)
        a = Processor(wrapped, HttpGenerator(service.url), settings(concurrency), clock=clock.now,
                      ticker=clock.a_ticks, owner="A")
        errors: list[BaseException] = []

        def run_a() -> None:
            try:
                a.run(until_idle=True)
            except BaseException as exc:  # noqa: BLE001  reported by the test
                errors.append(exc)
            finally:
                wrapped.paused.set()  # a run that ends before its pause point wakes the harness too

        thread = threading.Thread(target=run_a, daemon=True)
        thread.start()
        assert wrapped.paused.wait(30), "A neither paused nor ended"
        paused = thread.is_alive()
        if paused:
            clock.offset += LEASE * 2  # A stalls for two leases
            b = Processor(CheckingStore(store_b, check), HttpGenerator(service.url), settings(concurrency),
                          clock=clock.now, owner="B")
            b.run(until_idle=True)
            b.generator.close()
        wrapped.resume.set()
        thread.join(30)
        assert not thread.is_alive(), "A did not finish after it resumed"
        a.generator.close()
        assert not errors, errors
        if paused:  # A may have left the queue to B and gone idle early: B finishes it
            b = Processor(CheckingStore(store_b, check), HttpGenerator(service.url), settings(concurrency),
                          clock=clock.now, owner="B2")
            b.run(until_idle=True)
            b.generator.close()

        assert not violations, violations[0]
        items = checker.list_items(bulk.id)
        assert [i.status for i in items] == [ItemStatus.completed.value] * ITEMS
        assert [i.retry_count >= 0 and i.result is not None for i in items] == [True] * ITEMS
        checker.refresh_counters(bulk.id, clock.now())
        got = checker.get_bulk(bulk.id)
        assert (got.status, got.completed_items, got.failed_items) == ("completed", ITEMS, 0)
        check_requests(service.stats()["requests"], [i.id for i in items])
        return wrapped.calls, paused
    finally:
        service.stop()
        for store in (store_a, store_b, checker):
            store.close()


def check_requests(requests: list[dict[str, Any]], item_ids: list[str] | None = None) -> None:
    """Each item generated at most once (exactly once for `item_ids`, which must be all that was asked for),
    and two requests for one item in flight at once only when the earlier made nothing."""
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in requests:
        by_item[request["job_id"]].append(request)
    if item_ids is not None:
        assert set(by_item) == set(item_ids)
    for item_id, seen in by_item.items():
        generated = [r for r in seen if r["outcome"] == "ok"]
        expected = [1] if item_ids is not None else [0, 1]
        assert len(generated) in expected, f"item {item_id} generated {len(generated)} times: {seen}"
        seen.sort(key=lambda r: r["start"])
        for earlier, later in zip(seen, seen[1:]):
            overlap = earlier["end"] is None or earlier["end"] > later["start"]
            assert not overlap or earlier["outcome"] in NOT_GENERATED, \
                f"two requests for item {item_id} in flight at once: {earlier} and {later}"


@pytest.mark.parametrize("kind", ["sqlite", "mongo"])
@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_stall_at_every_store_call_never_sends_twice(kind, concurrency, tmp_path):
    solo, _ = scenario(kind, tmp_path / "solo", None, concurrency)
    assert {"claim_next", "heartbeat", "finish_item"} <= set(solo)
    paused_at: dict[str, int] = defaultdict(int)
    for k in range(len(solo)):
        calls, paused = scenario(kind, tmp_path / f"k{k}", k, concurrency)
        if paused:
            paused_at[calls[k] if k < len(calls) else "?"] += 1
    # Timing may change how many renewals a request makes, never which kinds of call A makes.
    # finish_item refreshes the job's counters in the same step (design.md, "Counters").
    assert set(paused_at) >= {"acquire_processor_lease", "claim_next", "heartbeat", "finish_item"}, paused_at
    assert sum(paused_at.values()) >= len(solo) - 3, (paused_at, solo)


def test_a_renewal_that_hangs_does_not_keep_the_request_in_flight(tmp_path):
    """Self-fencing: the store stops answering mid-request; the request is aborted before the lease runs out."""
    from bulkgen_cli.store.sqlite import SqliteStore

    lease = 2.0
    store = SqliteStore(tmp_path / "hang.db")
    service = ReferenceService(latency=10).start()
    checks: list[float] = []

    class HangingRenewals(CheckingStore):
        def heartbeat(self, *args: Any, **kwargs: Any) -> bool:
            if not checks:  # the check before the send: the lease runs from here
                checks.append(time.time())
            elif len(checks) == 1:  # the first renewal in flight hangs for two leases
                checks.append(time.time())
                time.sleep(2 * lease)
                service.latency = 0.0  # the next try is answered at once
            return self._store.heartbeat(*args, **kwargs)

    try:
        bulk = submit_articles(store, [{"topic": "Hanging store", "word_count": 300}])
        processor = Processor(HangingRenewals(store, lambda: None), HttpGenerator(service.url),
                              RunSettings(delay=0.0, timeout=30.0, backoff=0.01, lease=lease, give_up=5.0))
        processor.run(until_idle=True)
        processor.generator.close()
        first, *rest = service.stats()["requests"]
        assert first["outcome"] == "closed-by-client"
        # Aborted before the store could think the lease had run out (check + lease), not after the hang.
        assert first["end"] < checks[0] + lease, (first["end"] - checks[0])
        assert [r["outcome"] for r in rest] == ["ok"]
        item = store.list_items(bulk.id)[0]
        assert item.status == "completed" and item.attempts == 1  # the fenced try was not counted
    finally:
        service.stop()
        store.close()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_mongo_a_stall_between_the_writes_of_a_claim_never_sends_twice(concurrency, tmp_path):
    """The same harness, pausing A between any two collection operations of its claim, renewal and release."""
    inside = frozenset({"claim_next", "heartbeat", "release_processor_lease", "acquire_processor_lease"})
    solo, _ = scenario("mongo", tmp_path / "solo", None, concurrency, inside)
    assert any(call.startswith("claim_next:leases.update_one") for call in solo), solo
    paused_at: dict[str, int] = defaultdict(int)
    for k in range(len(solo)):
        calls, paused = scenario("mongo", tmp_path / f"k{k}", k, concurrency, inside)
        if paused:
            paused_at[calls[k] if k < len(calls) else "?"] += 1
    for step in ("claim_next:leases.find_one", "claim_next:meta.find_one_and_update",
                 "claim_next:leases.update_one", "claim_next:items.find_one_and_update", "heartbeat:items.update_one"):
        assert paused_at.get(step), (step, dict(paused_at))
    assert sum(paused_at.values()) >= len(solo) - 3, (paused_at, solo)


@pytest.mark.parametrize("kind", ["sqlite", "mongo"])
def test_a_stall_alone_during_a_request_keeps_the_reply(kind, tmp_path):
    """Time jumps two leases while A's request is in flight, nobody else on the store: past its deadline A renews
    first (nobody took the item, so it succeeds) instead of aborting, and records the reply: one request."""
    store_a, _, checker = open_stores(kind, tmp_path)
    service = ReferenceService(latency=1.0).start()
    clock = Clock()
    try:
        bulk = submit_articles(checker, [{"topic": "Alone", "word_count": 300}])
        lease = 2.0  # the renewal past the deadline has 1/8 of it to succeed, on a busy machine too
        a = Processor(store_a, HttpGenerator(service.url), dataclasses.replace(settings(1), lease=lease),
                      clock=clock.now, ticker=clock.a_ticks, owner="A")
        thread = threading.Thread(target=a.run, kwargs={"until_idle": True}, daemon=True)
        thread.start()
        wait_for(lambda: service.stats()["in_flight"] == 1, timeout=10, what="A's request in flight")
        clock.offset += lease * 2  # the stall: A's clocks and the store's time jump together
        thread.join(30)
        a.generator.close()
        item = checker.list_items(bulk.id)[0]
        assert (item.status, item.attempts, item.retry_count) == ("completed", 1, 0)
        assert [r["outcome"] for r in service.stats()["requests"]] == ["ok"]
    finally:
        service.stop()
        for store in (store_a, checker):
            store.close()


def test_past_the_deadline_a_failing_store_is_asked_a_few_times_not_at_every_poll(tmp_path):
    """A store that fails at once (StoreUnavailable) while a request is past its self-fencing deadline: the
    renewal is tried a few times within the rescue window, then the watchdog aborts; not 200 times a second."""
    from bulkgen_cli.core.errors import StoreUnavailable
    from bulkgen_cli.store.sqlite import SqliteStore

    lease = 2.0
    store = SqliteStore(tmp_path / "failing.db")
    service = ReferenceService(latency=10).start()
    failing: list[float] = []

    class FailingRenewals(CheckingStore):
        def heartbeat(self, *args: Any, **kwargs: Any) -> bool:
            if failing or self._store.is_held(args[0], args[1]) and service.stats()["in_flight"]:
                failing.append(time.monotonic())  # from the first renewal in flight on, the store fails at once
                raise StoreUnavailable("the store did not answer")
            return self._store.heartbeat(*args, **kwargs)

    try:
        submit_articles(store, [{"topic": "Failing store", "word_count": 300}])
        processor = Processor(FailingRenewals(store, lambda: None), HttpGenerator(service.url),
                              RunSettings(delay=0.0, timeout=30.0, backoff=0.01, lease=lease, give_up=5.0))
        with pytest.raises(StoreUnavailable):
            processor.run(until_idle=True)
        processor.generator.close()
        assert service.stats()["requests"][0]["outcome"] == "closed-by-client"
        # The renewals in flight come every quarter of a lease until the deadline (3/4), then a few more until
        # the watchdog aborts (by 7/8): every 1/32 of a lease at most, not at every 5 ms poll.
        assert 2 <= len(failing) <= 2 + 8, len(failing)
    finally:
        service.stop()
        store.close()
