"""MongoDB decisions that read one document and write another, interleaved deterministically (mongomock).

Without multi-document transactions a verb that decides from a read of the job
and writes the item can have its decision made stale by a command that lands
between the two (design.md, "Every MongoDB decision in one conditional write").
Each test runs one verb's write at a chosen point inside another verb, on two
stores sharing one mongomock client, in one thread: the order is exact.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import pytest

from bulkgen_cli.core.model import ItemStatus, utcnow
from tests.conftest import articles, claim, submit

mongomock = pytest.importorskip("mongomock")

LEASE = 30.0


class Hooked:
    """A collection whose `method` runs `before(n, call)` before its n-th call (from 1); `call` makes it."""

    def __init__(self, collection: Any, method: str, before: Callable[[int, Callable[[], Any]], Any]) -> None:
        self._collection, self._method, self._before, self.calls = collection, method, before, 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._collection, name)
        if name != self._method:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self._before(self.calls, lambda: target(*args, **kwargs))

        return call


def two_stores() -> tuple[Any, Any]:
    from bulkgen_cli.store.mongo import MongoStore

    client = mongomock.MongoClient(tz_aware=True)
    return MongoStore(client, "bulkgen", "mongodb://mock"), MongoStore(client, "bulkgen", "mongodb://mock")


def test_requeue_expired_landing_between_cancel_sweeps_leaves_nothing_queued():
    """requeue_expired reads the job (active), cancel_bulk cancels it and sweeps the queued items, the
    requeue then writes its item back to queued, and the cancel's second sweep (processing) misses it."""
    requeuer, canceller = two_stores()
    bulk = submit(requeuer, 3)
    t0 = utcnow()
    item = claim(requeuer, "dead", LEASE, t0)
    later = t0 + dt.timedelta(seconds=LEASE + 1)  # its processor died: the lease ran out
    order: list[str] = []
    pending_write: list[Callable[[], Any]] = []

    def between_sweeps(n: int, sweep: Callable[[], Any]) -> Any:
        if n == 2:  # the processing sweep: the requeue's write lands just before it
            order.append("requeue writes")
            pending_write.pop()()
        order.append(f"sweep {n}")
        return sweep()

    def requeue_write(n: int, write: Callable[[], Any]) -> Any:
        if n != 1:
            return write()
        # The requeue has read the job (still active) and decided: the whole cancel runs now, and
        # the decided write lands between its two sweeps.
        result: list[Any] = []
        pending_write.append(lambda: result.append(write()))
        order.append("cancel")
        canceller.items = Hooked(canceller.items, "update_many", between_sweeps)
        assert canceller.cancel_bulk(bulk.id, later)
        return result[0]

    requeuer.items = Hooked(requeuer.items, "update_one", requeue_write)
    touched = requeuer.requeue_expired(later, max_attempts=3)
    assert order == ["cancel", "sweep 1", "requeue writes", "sweep 2"], order  # the interleaving happened
    assert touched == [bulk.id]
    for store in (requeuer, canceller):
        store.refresh_counters(bulk.id, later)
    job = canceller.get_bulk(bulk.id)
    items = {i.id: i for i in canceller.list_items(bulk.id)}
    assert job.status == "cancelled"
    assert [i.status for i in items.values() if i.status in ("queued", "processing")] == [], \
        "a queued item was left inside a cancelled job: never claimed, never swept"
    assert items[item.id].status == ItemStatus.cancelled.value
    assert job.cancelled_items == 3 and job.completed_at is not None


def test_retry_failed_never_starts_a_round_over_a_newer_end_still_being_notified():
    """retry-failed reads the job (completed, its end delivered); before it sweeps, another retry-failed
    starts a round that fails and ends again, its notification still open. The first one's sweep then
    queues the new round's failed items, but its job write is for the end it read: refused, so the new
    end keeps its outbox; the items wait in the completed job until the repair queues it, once that end
    is delivered."""
    from bulkgen_cli.store import repair
    from bulkgen_cli.core.model import Outcome
    from tests.test_store_contract import CHANNELS, deliver_all, run_to_end

    first, other = two_stores()
    bulk = submit(first, 3, notify=CHANNELS)
    t = utcnow()
    run_to_end(first, first.get_bulk(bulk.id), t, fail=(0,))
    deliver_all(first, bulk.id, t)
    ended = first.get_bulk(bulk.id).outbox["event_id"]

    def another_round_first(n: int, sweep: Callable[[], Any]) -> Any:
        if n == 1:
            assert other.retry_failed(bulk.id, t) == 1
            item = claim(other, "p1", LEASE, t)  # run_to_end's processor, which holds the one slot
            assert other.finish_item(item.id, "p1", Outcome(ItemStatus.failed, error="again"), t).ended_now
        return sweep()

    first.items = Hooked(first.items, "update_many", another_round_first)
    assert first.retry_failed(bulk.id, t) == 0
    job = other.get_bulk(bulk.id)
    assert job.status == "completed" and job.outbox["event_id"] != ended
    assert job.outbox["event"] is None  # the newer end's outbox is still there, undelivered
    deliver_all(other, bulk.id, t)
    repair.repair(other, t)
    assert other.get_bulk(bulk.id).status == "queued"


def test_a_fault_in_the_refresh_after_the_items_end_is_not_a_lost_item():
    """MongoDB writes an item's end and then refreshes its job: when the refresh fails (a store fault) and the
    processor tries the record again, its own end is already written. It refreshes only, and reports the item
    finished, not lost to another processor."""
    from bulkgen_cli.content.offline import OfflineGenerator
    from bulkgen_cli.core.errors import StoreUnavailable
    from bulkgen_cli.core.events import ItemFinished, ItemLost
    from bulkgen_cli.engine.processor import Processor
    from bulkgen_cli.core.settings import RunSettings

    store, _ = two_stores()
    bulk = submit(store, 2)
    refresh, faults = store.refresh_counters, [1]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if faults:
            faults.pop()
            raise StoreUnavailable("the store did not answer")
        return refresh(*args, **kwargs)

    store.refresh_counters = flaky
    events: list[Any] = []
    settings = RunSettings(delay=0.0, backoff=0.01, lease=30.0, give_up=5.0)
    Processor(store, OfflineGenerator(), settings, owner="A", on_event=events.append).run(until_idle=True)
    assert not faults  # the fault happened
    assert [type(e) for e in events if isinstance(e, (ItemFinished, ItemLost))] == [ItemFinished, ItemFinished]
    job = store.get_bulk(bulk.id)
    assert (job.status, job.completed_items) == ("completed", 2)


def test_a_submit_with_limits_cannot_check_while_another_of_the_same_user_is_storing():
    """A's usage is read and its items are being inserted when B submits for the same user: B may not read the
    usage A has not added to yet (it waits for A's quota lock, here too briefly, and stores nothing); a lock
    left by a submitter that died is taken over once stale."""
    from bulkgen_cli.core.errors import QuotaExceeded, StoreUnavailable
    from bulkgen_cli.store.mongo import QUOTA_LEASE
    from bulkgen_cli.store.rules import Quota
    from tests.test_store_contract import quota_job

    first, second = two_stores()
    second.quota_wait = 0.05
    limits = Quota(max_active_jobs=1)
    during: list[BaseException] = []

    def others_submit(n: int, insert: Callable[[], Any]) -> Any:
        try:
            second.create_bulk(quota_job(key="b"), articles(2), limits)
        except (StoreUnavailable, QuotaExceeded) as exc:
            during.append(exc)
        return insert()

    first.items = Hooked(first.items, "insert_many", others_submit)
    assert first.create_bulk(quota_job(), articles(2), limits)[1]
    assert len(during) == 1 and isinstance(during[0], StoreUnavailable), during
    assert second.keys.count_documents({}) == 0  # B's idempotency key given back with its refusal
    assert first.usage("alice").active_jobs == 1 and len(first.list_bulks("alice")) == 1
    with pytest.raises(QuotaExceeded):  # A done: B reads A's job
        second.create_bulk(quota_job(), articles(2), limits)
    second.quota_locks.insert_one({"_id": "bob", "until": utcnow() - QUOTA_LEASE, "holder": "dead"})
    assert second.create_bulk(quota_job("bob"), articles(2), limits)[1]
    assert second.quota_locks.count_documents({}) == 0  # each lock given back
