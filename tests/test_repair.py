"""Repair (design.md, "Repair"): jobs whose stored state disagrees with their items, on both stores.

Each state below is one a crash can leave (MongoDB between two single-document
writes; SQLite between two transactions of separate verbs), made here by
writing the store directly, as the crash would have left it.
"""

from __future__ import annotations

import datetime as dt

from bulkgen_cli.store import repair
from bulkgen_cli.content.offline import OfflineGenerator
from bulkgen_cli.core.model import BulkStatus, ItemStatus, Outcome, iso, utcnow
from bulkgen_cli.engine.processor import BulkEnded, Processor
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.store.sqlite import SqliteStore
from tests.conftest import claim, submit

LEASE = 30.0


def force(store, table: str, record_id: str, fields: dict) -> None:
    """Write fields of one record directly, as a crash between two writes leaves them."""
    if isinstance(store, SqliteStore):
        names = ", ".join(f"{k} = ?" for k in fields)
        values = [iso(v) if isinstance(v, dt.datetime) else v for v in fields.values()]
        store.db.execute(f"UPDATE {table} SET {names} WHERE id = ?", (*values, record_id))
        store.db.commit()
    else:
        from bson import ObjectId

        collection = store.items if table == "generation_jobs" else store.bulks
        collection.update_one({"_id": ObjectId(record_id)}, {"$set": fields})


def half_recorded_end(store, n: int = 3):
    """A job whose last item's end was written and whose counters and end were not (the issue's crash)."""
    bulk = submit(store, n, notify=["webhook:http://127.0.0.1:9/hook"])
    t = utcnow()
    for _ in range(n - 1):
        item = claim(store, "p1", LEASE, t)
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), t)
    last = claim(store, "p1", LEASE, t)
    # The item's end as finish_item writes it, and nothing after it (a crash between its two writes on MongoDB).
    force(store, "generation_jobs", last.id,
          {"status": "completed", "completed_at": t, "lease_owner": None, "lease_expires_at": None})
    return bulk, t


def test_a_job_whose_end_was_never_recorded_is_found_and_ended_once(store):
    bulk, t = half_recorded_end(store)
    stuck = store.get_bulk(bulk.id)
    assert stuck.status == "processing" and stuck.completed_items == 2 and stuck.outbox is None
    found = repair.look(store)
    assert [f.bulk.id for f in found] == [bulk.id]
    assert found[0].problem == "it is processing but none of its 3 items is pending: its end was never recorded"
    fixed = repair.repair(store, t)
    assert [(f.fixed, f.counts.ended_now) for f in fixed] == [(True, True)]
    job = store.get_bulk(bulk.id)
    assert job.status == "completed" and job.completed_items == 3 and job.completed_at == t
    assert job.outbox is not None and len(job.outbox["steps"]) == 1
    assert [b.id for b in store.open_outboxes()] == [bulk.id]
    assert repair.look(store, thorough=True) == []
    assert repair.repair(store, t) == []  # the end is recorded once


def test_a_cancelled_job_with_items_still_queued_is_swept(store):
    bulk = submit(store, 3)
    t = utcnow()
    assert store.cancel_bulk(bulk.id, t)
    store.refresh_counters(bulk.id, t)
    left = store.list_items(bulk.id)[1]
    force(store, "generation_jobs", left.id, {"status": "queued", "completed_at": None})  # the race of issue 17
    [finding] = repair.look(store)
    assert finding.problem == "it is cancelled but 1 item of it still wait or run"
    [done] = repair.repair(store, t)
    assert done.fixed and not done.counts.ended_now  # its end was the cancel's
    assert {i.status for i in store.list_items(bulk.id)} == {"cancelled"}
    assert store.get_bulk(bulk.id).cancelled_items == 3


def test_counters_off_in_an_ended_job_are_found_by_the_thorough_look_only(store):
    bulk = submit(store, 2)
    t = utcnow()
    for _ in range(2):
        item = claim(store, "p1", LEASE, t)
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), t)
    force(store, "bulk_jobs", bulk.id, {"completed_items": 1})
    assert repair.look(store) == []  # the routine look never reads finished jobs
    [finding] = repair.look(store, thorough=True)
    assert finding.problem == "its counters say 1 completed, 0 failed, 0 cancelled; its items say 2, 0, 0"
    [done] = repair.repair(store, t, thorough=True)
    assert done.fixed and not done.counts.ended_now
    assert store.get_bulk(bulk.id).completed_items == 2


def test_a_consistent_store_has_nothing_to_repair(store):
    running = submit(store, 3)
    paused = submit(store, 2)
    t = utcnow()
    claim(store, "p1", LEASE, t)
    assert store.set_bulk_state(paused.id, [BulkStatus.queued], BulkStatus.paused, t)
    assert repair.look(store, thorough=True) == []
    assert store.pending_bulk_ids() == sorted([running.id, paused.id])
    assert store.item_counts(running.id).pending == 3


def test_a_processor_finishes_a_half_recorded_end_at_start_and_reports_it(store):
    bulk, _ = half_recorded_end(store)
    events = []
    settings = RunSettings(delay=0.0, timeout=5.0, max_retries=2, backoff=0.01, lease=5.0, give_up=0.5)
    Processor(store, OfflineGenerator(), settings, on_event=events.append).run(until_idle=True)
    ended = [e for e in events if isinstance(e, BulkEnded)]
    assert [e.bulk.id for e in ended] == [bulk.id]
    assert store.get_bulk(bulk.id).status == "completed"


def test_reading_commands_never_show_running_when_nothing_is_pending(store):
    from bulkgen_cli.ops import jobs, watch
    from bulkgen_cli.cli import render

    bulk, _ = half_recorded_end(store)
    [(shown, _)] = jobs.status(store, bulk.id, None, "alice")
    [listed] = jobs.list_jobs(store, "alice")
    for job in (shown, listed):
        assert (job.status, job.completed_items, job.pending, job.estimated_completion) == ("completed", 3, 0, None)
        assert job.completed_at is None
    rows = dict(render.status_head(shown))
    assert rows["Status"] == "completed" and "ETA" not in rows
    assert rows["Ended"].startswith("not recorded yet: nothing of it is pending")
    assert render.bulk_dict(shown)["status"] == "completed"
    # `list --status processing` no longer lists it; `watch` sees it ended and returns.
    assert jobs.list_jobs(store, "alice", status_filter=BulkStatus.processing) == []
    assert [b.status for b in watch.follow(store, [bulk.id], lambda event: None, poll=0.01, timeout=5)] == ["completed"]
    assert store.get_bulk(bulk.id).status == "processing"  # a reading command writes nothing
    repair.repair(store, utcnow())
    [(recorded, _)] = jobs.status(store, bulk.id, None, "alice")
    assert recorded.completed_at is not None and "not recorded" not in dict(render.status_head(recorded))["Ended"]


def test_doctor_lists_then_fixes_and_says_so(cli, tmp_path):
    import json

    path = tmp_path / "doctor.db"
    with SqliteStore(path) as db:
        bulk, _ = half_recorded_end(db)
    env = {"BULKGEN_STORE": f"sqlite:///{path}"}
    found = cli("doctor", env=env)
    assert found.code == 1
    assert found.out.strip() == (f"Bulk job {bulk.id} (alice, 'Topic job'): it is processing but none of its 3 items "
                                 "is pending: its end was never recorded.")
    assert "`bulkgen doctor --fix` repairs it" in found.err
    doc = json.loads(cli("doctor", "--json", env=env).out)
    assert doc["left"] == 1 and [p["bulk_job_id"] for p in doc["problems"]] == [bulk.id]
    with SqliteStore(path) as db:
        assert db.get_bulk(bulk.id).status == "processing"  # without --fix nothing is written
    fixed = cli("doctor", "--fix", "--json", env=env)
    assert fixed.code == 0, fixed.err
    doc = json.loads(fixed.out)
    assert doc["left"] == 0 and doc["problems"][0]["fixed"] and doc["problems"][0]["ended_now"]
    assert "Notification webhook" in fixed.err  # its end's notification is delivered (here: refused, retried later)
    with SqliteStore(path) as db:
        assert db.get_bulk(bulk.id).status == "completed"
    again = cli("doctor", env=env)
    assert (again.code, again.out) == (0, "")
    assert "nothing to repair" in again.err


def test_the_routine_look_counts_only_jobs_whose_state_can_disagree(store):
    """A store of consistent jobs costs the routine look two reads and no count of any job's items."""
    ended, waiting = submit(store, 3), submit(store, 2)
    t = utcnow()
    for _ in range(3):  # FIFO: the first job's three items; it ends, the second waits untouched
        item = claim(store, "p1", LEASE, t)
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), t)
    counted = []
    real = store.item_counts
    store.item_counts = lambda bulk_id: counted.append(bulk_id) or real(bulk_id)
    assert repair.look(store) == [] and counted == []
    assert repair.look(store, thorough=True) == [] and sorted(counted) == sorted([ended.id, waiting.id])
