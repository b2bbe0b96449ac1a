"""The primitives `store/queue.py` writes every verb over, alike on both backends: the `rules.Where` language,
conditional updates and their counts, insert-if-absent (design.md, "Policy once, primitives per backend")."""

from __future__ import annotations

import datetime as dt

from bulkgen_cli.core.model import BulkStatus, ItemStatus, Outcome, new_id
from bulkgen_cli.store.rules import Change, Cmp
from tests.conftest import claim, submit

T0 = dt.datetime(2021, 6, 1, 8, 0, tzinfo=dt.timezone.utc)


def ids(rows):
    return [r["id"] for r in rows]


def test_where_equals_one_of_compares_ranges_and_alternatives(store):
    jobs = [submit(store, 1, user=user, created_at=T0 + dt.timedelta(minutes=n))
            for n, user in enumerate(["ann", "bob", "cy", "dee"])]
    assert store.set_bulk_state(jobs[1].id, [BulkStatus.queued], BulkStatus.paused, T0)
    by_time = ["created_at", "id"]
    assert ids(store._find("bulks", {"userId": "bob"})) == [jobs[1].id]
    assert ids(store._find("bulks", {"status": ("queued", "paused")}, by_time)) == [j.id for j in jobs]
    assert ids(store._find("bulks", {"group_id": None}, ["-created_at"], limit=2)) == [jobs[3].id, jobs[2].id]
    assert ids(store._find("bulks", {"userId": Cmp("ne", "ann"), "status": "queued"}, by_time)) == [
        jobs[2].id, jobs[3].id]
    window = [Cmp("gte", T0 + dt.timedelta(minutes=1)), Cmp("lt", T0 + dt.timedelta(minutes=3))]
    assert ids(store._find("bulks", {"created_at": window}, by_time)) == [jobs[1].id, jobs[2].id]
    either = [{"userId": "ann"}, {"status": "paused"}]
    assert ids(store._find("bulks", either, by_time)) == [jobs[0].id, jobs[1].id]
    assert store._find("bulks", {"id": "not-an-id"}) == [] and store._update("bulks", {"id": "x"}, {"name": "n"}) == 0


def test_a_conditional_update_counts_what_it_matched_and_reads_back_plain_values(store):
    bulk = submit(store, 3, created_at=T0)
    items = store.list_items(bulk.id)
    queued = {"bulk_job_id": bulk.id, "status": ItemStatus.queued.value}
    assert store._update("items", {**queued, "queue_position": Cmp("gt", 1)}, Change({"error": "x"}, {"attempts": 2}),
                         T0) == 2
    assert store._update("items", {"id": items[0].id, "status": ItemStatus.failed.value}, {"error": "y"}) == 0
    rows = store._find("items", {"bulk_job_id": bulk.id}, ["queue_position"], fields=["id", "attempts", "error"])
    assert [(r["id"], r["attempts"], r["error"]) for r in rows] == [
        (items[0].id, 0, None), (items[1].id, 2, "x"), (items[2].id, 2, "x")]
    job = store._first("bulks", {"id": bulk.id})
    assert job["created_at"] == T0 and job["notify"] == [] and job["id"] == bulk.id


def test_fields_inside_a_json_field_are_read_and_written_in_place(store):
    bulk = submit(store, 1, created_at=T0, notify=["webhook:http://127.0.0.1:9/a", "webhook:http://127.0.0.1:9/b"])
    item = claim(store, "p1", 30.0, T0)
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), T0)
    outbox = store.get_bulk(bulk.id).outbox
    step = {"outbox.event_id": outbox["event_id"], "outbox.steps.1.state": outbox["steps"][1]["state"]}
    assert store._update("bulks", {"id": bulk.id, **step}, {"outbox.steps.1.owner": "me",
                                                            "outbox.event": {"k": [1, 2]}}) == 1
    assert store._update("bulks", {"id": bulk.id, "outbox.steps.1.owner": "someone else"}, {"name": "n"}) == 0
    after = store.get_bulk(bulk.id).outbox
    assert after["steps"][1]["owner"] == "me" and after["steps"][0]["owner"] is None
    assert after["event"] == {"k": [1, 2]} and after["steps"][0] == outbox["steps"][0]


def test_insert_if_absent_stores_once_and_delete_counts(store):
    token = {"id": new_id(), "userId": "ann", "token_hash": "h1", "admin": True, "email": None,
             "created_at": T0, "revoked_at": None}
    assert store._insert_new("tokens", token)
    assert not store._insert_new("tokens", {**token, "token_hash": "h2"})  # the same id
    assert not store._insert_new("tokens", {**token, "id": new_id()})  # the same hash (a unique index)
    assert store.token_by_hash("h1").admin is True
    assert store._delete("tokens", {"userId": "ann"}) == 1 and store._delete("tokens", {"userId": "ann"}) == 0
