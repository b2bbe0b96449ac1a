"""The store's decisions (store/rules.py), without a store: both backends write exactly these."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from bulkgen_cli.core.model import (
    BulkJob, BulkStatus, Counts, EventKind, Item, ItemStatus, Outcome, StepState, iso, new_id, new_outbox,
)
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import Lease

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)


def same(value):
    return value


def a_bulk(**changes) -> BulkJob:
    bulk = BulkJob(id=new_id(), userId="alice", mode="topic", name="job", status="queued", total_items=2,
                   created_at=T0, notify=["webhook:https://example.com/h"], idempotency_key="k1",
                   priority="high", not_before=T0 + dt.timedelta(hours=1), group_id="g1")
    return dataclasses.replace(bulk, **changes)


# -- the field tables and the record mapping ---------------------------------------------------------


@pytest.mark.parametrize("cls, fields", [(BulkJob, rules.BULK_FIELDS), (Item, rules.ITEM_FIELDS),
                                         (Lease, rules.LEASE_FIELDS)])
def test_each_record_field_is_in_its_table_once(cls, fields):
    names = [f.name for f in fields]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(cls)) and len(set(names)) == len(names)


def test_a_record_reads_each_kind_and_defaults_what_is_absent():
    values = {"id": 7, "bulk_job_id": "b", "userId": "u", "mode": "topic", "article": '{"topic": "x"}',
              "status": "queued", "queue_position": 1, "created_at": "T", "result": None, "extra": "ignored"}
    item = rules.record(Item, rules.ITEM_FIELDS, values, time=lambda v: ("time", v), json=lambda v: ("json", v))
    assert item.id == "7"  # text
    assert item.article == ("json", '{"topic": "x"}') and item.created_at == ("time", "T")
    assert item.result is None and item.retry_count == 0 and item.attempts == 0 and item.fence is None
    with pytest.raises(KeyError):
        rules.record(Item, rules.ITEM_FIELDS, {k: v for k, v in values.items() if k != "status"}, same, same)


def test_a_json_field_stored_as_none_takes_a_fresh_default():
    values = {"id": "1", "userId": "u", "mode": "topic", "status": "queued", "total_items": 1,
              "error_summary": None}
    first = rules.record(BulkJob, rules.BULK_FIELDS, values, same, same)
    second = rules.record(BulkJob, rules.BULK_FIELDS, values, same, same)
    assert first.error_summary == [] and first.notify == [] and first.name == "" and first.priority == "normal"
    assert first.error_summary is not second.error_summary


def test_a_new_bulk_job_keeps_what_was_submitted_and_starts_the_rest_fresh():
    bulk = a_bulk(completed_items=3, started_at=T0, error_summary=["stale"], priority="high")
    fields = rules.new_bulk(bulk)
    assert fields["priority"] == "high" and fields["priority_rank"] == 0
    assert fields["notify_pending"] is False and fields["hook_pending"] is False
    assert fields["notify"] == bulk.notify and fields["notify"] is not bulk.notify
    stored = rules.record(BulkJob, rules.BULK_FIELDS, fields, same, same)
    assert stored == dataclasses.replace(bulk, completed_items=0, started_at=None, error_summary=[])


def test_a_new_item_is_queued_at_its_place_with_every_field():
    bulk = a_bulk()
    fields = rules.new_item(bulk, {"topic": "x", "id": "a-1"}, 4)
    assert set(fields) == {f.name for f in rules.ITEM_FIELDS}
    item = rules.record(Item, rules.ITEM_FIELDS, fields, same, same)
    assert (item.bulk_job_id, item.userId, item.mode, item.status, item.queue_position) == (
        bulk.id, "alice", "topic", "queued", 4)
    assert item.created_at == T0 and item.article == {"topic": "x", "id": "a-1"} and item.item_id == "a-1"
    assert (item.retry_count, item.attempts, item.lease_owner, item.fence) == (0, 0, None, None)
    assert rules.new_item(bulk, {}, 1)["id"] != rules.new_item(bulk, {}, 1)["id"]


# -- items ------------------------------------------------------------------------------------------


def test_a_claim_holds_the_item_under_its_token_and_counts_a_try():
    change = rules.claimed("p1", T0 + dt.timedelta(seconds=30), T0, 42)
    assert change.set == {"status": "processing", "lease_owner": "p1", "lease_expires_at": T0 + dt.timedelta(seconds=30),
                          "started_at": T0, "error": None, "fence": 42, "sent_at": None}
    assert change.add == {"attempts": 1}
    # A local generator's claim is its send.
    assert rules.claimed("p1", T0, T0, 42, sent=True).set["sent_at"] == T0
    assert rules.job_started(T0) == (({"status": "queued"}, {"status": "processing"}),
                                     ({"started_at": None}, {"started_at": T0}))


def test_finish_and_release_clear_the_lease():
    done = rules.finished(Outcome(ItemStatus.completed, {"content": "x"}), T0)
    assert done.set == {"status": "completed", "result": {"content": "x"}, "error": None, "completed_at": T0,
                        "lease_owner": None, "lease_expires_at": None} and not done.add
    assert rules.released(charge=False).add == {"attempts": -1}
    assert rules.released(charge=True).add == {}
    assert rules.released(charge=True).set == {"status": "queued", "lease_owner": None, "lease_expires_at": None,
                                               "started_at": None, "sent_at": None}
    assert rules.ONE_MORE_TRY.add == {"attempts": 1, "retry_count": 1}
    assert rules.held("p1") == {"status": "processing", "lease_owner": "p1"}


def test_a_reply_in_hand_is_recorded_while_no_newer_claim_holds_the_item():
    assert rules.answerable("p1", 42) == {"fence": 42, "status": ("processing", "queued")}
    assert rules.answerable("p1", None) == rules.held("p1")


def test_the_check_before_a_send_marks_the_try_sent_and_a_new_try_clears_it():
    assert rules.renewed(T0, T0).set == {"lease_expires_at": T0}
    assert rules.renewed(T0 + dt.timedelta(seconds=9), T0, sent=True).set == {
        "lease_expires_at": T0 + dt.timedelta(seconds=9), "sent_at": T0}
    assert rules.one_more_try().set == {"sent_at": None} and rules.one_more_try().add == {"attempts": 1, "retry_count": 1}
    assert rules.one_more_try(None, T0).set == {"sent_at": T0}


@pytest.mark.parametrize("attempts", [1, 3, 9])
def test_an_expired_try_never_sent_goes_back_uncounted(attempts):
    change = rules.expired("processing", attempts, 3, T0, sent=False)
    assert change.set["status"] == "queued" and change.set["sent_at"] is None
    assert change.add == {"attempts": -1}
    assert rules.expired("cancelled", attempts, 3, T0, sent=False).set["status"] == "cancelled"


@pytest.mark.parametrize("bulk_status, attempts, status, retry", [
    ("cancelled", 1, "cancelled", 0),
    ("cancelled", 9, "cancelled", 0),
    ("processing", 3, "failed", 0),
    ("paused", 2, "queued", 1),
    (None, 0, "queued", 1),
])
def test_an_expired_item_is_cancelled_failed_or_queued_again(bulk_status, attempts, status, retry):
    change = rules.expired(bulk_status, attempts, 3, T0)
    assert change.set["status"] == status and change.add.get("retry_count", 0) == retry
    assert change.set["lease_owner"] is None and change.set["lease_expires_at"] is None
    if status == "failed":
        assert change.set["error"] == rules.lease_lost_error(3) and change.set["completed_at"] == T0
    if status == "queued":
        assert change.set["started_at"] is None and "completed_at" not in change.set


def test_a_cancel_sweeps_queued_items_first_and_marks_the_one_in_flight():
    (first, queued), (second, in_flight) = rules.cancel_sweeps(T0)
    assert (first, second) == (ItemStatus.queued, ItemStatus.processing)
    assert queued.set == {"status": "cancelled", "completed_at": T0, "lease_owner": None, "lease_expires_at": None}
    assert in_flight.set == {**queued.set, "error": rules.CANCELLED_IN_FLIGHT}


def test_retry_failed_starts_a_new_round():
    assert (rules.RETRY_FROM, rules.RETRIED) == (BulkStatus.completed, ItemStatus.failed)
    assert rules.RETRIED_ITEM.set == {"status": "queued", "attempts": 0, "error": None, "result": None,
                                      "started_at": None, "completed_at": None}
    assert rules.RETRIED_ITEM.add == {"retry_count": 1}
    assert rules.RETRIED_JOB == {"status": "queued", "completed_at": None}


# -- counters and the end ------------------------------------------------------------------------------


def test_tally_counts_by_status_and_weighs_the_mean_duration():
    counts, mean = rules.tally({"queued": (4, None), "completed": (3, 2.0), "failed": (1, 6.0), "cancelled": (2, 9.0)})
    assert counts == Counts(queued=4, completed=3, failed=1, cancelled=2)
    assert mean == pytest.approx(3.0)  # (3 * 2 + 1 * 6) / 4; cancelled items do not count
    assert rules.tally({"queued": (2, None)}) == (Counts(queued=2), None)


def test_counters_hold_the_counts_the_error_summary_and_the_eta():
    failed = [Item(id="i", bulk_job_id="b", userId="u", mode="topic", article={"topic": "T"}, status="failed",
                   queue_position=5, error="HTTP 400: bad")]
    fields = rules.counters(Counts(queued=2, completed=1, failed=1), failed, 2.0, T0, 1.0)
    assert fields == {"completed_items": 1, "failed_items": 1, "cancelled_items": 0,
                      "error_summary": ["#5 T: HTTP 400: bad"], "estimated_completion": T0 + dt.timedelta(seconds=6),
                      "turned_down_items": 0}
    gated = [dataclasses.replace(failed[0], error="quality: 612 of 1500 words")]
    assert rules.counters(Counts(failed=1), gated, 2.0, T0, 1.0)["turned_down_items"] == 1  # the gate's failure
    assert rules.counters(Counts(completed=1), [], 2.0, T0, 1.0)["estimated_completion"] is None


@pytest.mark.parametrize("kind, status", [(EventKind.completed, "completed"), (EventKind.cancelled, "cancelled")])
def test_an_end_records_its_status_and_outbox(kind, status):
    fields = rules.end_fields(kind, ["webhook:https://example.com/h"], T0)
    assert fields["status"] == status and fields["completed_at"] == T0 and fields["estimated_completion"] is None
    assert fields["notify_pending"] is True and fields["hook_pending"] is True and fields["notified_at"] is None
    assert fields["outbox"]["kind"] == kind.value and len(fields["outbox"]["steps"]) == 1
    assert rules.end_fields(kind, [], T0)["notify_pending"] is False
    assert rules.ENDS_FROM == (BulkStatus.queued, BulkStatus.processing, BulkStatus.paused)


# -- the outbox's steps --------------------------------------------------------------------------------


def test_a_step_is_claimable_when_due_or_when_its_lock_expired():
    outbox = new_outbox(EventKind.completed, ["a", "b"], T0)
    step = outbox["steps"][0]
    assert rules.step_claimable(step, T0) and not rules.step_claimable(step, T0 - dt.timedelta(seconds=1))
    step.update(rules.step_taken("d1", T0, 10))
    assert step["state"] == "sending" and step["owner"] == "d1" and step["lock_until"] == iso(T0 + dt.timedelta(seconds=10))
    assert not rules.step_claimable(step, T0 + dt.timedelta(seconds=10))
    assert rules.step_claimable(step, T0 + dt.timedelta(seconds=11))
    assert rules.matches(step, rules.step_held_conditions("d1")) and not rules.matches(step, rules.step_held_conditions("d2"))


def test_delivery_flags_follow_the_steps():
    outbox = new_outbox(EventKind.completed, ["a", "b"], T0)
    assert rules.delivery_flags(outbox, T0) == {"notify_pending": True}
    outbox["steps"][0].update(rules.step_result(outbox["steps"][0], T0, None, None))
    outbox["steps"][1].update(rules.step_result(outbox["steps"][1], T0, "refused", None))
    assert outbox["steps"][0]["state"] == StepState.sent.value and outbox["steps"][1]["state"] == StepState.failed.value
    assert rules.delivery_flags(outbox, T0) == {"notify_pending": False, "notified_at": T0}
    assert rules.delivery_flags(outbox, None) == {"notify_pending": False}
    outbox["steps"][0]["state"] = StepState.failed.value
    assert rules.delivery_flags(outbox, T0) == {"notify_pending": False}  # nothing was sent
