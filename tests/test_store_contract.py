"""The store contract (store/base.py), run against SQLite and MongoDB alike."""

from __future__ import annotations

import datetime as dt

import pytest

from bulkgen_cli.core.model import BulkJob, BulkStatus, ItemStatus, Outcome, new_id, utcnow
from tests.conftest import claim, articles, submit

LEASE = 30.0


def complete_next(store, n, t):
    """As processor p1: claim the next `n` items and complete each."""
    for _ in range(n):
        item = claim(store, "p1", LEASE, t)
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), t)


def counts_by_status(store, bulk_id):
    out = {s.value: 0 for s in ItemStatus}
    for item in store.list_items(bulk_id):
        out[item.status] += 1
    return out


def test_create_and_read_back(store):
    bulk = submit(store, 12)
    got = store.get_bulk(bulk.id)
    assert got.status == "queued" and got.total_items == 12 and got.userId == "alice"
    assert got.created_at.tzinfo is not None
    assert got.created_at == bulk.created_at
    items = store.list_items(bulk.id)
    assert [i.queue_position for i in items] == list(range(1, 13))
    assert items[0].article == {"topic": "Topic 1", "word_count": 500}
    assert all(i.status == "queued" and i.attempts == 0 for i in items)


def test_unknown_id_is_none(store):
    assert store.get_bulk(new_id()) is None
    assert store.get_bulk("not-an-id") is None
    assert store.list_items("not-an-id") == []


def test_article_fields_round_trip(store):
    art = articles(10)
    art[0] = {
        "topic": "Ünïcode ✓",
        "keywords": ["a", "b"],
        "id": "intro",
        "extra": {"seo": {"slug": "x"}},
        "word_count": 1200,
    }
    bulk = BulkJob(
        id=new_id(), userId="bob", mode="topic", name="n", status="queued",
        total_items=10, created_at=utcnow(),
    )
    store.create_bulk(bulk, art)
    first = store.list_items(bulk.id)[0]
    assert first.article == art[0]
    assert first.item_id == "intro"


def test_idempotency_key_returns_existing_job(store):
    first = submit(store, 10, key="k1")
    again = BulkJob(
        id=new_id(), userId="alice", mode="topic", name="x", status="queued",
        total_items=10, created_at=utcnow(), idempotency_key="k1",
    )
    got, created = store.create_bulk(again, articles(10))
    assert not created and got.id == first.id
    assert store.get_bulk(again.id) is None
    assert len(store.list_bulks()) == 1
    # The same key for another user is another job.
    other = submit(store, 10, user="bob", key="k1")
    assert other.id != first.id and len(store.list_bulks()) == 2


def test_list_newest_first_and_by_user(store):
    t0 = utcnow()
    a = submit(store, created_at=t0, user="alice")
    b = submit(store, created_at=t0 + dt.timedelta(seconds=1), user="bob")
    c = submit(store, created_at=t0 + dt.timedelta(seconds=2), user="alice")
    assert [j.id for j in store.list_bulks()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list_bulks(user="alice")] == [c.id, a.id]
    assert [j.id for j in store.list_bulks(limit=1)] == [c.id]
    assert [j.id for j in store.list_bulks(statuses=[BulkStatus.cancelled])] == []


def test_claim_order_is_fifo_across_jobs(store):
    t0 = utcnow()
    newer = submit(store, 10, created_at=t0 + dt.timedelta(seconds=5), prefix="New")
    older = submit(store, 10, created_at=t0, prefix="Old")
    seen = []
    for _ in range(20):
        item = claim(store, "p1", LEASE, utcnow())
        assert item.status == "processing" and item.attempts == 1 and item.lease_owner == "p1"
        seen.append((item.bulk_job_id, item.queue_position))
        assert store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), utcnow())
    assert seen == [(older.id, p) for p in range(1, 11)] + [(newer.id, p) for p in range(1, 11)]
    assert claim(store, "p1", LEASE, utcnow()) is None


def test_no_claim_while_an_item_is_in_flight(store):
    bulk = submit(store)
    held = claim(store, "stalled", LEASE, utcnow())
    # Another owner (who took the processor lease over) must not start a second item.
    assert claim(store, "p2", LEASE, utcnow()) is None
    assert claim(store, "p2", LEASE, utcnow(), max_in_flight=2) is not None
    assert sum(i.status == "processing" for i in store.list_items(bulk.id)) == 2
    assert held is not None


def test_claim_marks_bulk_processing_once(store):
    bulk = submit(store)
    now = utcnow()
    item = claim(store, "p1", LEASE, now)
    got = store.get_bulk(bulk.id)
    assert got.status == "processing" and got.started_at == now
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), now)
    claim(store, "p1", LEASE, now + dt.timedelta(seconds=3))
    assert store.get_bulk(bulk.id).started_at == now


def test_claim_skips_paused_and_cancelled_jobs(store):
    t0 = utcnow()
    paused = submit(store, created_at=t0, prefix="P")
    cancelled = submit(store, created_at=t0 + dt.timedelta(seconds=1), prefix="C")
    live = submit(store, created_at=t0 + dt.timedelta(seconds=2), prefix="L")
    assert store.set_bulk_state(paused.id, [BulkStatus.queued], BulkStatus.paused, t0)
    assert store.set_bulk_state(cancelled.id, [BulkStatus.queued], BulkStatus.cancelled, t0)
    item = claim(store, "p1", LEASE, utcnow())
    assert item.bulk_job_id == live.id
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), utcnow())
    # Resumed, the paused job's items come first again: it is older.
    assert store.set_bulk_state(paused.id, [BulkStatus.paused], BulkStatus.queued, t0)
    assert claim(store, "p1", LEASE, utcnow()).bulk_job_id == paused.id


def test_set_bulk_state_is_conditional(store):
    bulk = submit(store)
    now = utcnow()
    assert not store.set_bulk_state(bulk.id, [BulkStatus.paused], BulkStatus.queued, now)
    assert store.get_bulk(bulk.id).status == "queued"
    assert store.set_bulk_state(bulk.id, [BulkStatus.queued], BulkStatus.paused, now)
    assert not store.set_bulk_state(bulk.id, [BulkStatus.queued], BulkStatus.paused, now)
    assert not store.set_bulk_state(new_id(), [BulkStatus.queued], BulkStatus.paused, now)


def test_only_the_owner_may_touch_a_held_item(store):
    submit(store)
    now = utcnow()
    item = claim(store, "p1", LEASE, now)
    assert not store.heartbeat(item.id, "p2", LEASE, now)
    assert not store.begin_attempt(item.id, "p2")
    assert not store.finish_item(item.id, "p2", Outcome(ItemStatus.completed), now)
    assert not store.release_item(item.id, "p2")
    assert store.heartbeat(item.id, "p1", LEASE, now + dt.timedelta(seconds=10))
    held = store.list_items(item.bulk_job_id)[0]
    assert held.lease_expires_at == now + dt.timedelta(seconds=10 + LEASE)
    assert store.begin_attempt(item.id, "p1")
    held = store.list_items(item.bulk_job_id)[0]
    assert held.attempts == 2 and held.retry_count == 1
    assert store.finish_item(item.id, "p1", Outcome(ItemStatus.failed, error="boom"), now)
    done = store.list_items(item.bulk_job_id)[0]
    assert done.status == "failed" and done.error == "boom" and done.lease_owner is None
    # Finished, it is no longer held: a second finish changes nothing.
    assert not store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), now)
    assert store.list_items(item.bulk_job_id)[0].status == "failed"


def test_release_puts_item_back_at_its_place_uncharged(store):
    bulk = submit(store)
    item = claim(store, "p1", LEASE, utcnow())
    assert store.release_item(item.id, "p1")
    back = store.list_items(bulk.id)[0]
    assert back.status == "queued" and back.attempts == 0 and back.lease_owner is None
    store.release_processor_lease("p1")
    again = claim(store, "p2", LEASE, utcnow())
    assert again.id == item.id and again.attempts == 1


def test_expired_lease_is_taken_back_counting_the_try(store):
    bulk = submit(store)
    t0 = utcnow()
    item = claim(store, "dead", LEASE, t0)
    assert store.heartbeat(item.id, "dead", LEASE, t0, sent=True)  # its request went out
    assert store.requeue_expired(t0 + dt.timedelta(seconds=LEASE - 1), 3) == []
    assert store.list_items(bulk.id)[0].status == "processing"
    touched = store.requeue_expired(t0 + dt.timedelta(seconds=LEASE + 1), 3)
    assert touched == [bulk.id]
    back = store.list_items(bulk.id)[0]
    assert back.status == "queued" and back.attempts == 1 and back.retry_count == 1
    # The dead owner can no longer record anything.
    assert not store.finish_item(item.id, "dead", Outcome(ItemStatus.completed), t0)
    again = claim(store, "p2", LEASE, t0 + dt.timedelta(seconds=LEASE + 1))
    assert again.id == item.id and again.attempts == 2


def test_an_expired_try_never_sent_goes_back_uncounted(store):
    """Died (or stalled) before its request, on every try: nothing is charged, however often (retry_count stays)."""
    bulk = submit(store)
    t = utcnow()
    for _ in range(4):
        held = claim(store, "dead", LEASE, t)
        assert held.attempts == 1 and held.sent_at is None
        assert store.heartbeat(held.id, "dead", LEASE, t)  # a renewal while it waited: not a send
        t += dt.timedelta(seconds=LEASE + 1)
        assert store.requeue_expired(t, 3) == [bulk.id]
        back = store.get_item(held.id)
        assert back.status == "queued" and back.attempts == 0 and back.retry_count == 0
    sent = claim(store, "p", LEASE, t)
    assert store.heartbeat(sent.id, "p", LEASE, t, sent=True) and store.get_item(sent.id).sent_at is not None
    assert store.begin_attempt(sent.id, "p") and store.get_item(sent.id).sent_at is None  # the next try, not sent


def test_a_reply_in_hand_is_recorded_while_no_newer_claim_took_the_item(store):
    """Past its lease, and after requeue_expired put it back, the claim's reply is still recorded (its token);
    once a newer claim took it, or it was cancelled, it is not."""
    submit(store)
    t = utcnow()
    first = claim(store, "p1", LEASE, t)
    late = t + dt.timedelta(seconds=LEASE + 1)
    assert store.finish_item(first.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), late, fence=first.fence)
    second = claim(store, "p1", LEASE, late)
    store.heartbeat(second.id, "p1", LEASE, late, sent=True)
    later = late + dt.timedelta(seconds=LEASE + 1)
    assert store.requeue_expired(later, 3)  # expired, back in the queue, nobody claimed it since
    assert store.finish_item(second.id, "p1", Outcome(ItemStatus.completed, {"content": "y"}), later,
                             fence=second.fence)
    assert store.get_item(second.id).status == "completed" and store.get_item(second.id).result == {"content": "y"}
    third = claim(store, "p1", LEASE, later)
    store.heartbeat(third.id, "p1", LEASE, later, sent=True)
    latest = later + dt.timedelta(seconds=LEASE + 1)
    store.requeue_expired(latest, 3)
    store.acquire_processor_lease("p2", LEASE, latest, "h", 2)
    newer = claim(store, "p2", LEASE, latest)
    assert newer.id == third.id and newer.fence > third.fence
    assert not store.finish_item(third.id, "p1", Outcome(ItemStatus.completed), latest, fence=third.fence)
    assert store.get_item(third.id).status == "processing" and store.get_item(third.id).lease_owner == "p2"
    store.cancel_item(newer.id, ItemStatus.processing, latest)
    assert not store.finish_item(newer.id, "p2", Outcome(ItemStatus.completed), latest, fence=newer.fence)
    assert store.get_item(newer.id).status == "cancelled"


def test_next_lease_expiry(store):
    submit(store)
    t0 = utcnow()
    assert store.next_lease_expiry() is None
    item = claim(store, "p1", LEASE, t0)
    assert store.next_lease_expiry() == t0 + dt.timedelta(seconds=LEASE)
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), t0)
    assert store.next_lease_expiry() is None


def test_expired_lease_past_the_limit_fails_the_item(store):
    bulk = submit(store)
    t = utcnow()
    for _ in range(3):
        held = claim(store, "dead", LEASE, t)
        assert store.heartbeat(held.id, "dead", LEASE, t, sent=True)
        t += dt.timedelta(seconds=LEASE + 1)
        store.requeue_expired(t, 3)
    item = store.list_items(bulk.id)[0]
    assert item.status == "failed" and item.attempts == 3
    assert "lease expired" in item.error
    counts = store.refresh_counters(bulk.id, t)
    assert counts.failed == 1 and counts.queued == 9
    assert store.get_bulk(bulk.id).failed_items == 1


def test_expired_lease_of_cancelled_job_is_cancelled(store):
    bulk = submit(store)
    t = utcnow()
    claim(store, "dead", LEASE, t)
    store.set_bulk_state(bulk.id, [BulkStatus.processing], BulkStatus.cancelled, t)
    store.requeue_expired(t + dt.timedelta(seconds=LEASE + 1), 3)
    assert store.list_items(bulk.id)[0].status == "cancelled"


def test_counters_follow_items_and_end_is_recorded_once(store):
    bulk = submit(store, 10)
    t = utcnow()
    for n in range(10):
        item = claim(store, "p1", LEASE, t)
        outcome = (
            Outcome(ItemStatus.failed, error=f"HTTP 400: bad {n}")
            if n % 4 == 0
            else Outcome(ItemStatus.completed, {"content": "x"})
        )
        t += dt.timedelta(seconds=2)
        # The item's end refreshes its job in the same step (design.md, "Counters").
        counts = store.finish_item(item.id, "p1", outcome, t, seconds_between_items=1.0)
        got = store.get_bulk(bulk.id)
        truth = counts_by_status(store, bulk.id)
        assert (got.completed_items, got.failed_items, got.cancelled_items) == (
            truth["completed"], truth["failed"], truth["cancelled"],
        )
        assert counts.ended_now == (n == 9)
        if n < 9:
            assert got.status == "processing"
            # 2 s per item plus 1 s between items, for each pending item.
            assert got.estimated_completion == t + dt.timedelta(seconds=3 * (9 - n))
    got = store.get_bulk(bulk.id)
    assert got.status == "completed" and got.completed_at == t
    assert got.failed_items == 3 and got.completed_items == 7
    assert got.estimated_completion is None
    assert not store.refresh_counters(bulk.id, t).ended_now  # one end: a later refresh records none
    assert got.error_summary == [
        "#1 Topic 1: HTTP 400: bad 0",
        "#5 Topic 5: HTTP 400: bad 4",
        "#9 Topic 9: HTTP 400: bad 8",
    ]
    assert store.refresh_counters(bulk.id, t).ended_now is False


def test_paused_job_whose_last_item_finishes_is_completed(store):
    bulk = submit(store, 10)
    t = utcnow()
    complete_next(store, 9, t)
    last = claim(store, "p1", LEASE, t)
    assert store.set_bulk_state(bulk.id, [BulkStatus.processing], BulkStatus.paused, t)
    assert store.finish_item(last.id, "p1", Outcome(ItemStatus.completed), t).ended_now
    assert store.get_bulk(bulk.id).status == "completed"


def test_processor_lease(store):
    t = utcnow()
    assert store.processor_lease() is None
    assert store.acquire_processor_lease("a", 10, t, "h", 1)
    assert not store.acquire_processor_lease("b", 10, t + dt.timedelta(seconds=5), "h", 2)
    assert store.acquire_processor_lease("a", 10, t + dt.timedelta(seconds=5), "h", 1)  # renew
    lease = store.processor_lease()
    assert lease.owner == "a" and lease.expires_at == t + dt.timedelta(seconds=15)
    assert lease.acquired_at == t and lease.pid == 1
    assert not store.acquire_processor_lease("b", 10, t + dt.timedelta(seconds=14), "h", 2)
    assert store.acquire_processor_lease("b", 10, t + dt.timedelta(seconds=16), "h", 2)
    assert store.processor_lease().owner == "b"
    store.release_processor_lease("a")  # not a's any more: no effect
    assert store.processor_lease().owner == "b"
    store.release_processor_lease("b")
    assert store.processor_lease() is None
    assert store.acquire_processor_lease("a", 10, t, "h", 1)


def sqlite_submit_failing_part_way(store, bulk):
    broken = articles(10)
    broken[5]["extra"] = {"x": object()}  # cannot be stored: fails mid-insert
    with pytest.raises(TypeError):
        store.create_bulk(bulk, broken)


def mongo_submit_failing_part_way(store, bulk):
    from bson import ObjectId

    from bulkgen_cli.core.errors import StoreUnavailable

    # The bulk document's insert fails after the items went in.
    store.bulks.insert_one({"_id": ObjectId(bulk.id), "status": "completed"})
    with pytest.raises(StoreUnavailable):
        store.create_bulk(bulk, articles(10))
    store.bulks.delete_one({"_id": ObjectId(bulk.id)})


SUBMIT_FAILING_PART_WAY = {"sqlite": sqlite_submit_failing_part_way, "mongo": mongo_submit_failing_part_way}


def test_submit_is_all_or_nothing(store, backend):
    """Invariant 7: a failure part-way leaves nothing a processor could start."""
    bulk = BulkJob(
        id=new_id(), userId="alice", mode="topic", name="n", status="queued",
        total_items=10, created_at=utcnow(),
    )
    SUBMIT_FAILING_PART_WAY[backend.name](store, bulk)  # each backend fails its own way
    assert store.get_bulk(bulk.id) is None
    assert store.list_items(bulk.id) == []
    assert claim(store, "p1", LEASE, utcnow()) is None



def test_cancel_bulk_cancels_queued_and_in_flight(store):
    bulk = submit(store, 10)
    t = utcnow()
    done = claim(store, "p1", LEASE, t)
    store.finish_item(done.id, "p1", Outcome(ItemStatus.completed), t)
    held = claim(store, "p1", LEASE, t)
    assert store.cancel_bulk(bulk.id, t)
    assert not store.is_held(held.id, "p1")  # the processor sees it is no longer its own
    items = store.list_items(bulk.id)
    assert [i.status for i in items] == ["completed"] + ["cancelled"] * 9
    assert items[1].error == "cancelled while its request was in flight" and items[1].lease_owner is None
    counts = store.refresh_counters(bulk.id, t)
    assert not counts.ended_now  # a cancel is its own end, not a completion
    got = store.get_bulk(bulk.id)
    assert got.status == "cancelled" and got.completed_at == t
    assert (got.completed_items, got.cancelled_items) == (1, 9)
    # The processor's late result is refused; a second cancel changes nothing.
    assert not store.finish_item(held.id, "p1", Outcome(ItemStatus.completed), t)
    assert not store.cancel_bulk(bulk.id, t)
    assert claim(store, "p1", LEASE, t) is None


def test_cancel_refuses_completed_jobs(store):
    bulk = submit(store, 10)
    t = utcnow()
    complete_next(store, 10, t)
    store.refresh_counters(bulk.id, t)
    assert not store.cancel_bulk(bulk.id, t)
    assert store.get_bulk(bulk.id).status == "completed"
    assert all(i.status == "completed" for i in store.list_items(bulk.id))


def test_retry_failed_starts_a_new_round(store):
    bulk = submit(store, 10)
    t = utcnow()
    assert store.retry_failed(bulk.id, t) == 0  # not completed yet
    for n in range(10):
        item = claim(store, "p1", LEASE, t)
        if n in (2, 5):
            store.begin_attempt(item.id, "p1")
            store.finish_item(item.id, "p1", Outcome(ItemStatus.failed, error="HTTP 500"), t)
        else:
            store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), t)
    store.refresh_counters(bulk.id, t)
    assert store.retry_failed(bulk.id, t) == 2
    got = store.get_bulk(bulk.id)
    assert got.status == "queued" and got.completed_at is None
    again = [i for i in store.list_items(bulk.id) if i.status == "queued"]
    assert [i.queue_position for i in again] == [3, 6]
    assert all(i.attempts == 0 and i.retry_count == 2 and i.error is None for i in again)
    counts = store.refresh_counters(bulk.id, t)
    assert (counts.failed, counts.queued) == (0, 2)
    # Only the retried items are claimed, in order; the job ends again.
    for position in (3, 6):
        item = claim(store, "p1", LEASE, t)
        assert item.queue_position == position
        counts = store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), t)
    assert counts.ended_now
    assert store.retry_failed(bulk.id, t) == 0  # nothing failed now


def test_release_with_charge_keeps_the_try(store):
    bulk = submit(store)
    item = claim(store, "p1", LEASE, utcnow())
    assert store.begin_attempt(item.id, "p1")
    assert store.release_item(item.id, "p1", charge=True)
    back = store.list_items(bulk.id)[0]
    assert back.status == "queued" and back.attempts == 2


def test_in_flight_and_is_held(store):
    submit(store)
    assert store.in_flight() == []
    item = claim(store, "p1", LEASE, utcnow())
    assert [i.id for i in store.in_flight()] == [item.id]
    assert store.is_held(item.id, "p1") and not store.is_held(item.id, "p2")


CHANNELS = ["webhook:http://127.0.0.1:9/hook", "email:ops@example.com"]


def run_to_end(store, bulk, t, fail=()):
    for n in range(bulk.total_items):
        item = claim(store, "p1", LEASE, t)
        outcome = Outcome(ItemStatus.failed, error="bad") if n in fail else Outcome(ItemStatus.completed)
        counts = store.finish_item(item.id, "p1", outcome, t)
    return counts


def test_the_end_writes_an_outbox_once(store):
    bulk = submit(store, 10, notify=CHANNELS)
    t = utcnow()
    assert store.open_outboxes() == []
    assert run_to_end(store, bulk, t).ended_now
    got = store.get_bulk(bulk.id)
    box = got.outbox
    assert box["kind"] == "bulk_job.completed" and box["event"] is None
    assert [s["channel"] for s in box["steps"]] == CHANNELS
    assert all(s["state"] == "pending" and s["attempts"] == 0 for s in box["steps"])
    assert [b.id for b in store.open_outboxes()] == [bulk.id]
    assert [b.id for b in store.pending_hooks(t - dt.timedelta(seconds=1))] == [bulk.id]
    assert store.pending_hooks(t + dt.timedelta(seconds=1)) == []
    store.refresh_counters(bulk.id, t)
    assert store.get_bulk(bulk.id).outbox["event_id"] == box["event_id"]  # no second end


def test_cancel_writes_a_cancelled_outbox(store):
    bulk = submit(store, 10, notify=CHANNELS[:1])
    t = utcnow()
    assert store.cancel_bulk(bulk.id, t)
    box = store.get_bulk(bulk.id).outbox
    assert box["kind"] == "bulk_job.cancelled" and len(box["steps"]) == 1
    assert not store.cancel_bulk(bulk.id, t)
    assert store.get_bulk(bulk.id).outbox["event_id"] == box["event_id"]


def test_no_channels_no_open_outbox_but_a_hook(store):
    bulk = submit(store, 10)
    t = utcnow()
    run_to_end(store, bulk, t)
    assert store.open_outboxes() == []
    box = store.get_bulk(bulk.id).outbox
    assert box["steps"] == []
    assert store.claim_hook(bulk.id, box["event_id"])
    assert not store.claim_hook(bulk.id, box["event_id"])  # exactly once
    assert store.pending_hooks(t - dt.timedelta(seconds=1)) == []


def test_outbox_steps_are_sent_once(store):
    bulk = submit(store, 10, notify=CHANNELS)
    t = utcnow()
    run_to_end(store, bulk, t)
    event_id = store.get_bulk(bulk.id).outbox["event_id"]
    assert not store.set_event(bulk.id, "other-end", {"x": 1})
    assert store.set_event(bulk.id, event_id, {"event": "bulk_job.completed"})
    assert not store.set_event(bulk.id, event_id, {"event": "changed"})
    assert store.get_bulk(bulk.id).outbox["event"] == {"event": "bulk_job.completed"}
    # Step 0: two deliverers race; one wins. Its lock expires if it dies.
    assert store.claim_step(bulk.id, event_id, 0, "a", t, 30)
    assert not store.claim_step(bulk.id, event_id, 0, "b", t + dt.timedelta(seconds=29), 30)
    assert store.claim_step(bulk.id, event_id, 0, "b", t + dt.timedelta(seconds=31), 30)
    assert not store.finish_step(bulk.id, event_id, 0, "a", t, None, None)  # a lost it
    assert store.finish_step(bulk.id, event_id, 0, "b", t, None, None)
    assert not store.claim_step(bulk.id, event_id, 0, "c", t + dt.timedelta(days=1), 30)  # sent: never again
    # Step 1 fails, is retried later, then gives up.
    assert store.claim_step(bulk.id, event_id, 1, "a", t, 30)
    retry = t + dt.timedelta(seconds=5)
    assert store.finish_step(bulk.id, event_id, 1, "a", t, "connection refused", retry)
    assert not store.claim_step(bulk.id, event_id, 1, "a", t + dt.timedelta(seconds=4), 30)
    assert [b.id for b in store.open_outboxes()] == [bulk.id]
    assert store.claim_step(bulk.id, event_id, 1, "a", retry, 30)
    assert store.finish_step(bulk.id, event_id, 1, "a", retry, "still refused", None)
    box = store.get_bulk(bulk.id).outbox
    assert [(s["state"], s["attempts"]) for s in box["steps"]] == [("sent", 1), ("failed", 2)]
    assert box["steps"][1]["last_error"] == "still refused"
    assert store.open_outboxes() == []
    assert store.get_bulk(bulk.id).notified_at == retry


def test_a_new_round_gets_a_new_event(store):
    bulk = submit(store, 10, notify=CHANNELS[:1])
    t = utcnow()
    run_to_end(store, bulk, t, fail=(3,))
    first = store.get_bulk(bulk.id).outbox["event_id"]
    deliver_all(store, bulk.id, t)  # a new round starts only once the last end is delivered
    assert store.retry_failed(bulk.id, t) == 1
    item = claim(store, "p1", LEASE, t)
    assert store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), t).ended_now
    assert store.get_bulk(bulk.id).outbox["event_id"] != first


def test_sqlite_store_of_schema_1_is_migrated_to_the_current_one(tmp_path):
    import sqlite3

    from bulkgen_cli.store.sqlite import SCHEMA_VERSION, SqliteStore

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    bulk = submit(store, 10)
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    for statement in ("DROP INDEX bulk_jobs_urgent", "DROP INDEX bulk_jobs_turn", "DROP INDEX bulk_jobs_notify", "DROP INDEX bulk_jobs_hook", "DROP INDEX bulk_jobs_claim",
                      "DROP INDEX bulk_jobs_group", "ALTER TABLE bulk_jobs DROP COLUMN group_id",
                      "ALTER TABLE bulk_jobs DROP COLUMN priority", "ALTER TABLE bulk_jobs DROP COLUMN priority_rank",
                      "ALTER TABLE bulk_jobs DROP COLUMN not_before",
                      "ALTER TABLE bulk_jobs DROP COLUMN outbox",
                      "ALTER TABLE bulk_jobs DROP COLUMN notify_pending",
                      "ALTER TABLE bulk_jobs DROP COLUMN hook_pending", "ALTER TABLE generation_jobs DROP COLUMN fence",
                      "DROP TABLE counters", "DROP TABLE templates", "DROP TABLE turns",
                      "ALTER TABLE bulk_jobs DROP COLUMN quality", "ALTER TABLE bulk_jobs DROP COLUMN quality_ratio",
                      "ALTER TABLE bulk_jobs DROP COLUMN flagged_items",
                      "ALTER TABLE bulk_jobs DROP COLUMN quality_summary",
                      "ALTER TABLE bulk_jobs DROP COLUMN turned_down_items",
                      "ALTER TABLE generation_jobs DROP COLUMN verdict",
                      "DROP TABLE schedule_occurrences", "DROP TABLE schedules",
                      "ALTER TABLE bulk_jobs DROP COLUMN notify_policy",
                      "ALTER TABLE generation_jobs DROP COLUMN sent_at",
                      "DROP INDEX bulk_jobs_usage", "ALTER TABLE bulk_jobs DROP COLUMN stored_bytes",
                      "PRAGMA user_version = 1"):
        db.execute(statement)
    db.close()
    store = SqliteStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 11
        assert store.get_bulk(bulk.id).total_items == 10
        assert run_to_end(store, store.get_bulk(bulk.id), utcnow()).ended_now
        assert store.get_bulk(bulk.id).outbox is not None
        assert store.list_schedules() == [] and store.next_schedule_at() is None
    finally:
        store.close()


def test_sqlite_claim_uses_indexes_with_many_finished_jobs(tmp_path):
    """Regression: the claim used to walk every bulk job in creation order (found by bench/bench_huey.py).

    Each of the claim's lookups (an urgent job, the next user's turn, the first user's) is a search or
    a walk of a partial index over claimable jobs only, stopping at the first hit: no sort, no finished job.
    """
    from bulkgen_cli.store.sqlite import (
        CLAIM_FIRST_TURN_SQL, CLAIM_ITEM_SQL, CLAIM_TURN_SQL, CLAIM_URGENT_SQL, SqliteStore,
    )

    store = SqliteStore(tmp_path / "big.db")
    try:
        t = utcnow()
        for n in range(200):
            bulk = submit(store, 10, user=f"user{n % 7}", created_at=t + dt.timedelta(milliseconds=n))
            if n % 10:
                store.db.execute("UPDATE bulk_jobs SET status = 'completed' WHERE id = ?", (bulk.id,))
        store.db.execute("ANALYZE")

        def plan(sql, *args):
            return " ".join(r[3] for r in store.db.execute("EXPLAIN QUERY PLAN " + sql, args))

        urgent, turn = plan(CLAIM_URGENT_SQL, -1, "2026"), plan(CLAIM_TURN_SQL, "user3", "2026")
        first = plan(CLAIM_FIRST_TURN_SQL, "2026")
        item_plan = plan(CLAIM_ITEM_SQL, bulk.id)
        assert "SEARCH b USING INDEX bulk_jobs_urgent (priority_rank=?)" in urgent
        assert "SEARCH b USING INDEX bulk_jobs_turn (userId>?)" in turn
        assert "SCAN b USING INDEX bulk_jobs_turn" in first  # partial: claimable jobs only, first hit ends it
        assert not any("TEMP B-TREE" in p for p in (urgent, turn, first))
        assert "INDEX generation_jobs_queue (bulk_job_id=? AND status=?)" in item_plan
        assert "TEMP B-TREE" not in item_plan
        partial = dict(store.db.execute("SELECT name, sql FROM sqlite_master WHERE name LIKE 'bulk_jobs_%'"))
        assert "WHERE status IN ('queued', 'processing')" in partial["bulk_jobs_turn"]
        assert "WHERE status IN ('queued', 'processing')" in partial["bulk_jobs_urgent"]
    finally:
        store.close()


def test_claims_go_by_priority_then_fifo(store):
    t = utcnow()
    low = submit(store, 10, created_at=t, prefix="Low", priority="low")
    normal = submit(store, 10, created_at=t + dt.timedelta(seconds=1), prefix="Normal")
    high = submit(store, 10, created_at=t + dt.timedelta(seconds=2), prefix="High", priority="high")
    high2 = submit(store, 10, created_at=t + dt.timedelta(seconds=3), prefix="High2", priority="high")
    order = []
    for _ in range(40):
        item = claim(store, "p", LEASE, t)
        order.append(item.bulk_job_id)
        store.finish_item(item.id, "p", Outcome(ItemStatus.completed), t)
    assert order == [high.id] * 10 + [high2.id] * 10 + [normal.id] * 10 + [low.id] * 10
    assert store.get_bulk(high.id).priority == "high" and store.get_bulk(normal.id).priority == "normal"


def claim_and_finish(store, t, owner="p1"):
    """One claim by `owner`, finished at once: (the user, the job, the item's position), or None."""
    item = claim(store, owner, LEASE, t)
    if item is None:
        return None
    store.finish_item(item.id, owner, Outcome(ItemStatus.completed), t)
    return item.userId, item.bulk_job_id, item.queue_position


def test_users_take_turns_whatever_one_users_priorities(store):
    """Fair turns: A's ten earlier jobs (three high) do not hold B's one job; within A, priority then FIFO."""
    t = utcnow()
    a = [submit(store, 2, user="alice", created_at=t + dt.timedelta(seconds=n), prefix=f"A{n}",
                priority="high" if n in (3, 6, 9) else "normal") for n in range(10)]
    b = submit(store, 3, user="bob", created_at=t + dt.timedelta(seconds=20), prefix="B")
    seen = [claim_and_finish(store, t) for _ in range(23)]
    assert ("bob", b.id, 1) in seen[:2]
    a_order = [a[3], a[6], a[9]] + [job for n, job in enumerate(a) if n not in (3, 6, 9)]
    alice = [("alice", job.id, p) for job in a_order for p in (1, 2)]
    bob = [("bob", b.id, p) for p in (1, 2, 3)]
    assert seen == [alice[0], bob[0], alice[1], bob[1], alice[2], bob[2], *alice[3:]]
    assert claim(store, "p1", LEASE, t) is None


def test_an_urgent_job_goes_ahead_of_every_turn_and_takes_none(store):
    t = utcnow()
    a = submit(store, 3, user="alice", created_at=t, prefix="A", priority="high")
    b = submit(store, 3, user="bob", created_at=t + dt.timedelta(seconds=1), prefix="B")
    assert claim_and_finish(store, t) == ("alice", a.id, 1)
    urgent = submit(store, 2, user="carol", created_at=t + dt.timedelta(seconds=2), prefix="U", priority="urgent")
    urgent2 = submit(store, 1, user="alice", created_at=t + dt.timedelta(seconds=3), prefix="U2", priority="urgent")
    seen = [claim_and_finish(store, t) for _ in range(9)]
    assert seen[:3] == [("carol", urgent.id, 1), ("carol", urgent.id, 2), ("alice", urgent2.id, 1)]
    # The turns go on where they were: bob's, since alice had the last one.
    assert seen[3:] == [("bob", b.id, 1), ("alice", a.id, 2), ("bob", b.id, 2), ("alice", a.id, 3),
                        ("bob", b.id, 3), None]
    assert store.get_bulk(urgent.id).priority == "urgent"


def test_turns_skip_users_whose_jobs_wait_are_paused_or_cancelled(store):
    t = utcnow()
    a = submit(store, 4, user="alice", created_at=t, prefix="A")
    paused = submit(store, 2, user="bob", created_at=t, prefix="P", priority="high")
    cancelled = submit(store, 2, user="carl", created_at=t, prefix="C", priority="urgent")
    waiting = submit(store, 2, user="dora", created_at=t, prefix="W", not_before=t + dt.timedelta(hours=1))
    assert store.set_bulk_state(paused.id, [BulkStatus.queued], BulkStatus.paused, t)
    assert store.cancel_bulk(cancelled.id, t)
    assert [claim_and_finish(store, t) for _ in range(2)] == [("alice", a.id, 1), ("alice", a.id, 2)]
    assert store.set_bulk_state(paused.id, [BulkStatus.paused], BulkStatus.queued, t)
    later_on = t + dt.timedelta(hours=2)
    assert [claim_and_finish(store, later_on) for _ in range(6)] == [
        ("bob", paused.id, 1), ("dora", waiting.id, 1), ("alice", a.id, 3), ("bob", paused.id, 2),
        ("dora", waiting.id, 2), ("alice", a.id, 4)]
    assert all(i.status == "cancelled" for i in store.list_items(cancelled.id))


def test_nothing_is_claimed_before_not_before(store):
    t = utcnow()
    later_job = submit(store, 10, created_at=t, not_before=t + dt.timedelta(hours=2))
    assert store.get_bulk(later_job.id).not_before == t + dt.timedelta(hours=2)
    assert claim(store, "p", LEASE, t) is None
    assert store.next_start(t) == t + dt.timedelta(hours=2)
    now_job = submit(store, 10, created_at=t + dt.timedelta(seconds=1))
    assert claim(store, "p", LEASE, t).bulk_job_id == now_job.id  # the later one waits, others go on
    store.release_item(store.in_flight()[0].id, "p")
    due = t + dt.timedelta(hours=2)
    assert claim(store, "p", LEASE, due).bulk_job_id == later_job.id  # older, and due now
    assert store.next_start(due) is None



def test_list_by_group(store):
    t = utcnow()
    parts = []
    for n in range(3):
        bulk = BulkJob(id=new_id(), userId="u", mode="topic", name=f"part {n}", status="queued", total_items=10,
                       created_at=t + dt.timedelta(seconds=n), group_id="g1")
        store.create_bulk(bulk, articles(10))
        parts.append(bulk.id)
    submit(store, 10)
    assert [b.id for b in store.list_bulks(group_id="g1")] == parts[::-1]
    assert store.get_bulk(parts[0]).group_id == "g1"


def test_processor_lease_slots(store):
    t = utcnow()
    assert [store.acquire_processor_lease(o, 10, t, "h", 1, slots=3) for o in "abcd"] == [True, True, True, False]
    assert store.acquire_processor_lease("b", 10, t + dt.timedelta(seconds=5), "h", 1, slots=3)  # renew
    store.release_processor_lease("a")
    assert store.acquire_processor_lease("d", 10, t, "h", 1, slots=3)  # a's slot is free now
    assert not store.acquire_processor_lease("e", 10, t + dt.timedelta(seconds=9), "h", 1, slots=3)
    assert store.acquire_processor_lease("e", 10, t + dt.timedelta(seconds=11), "h", 1, slots=3)  # one expired
    # With one slot the store stays sequential even though others hold more.
    assert not store.acquire_processor_lease("f", 10, t + dt.timedelta(seconds=11), "h", 1, slots=1)


def test_shared_cooldown_only_grows(store):
    t = utcnow()
    assert store.cooldown_until() is None
    store.set_cooldown(t + dt.timedelta(seconds=30))
    store.set_cooldown(t + dt.timedelta(seconds=5))
    assert store.cooldown_until() == t + dt.timedelta(seconds=30)
    store.set_cooldown(t + dt.timedelta(seconds=60))
    assert store.cooldown_until() == t + dt.timedelta(seconds=60)


def test_processor_leases_lists_every_slot(store):
    t = utcnow()
    store.set_cooldown(t)
    for owner in "ab":
        store.acquire_processor_lease(owner, 10, t, "h", 7, slots=2)
    assert sorted(lease.owner for lease in store.processor_leases()) == ["a", "b"]


def test_an_owner_that_gave_up_its_slot_claims_nothing_beside_its_item(store):
    """Found by the long stateful run on MongoDB: A gives up its slot while its item is in flight,
    B takes that slot over, A takes another slot: A must not claim a second item."""
    submit(store, 10)
    t = utcnow()
    first = claim(store, "A", LEASE, t, max_in_flight=3)
    assert first is not None
    store.release_processor_lease("A")
    claim(store, "B", LEASE, t, max_in_flight=3)  # B takes a slot, maybe A's former one, and maybe an item
    assert claim(store, "A", LEASE, t, max_in_flight=3) is None
    assert [i.id for i in store.in_flight() if i.lease_owner == "A"] == [first.id]


def deliver_all(store, bulk_id, t):
    """Every step of the job's open outbox sent and recorded (a deliverer's work, without the sending)."""
    box = store.get_bulk(bulk_id).outbox
    for index in range(len(box["steps"])):
        assert store.claim_step(bulk_id, box["event_id"], index, "deliverer", t, 30)
        assert store.finish_step(bulk_id, box["event_id"], index, "deliverer", t, None, None)


def test_retry_failed_waits_for_the_last_ends_notification_in_its_own_write(store):
    """The store's verb decides it, not only its caller's earlier read: an end whose notification is still
    open is never replaced by a new round's (it would be lost)."""
    bulk = submit(store, 10, notify=CHANNELS)
    t = utcnow()
    assert run_to_end(store, bulk, t, fail=(3,)).ended_now
    assert store.retry_failed(bulk.id, t) == 0  # the end's notification is open
    assert store.get_bulk(bulk.id).status == "completed"
    assert [i.status for i in store.list_items(bulk.id)].count("failed") == 1
    deliver_all(store, bulk.id, t)
    assert store.retry_failed(bulk.id, t) == 1
    assert store.get_bulk(bulk.id).status == "queued"


# -- quotas: the check and the insert in one atomic step (design.md, "Quotas") ---------------------------------


def quota_job(user: str = "alice", key: str | None = None, stored: int = 100) -> BulkJob:
    return BulkJob(id=new_id(), userId=user, mode="topic", name="quota", status=BulkStatus.queued.value,
                   total_items=2, created_at=utcnow(), idempotency_key=key, stored_bytes=stored)


def test_create_bulk_with_limits_refuses_past_them_and_stores_nothing(store):
    from bulkgen_cli.core.errors import QuotaExceeded
    from bulkgen_cli.store.rules import Quota

    limits = Quota(max_active_jobs=2, max_stored_bytes=1000)
    made = [store.create_bulk(quota_job(key=f"k{n}"), articles(2), limits)[0] for n in range(2)]
    with pytest.raises(QuotaExceeded) as refused:
        store.create_bulk(quota_job(key="k2"), articles(2), limits)
    assert (refused.value.which, refused.value.have, refused.value.limit) == ("active_jobs", 2, 2)
    replay, created = store.create_bulk(quota_job(key="k1"), articles(2), limits)  # a replay at the limit
    assert (replay.id, created) == (made[1].id, False)
    store.cancel_bulk(made[0].id, utcnow())  # one active now, 200 bytes stored
    with pytest.raises(QuotaExceeded) as big:
        store.create_bulk(quota_job(key="k3", stored=801), articles(2), limits)
    assert (big.value.which, big.value.have, big.value.adds) == ("stored_bytes", 200, 801)
    fits, created = store.create_bulk(quota_job(key="k2", stored=800), articles(2), limits)  # k2 was given back
    assert created and store.usage("alice").active_jobs == 2
    assert store.create_bulk(quota_job("bob"), articles(2), limits)[1]  # another user's own limit
    assert len(store.list_bulks("alice")) == 3 and store.get_bulk(fits.id) is not None


def test_many_writers_at_once_never_pass_the_active_jobs_limit(tmp_path):
    """Eight connections to one real SQLite file, started together, each submitting four jobs."""
    from tests.conftest import at_once

    from bulkgen_cli.core.errors import QuotaExceeded
    from bulkgen_cli.store.rules import Quota
    from bulkgen_cli.store.sqlite import SqliteStore

    path = tmp_path / "quota.db"
    SqliteStore(path).close()

    def writer(ready) -> list[str]:
        outcomes = []
        with SqliteStore(path) as store:
            ready()
            for _ in range(4):
                try:
                    store.create_bulk(quota_job(), articles(2), Quota(max_active_jobs=5))
                    outcomes.append("stored")
                except QuotaExceeded:
                    outcomes.append("refused")
        return outcomes

    outcomes = [outcome for each in at_once([writer] * 8) for outcome in each]
    assert sorted(outcomes) == ["refused"] * 27 + ["stored"] * 5
    with SqliteStore(path, "read") as store:
        assert store.usage("alice").active_jobs == 5
