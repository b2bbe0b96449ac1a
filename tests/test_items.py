"""Single items: short ids, prefix lookup, show, item retry and item cancel (design.md, "Item state rules").

The state rules run on both stores through the library; processes, sockets and
terminals are real where the behaviour is about them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bulkgen_cli.ops import control, items
from bulkgen_cli.core.errors import InvalidTransition, NotFound, UsageError
from bulkgen_cli.ops.items import ItemAction
from bulkgen_cli.core.model import BulkJob, BulkStatus, ItemStatus, Outcome, new_id, utcnow
from bulkgen_cli.store import rules
from bulkgen_cli.store.rules import CANCELLED_IN_FLIGHT
from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import ROOT, env_for, finish, run_cli, status_of, submit_file
from tests.conftest import articles, claim, make_store, submit, wait_for
from tests.files import write_articles
from tests.receivers import WebhookReceiver
from tests.test_live_view import Terminal

LEASE = 30.0


def counters_true(store, bulk_id):
    """The job's counters equal its items' statuses (design.md, "Invariants", 1); returns the job."""
    bulk = store.get_bulk(bulk_id)
    by = {s.value: 0 for s in ItemStatus}
    for item in store.list_items(bulk_id):
        by[item.status] += 1
    assert (bulk.completed_items, bulk.failed_items, bulk.cancelled_items) == (by["completed"], by["failed"],
                                                                               by["cancelled"])
    return bulk


def finish_all(store, bulk_id, failing=()):
    """Process every queued item as processor p1: those at `failing` positions fail, the rest complete."""
    now = utcnow()
    while (item := claim(store, "p1", LEASE, now)) is not None:
        status = ItemStatus.failed if item.queue_position in failing else ItemStatus.completed
        store.finish_item(item.id, "p1", Outcome(status, error="HTTP 400" if status is ItemStatus.failed else None,
                                                 result=None if status is ItemStatus.failed else {"content": "x"}), now)
        store.refresh_counters(bulk_id, now)


def item_in(store, status: str):
    """A fresh job of 10 and its first item, brought into `status` (the others stay queued)."""
    bulk = submit(store, 10)
    first = store.list_items(bulk.id)[0]
    now = utcnow()
    if status == "cancelled":
        assert store.cancel_item(first.id, ItemStatus.queued, now) is not None
    elif status != "queued":
        held = claim(store, "p1", LEASE, now)
        assert held.id == first.id
        if status in ("completed", "failed"):
            store.finish_item(first.id, "p1", Outcome(ItemStatus(status), error="boom" if status == "failed" else None),
                              now)
            store.refresh_counters(bulk.id, now)
    return bulk, store.get_item(first.id)


#: (action, item status) -> the item's status after, "no-op", or 4 (refused).
RULES = {
    ("retry", "queued"): "no-op", ("retry", "processing"): 4, ("retry", "completed"): 4,
    ("retry", "failed"): "queued", ("retry", "cancelled"): "queued",
    ("cancel", "queued"): "cancelled", ("cancel", "processing"): "cancelled", ("cancel", "completed"): 4,
    ("cancel", "failed"): 4, ("cancel", "cancelled"): "no-op",
}


@pytest.mark.parametrize("action, status", list(RULES), ids=[f"{a}-{s}" for a, s in RULES])
def test_the_item_state_rules(store, action, status):
    bulk, item = item_in(store, status)
    expected = RULES[action, status]
    if expected == 4:
        with pytest.raises(InvalidTransition) as refused:
            items.apply(store, ItemAction(action), item.id[:8], "alice")
        assert refused.value.exit_code == 4
        assert f"it is {status}; only a" in str(refused.value) and item.id[:8] in str(refused.value)
        assert store.get_item(item.id) == item  # nothing changed
        return
    result = items.apply(store, ItemAction(action), item.id[:8], "alice")
    assert result.changed == (expected != "no-op") and result.previous.value == status
    after = store.get_item(item.id)
    assert after.status == (status if expected == "no-op" else expected)
    if expected == "queued":  # a new round, as retry-failed makes it
        assert (after.attempts, after.error, after.result, after.retry_count) == (0, None, None, item.retry_count + 1)
    if (action, status) == ("cancel", "processing"):
        assert after.error == CANCELLED_IN_FLIGHT and not store.is_held(item.id, "p1")
        assert not store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), utcnow())  # the holder lost it
    assert counters_true(store, bulk.id).status in ("queued", "processing")  # nine items still pending


def test_retry_reopens_a_completed_job_and_its_next_end_is_a_new_one(store):
    bulk = submit(store, 10)
    finish_all(store, bulk.id, failing={4})
    ended = counters_true(store, bulk.id)
    assert ended.status == "completed" and ended.failed_items == 1
    fourth = store.list_items(bulk.id)[3]
    result = items.apply(store, ItemAction.retry, fourth.id, "alice")
    assert result.changed and result.bulk.status == "queued" and result.bulk.completed_at is None
    assert counters_true(store, bulk.id).failed_items == 0
    finish_all(store, bulk.id)
    again = counters_true(store, bulk.id)
    assert again.status == "completed" and again.completed_items == 10
    assert again.outbox["event_id"] != ended.outbox["event_id"]  # a new end, notified again


def test_retry_waits_while_the_last_end_is_being_notified(store):
    bulk = submit(store, 10, notify=["webhook:http://127.0.0.1:9/hook"])  # nobody delivers it here
    finish_all(store, bulk.id, failing={2})
    fails = store.list_items(bulk.id)[1]
    with pytest.raises(InvalidTransition, match="notification of its bulk job's last end is still being delivered") \
            as refused:
        items.apply(store, ItemAction.retry, fails.id, "alice")
    assert store.get_item(fails.id).status == "failed" and store.get_bulk(bulk.id).status == "completed"
    with pytest.raises(InvalidTransition, match="notification of its last end is still being delivered") as whole:
        control.apply(store, control.Action.retry_failed, bulk.id)
    # The library says the fact; each front end adds its own hint (design.md, "Layers").
    for error in (refused.value, whole.value):
        assert f"`bulkgen status {bulk.id}`" in str(error)
        assert "bulkgen" not in error.for_http() and f"GET /api/bulk-generate/{bulk.id}" in error.for_http()


def test_an_item_of_a_cancelled_job_stays_cancelled(store):
    bulk = submit(store, 10)
    store.cancel_bulk(bulk.id, utcnow())
    store.refresh_counters(bulk.id, utcnow())
    first = store.list_items(bulk.id)[0]
    with pytest.raises(InvalidTransition, match="its bulk job was cancelled, and cancel is final"):
        items.apply(store, ItemAction.retry, first.id, "alice")
    assert store.get_item(first.id).status == "cancelled" and store.get_bulk(bulk.id).status == "cancelled"


def test_cancelling_the_last_pending_item_completes_the_job_once(store):
    bulk = submit(store, 10)
    finish_all(store, bulk.id, failing=set())
    assert store.get_bulk(bulk.id).status == "completed"
    other = submit(store, 10, prefix="Other")
    now = utcnow()
    for item in store.list_items(other.id)[:9]:
        claim(store, "p1", LEASE, now)
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, result={"content": "x"}), now)
    last = store.list_items(other.id)[9]
    result = items.apply(store, ItemAction.cancel, last.id, "alice")
    assert result.ended_now and result.bulk.status == "completed"
    done = counters_true(store, other.id)
    assert (done.completed_items, done.cancelled_items) == (9, 1) and done.outbox is not None
    again = items.apply(store, ItemAction.cancel, last.id, "alice")  # a no-op, and no second end
    assert not again.changed and not again.ended_now
    assert store.get_bulk(other.id).outbox["event_id"] == done.outbox["event_id"]


def test_retry_in_a_paused_job_queues_the_item_and_leaves_the_job_paused(store):
    bulk, item = item_in(store, "failed")
    store.set_bulk_state(bulk.id, [BulkStatus.processing], BulkStatus.paused, utcnow())
    result = items.apply(store, ItemAction.retry, item.id, "alice")
    assert result.item.status == "queued" and result.bulk.status == "paused"
    assert claim(store, "p2", LEASE, utcnow()) is None  # a paused job's items are not claimed


# -- MongoDB: two documents (design.md, "Item state rules") -----------------------------------------------


@pytest.fixture
def mongo(tmp_path):
    yield from make_store("mongo", tmp_path)


def test_mongo_a_retry_between_a_stale_count_and_its_end_keeps_the_job_open(mongo):
    """A refresh that counted before the item was queued again must not record the end after it."""
    bulk = submit(mongo, 10)
    finish_all(mongo, bulk.id, failing={1})
    # Reopen the job: everything done but item 1 failed; make the job active again as if mid-run.
    mongo.bulks.update_one({"_id": __import__("bson").ObjectId(bulk.id)},
                           {"$set": {"status": "processing", "completed_at": None, "outbox": None}})
    first = mongo.list_items(bulk.id)[0]
    original, raced = mongo._end, []

    def end_after_the_retry(oid, kind, now, seq=None):
        if not raced:  # the stale refresh counted nothing pending; the retry lands before its end
            raced.append(items.apply(mongo, ItemAction.retry, first.id, "alice"))
        return original(oid, kind, now, seq=seq)

    mongo._end = end_after_the_retry
    counts = mongo.refresh_counters(bulk.id, utcnow())
    assert raced and raced[0].changed and not counts.ended_now and counts.queued == 1
    job = counters_true(mongo, bulk.id)
    assert job.status == "processing" and job.completed_at is None and job.outbox is None


def test_mongo_an_end_that_won_is_notified_first_and_the_retry_is_undone(mongo):
    bulk = submit(mongo, 10, notify=["webhook:http://127.0.0.1:9/hook"])
    finish_all(mongo, bulk.id, failing={1})
    first = mongo.list_items(bulk.id)[0]
    before = mongo._first("items", {"id": first.id})  # the item as the store reads it, before the retry
    # As if the item were written just after an end that counted before it was recorded.
    mongo.items.update_one({"_id": __import__("bson").ObjectId(first.id)},
                           {"$set": rules.RETRIED_ITEM.set, "$inc": rules.RETRIED_ITEM.add})
    assert mongo._reopen(before, utcnow()) is None
    after = mongo.get_item(first.id)
    assert (after.status, after.error, after.retry_count) == ("failed", "HTTP 400", first.retry_count)
    assert counters_true(mongo, bulk.id).status == "completed"


def test_mongo_repeating_a_retry_that_died_half_way_queues_its_job(mongo):
    bulk = submit(mongo, 10)
    finish_all(mongo, bulk.id, failing={3})
    third = mongo.list_items(bulk.id)[2]
    # The item's write landed; the process died before the job's.
    mongo.items.update_one({"_id": __import__("bson").ObjectId(third.id)},
                           {"$set": rules.RETRIED_ITEM.set, "$inc": rules.RETRIED_ITEM.add})
    assert mongo.get_bulk(bulk.id).status == "completed" and claim(mongo, "p1", LEASE, utcnow()) is None
    result = items.apply(mongo, ItemAction.retry, third.id, "alice")
    assert not result.changed and result.bulk.status == "queued"
    assert counters_true(mongo, bulk.id).failed_items == 0
    assert claim(mongo, "p1", LEASE, utcnow()).id == third.id


def test_mongo_a_retry_racing_a_job_cancel_leaves_no_queued_item_in_the_cancelled_job(mongo, monkeypatch):
    """The job is cancelled (and its items swept) between the retry's check and its item write."""
    bulk, item = item_in(mongo, "failed")
    allowed, raced = rules.retry_item_allowed, []

    def cancel_meanwhile(status, outbox):
        if not raced:  # the job was read as still running; it is cancelled and swept before the item's write
            raced.append(mongo.cancel_bulk(bulk.id, utcnow()))
        return allowed(status, outbox)

    monkeypatch.setattr(rules, "retry_item_allowed", cancel_meanwhile)
    with pytest.raises(InvalidTransition, match="its bulk job was cancelled"):
        items.apply(mongo, ItemAction.retry, item.id, "alice")
    monkeypatch.setattr(rules, "retry_item_allowed", allowed)
    assert mongo.get_item(item.id).status == "failed"  # put back as it was: cancel is final
    job = counters_true(mongo, bulk.id)
    assert job.status == "cancelled" and all(i.status != "queued" for i in mongo.list_items(bulk.id))


# -- ids and prefixes -------------------------------------------------------------------------------------


def test_prefix_bounds_and_short_ids():
    assert rules.prefix_bounds("0a") == ("0a" + "0" * 22, "0b" + "0" * 22)
    assert rules.prefix_bounds("3f") == ("3f" + "0" * 22, "40" + "0" * 22)
    assert rules.prefix_bounds("ff") == ("ff" + "0" * 22, None)
    item_id = "3f2a91c4d0" + "0" * 14
    assert rules.short_id(item_id, (None, None)) == "3f2a91c4"
    assert rules.short_id(item_id, ("3f2a91c4c0" + "0" * 14, "3f2a91c4d1" + "0" * 14)) == "3f2a91c4d0"
    assert rules.short_id(item_id, ("3f2a91c000" + "0" * 14, None)) == "3f2a91c4"


def with_ids(store, monkeypatch, ids, user="alice"):
    """A job whose items get the given ids (the rest random)."""
    queue = list(ids)
    real = rules.new_item_id
    monkeypatch.setattr(rules, "new_item_id", lambda: queue.pop(0) if queue else real())
    bulk = submit(store, 10, user=user)
    monkeypatch.setattr(rules, "new_item_id", real)
    return bulk


def test_prefix_resolution(store, monkeypatch):
    mine = with_ids(store, monkeypatch, ["abcd1234" + "0" * 16, "abcd1299" + "0" * 16, "abce0000" + "0" * 16])
    theirs = with_ids(store, monkeypatch, ["abcf0000" + "1" * 16], user="bob")
    assert items.resolve(store, "abce", "alice").id == "abce0000" + "0" * 16  # unique
    with pytest.raises(UsageError) as ambiguous:
        items.resolve(store, "ABCD12", "alice")
    message = str(ambiguous.value)
    assert ambiguous.value.exit_code == 2 and "is ambiguous" in message
    assert "abcd12340000" in message and "abcd12990000" in message and f"of bulk job {mine.id}" in message
    assert items.resolve(store, "abcd1234", "alice").queue_position == 1
    with pytest.raises(NotFound) as unknown:
        items.resolve(store, "0123", "alice")
    assert unknown.value.exit_code == 3
    with pytest.raises(NotFound):  # another user's item is as good as none
        items.resolve(store, "abcf", "alice")
    assert items.resolve(store, "abcf", "alice", all_users=True).bulk_job_id == theirs.id
    for bad in ("abc", "xyz1", "abcd-1", "a" * 25):
        with pytest.raises(UsageError):
            items.resolve(store, bad, "alice")
    shorts = items.short_ids(store, store.list_items(mine.id))
    assert shorts["abcd1234" + "0" * 16] == "abcd1234" and shorts["abce0000" + "0" * 16] == "abce0000"
    assert all(len(s) >= 8 and item_id.startswith(s) for item_id, s in shorts.items())


def test_an_ambiguous_prefix_names_its_candidates_by_digits_that_tell_them_apart(store, monkeypatch):
    """Items of an older store share their first 18 or more digits (ids from new_id): 12 would name none."""
    ids = ["6b0c059f40ffc7a30e2fcd" + end for end in ("d1", "d2", "e0")]
    with_ids(store, monkeypatch, ids)
    with pytest.raises(UsageError) as ambiguous:
        items.resolve(store, "6b0c059f", "alice")
    message = str(ambiguous.value)
    assert "6b0c059f40ffc7a30e2fcdd1 (#1" in message and "6b0c059f40ffc7a30e2fcdd2 (#2" in message
    assert "6b0c059f40ffc7a30e2fcde… (#3" in message  # as many digits as tell it from its neighbours


def test_older_items_stay_addressable_by_their_whole_id(store):
    bulk = BulkJob(id=new_id(), userId="alice", mode="topic", name="old", status="queued", total_items=10,
                   created_at=utcnow())
    store.create_bulk(bulk, articles(10))
    old_id = new_id()  # an id of the old shape: time first
    first = store.list_items(bulk.id)[0]
    if isinstance(store, SqliteStore):
        store.db.execute("UPDATE generation_jobs SET id = ? WHERE id = ?", (old_id, first.id))
    else:
        doc = store.items.find_one_and_delete({"_id": __import__("bson").ObjectId(first.id)})
        store.items.insert_one({**doc, "_id": __import__("bson").ObjectId(old_id)})
    assert items.resolve(store, old_id, "alice").queue_position == 1
    assert items.resolve(store, old_id.upper(), "alice").id == old_id


def test_sqlite_prefix_lookup_is_an_index_range(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    submit(store, 10)
    first = store.list_items(store.list_bulks()[0].id)[0].id
    statements = []
    store.db.set_trace_callback(statements.append)
    store.find_items("abcd", "alice", 6)
    store.find_items("abcd", None, 6)
    store.item_neighbours([first])
    store.db.set_trace_callback(None)
    assert len(statements) == 3
    plans = [" ".join(r[3] for r in store.db.execute("EXPLAIN QUERY PLAN " + sql)) for sql in statements]
    assert not [p for p in plans if "SCAN generation_jobs" in p], plans
    assert all("sqlite_autoindex_generation_jobs_1 (id>? AND id<?)" in p for p in plans[:2]), plans
    assert plans[2].count("sqlite_autoindex_generation_jobs_1 (id") == 2, plans
    store.close()


# -- the commands, as a user runs them -------------------------------------------------------------------------


def stored_job(tmp_path, content, user="tester", status=ItemStatus.completed, error=None, verdict=None):
    """A SQLite store with one job whose first item holds `content` as its result; (store path, job, item)."""
    path = tmp_path / "xdg" / "bulkgen" / "bulkgen.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(path)
    bulk = submit(store, 10, user=user)
    now = utcnow()
    item = claim(store, "p1", LEASE, now)
    result = {"content": content, "generator": "reference", "generated_at": "2026-11-29T10:00:00.000Z",
              "seconds": 2.25, "waited": 1.0, "words": 3} if status is ItemStatus.completed or verdict else None
    store.finish_item(item.id, "p1", Outcome(status, result=result, error=error, verdict=verdict), now)
    store.refresh_counters(bulk.id, now)
    store.close()
    return path, bulk, item


HOSTILE = "# Title [bold]markup[/bold] :smile:\n\nRed \x1b[31mred\x1b[0m text\r\nand a bell\x07 \u202eevil\n\n[link](http://x.example)"


def raw_bytes(args, env):
    proc = subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, capture_output=True, cwd=ROOT,
                          timeout=60)
    return proc.returncode, proc.stdout, proc.stderr.decode()


def test_show_raw_json_and_pipe(tmp_path):
    env = env_for(tmp_path)
    _, bulk, item = stored_job(tmp_path, {"title": "T", "body": HOSTILE, "meta": {"source": "ref"}})
    code, out, _ = raw_bytes(["show", item.id[:7], "--raw"], env)
    assert code == 0 and out == HOSTILE.encode()  # byte for byte, no newline added
    doc = json.loads(run_cli(["show", item.id[:7], "--json"], env).out)
    listed = next(j for j in status_of(env, bulk.id)["jobs"] if j["id"] == item.id)
    assert {k: doc[k] for k in listed} == listed  # the shape of status --json's items, plus more
    assert doc["text"] == HOSTILE and doc["short_id"] == item.id[:8] and doc["request_seconds"] == 2.25
    assert doc["front_matter"]["title"] == "T" and doc["front_matter"]["meta"] == {"source": "ref"}
    piped = run_cli(["show", item.id[:7]], env)
    assert piped.code == 0 and "\x1b" not in piped.out and "\x07" not in piped.out
    assert f"Item: {item.id[:8]} ({item.id})" in piped.out and "Status: completed" in piped.out
    assert "Request: 2.2s (after waiting 1.0s)" in piped.out or "Request: 2.3s (after waiting 1.0s)" in piped.out
    assert "Red \\x1b[31mred\\x1b[0m text\\x0d" in piped.out and "bell\\x07 \\u202eevil" in piped.out
    assert "[bold]markup[/bold] :smile:" in piped.out and "title: T" in piped.out
    assert 'meta: {"source": "ref"}' in piped.out and "item_id:" not in piped.out  # JSON; no value, no line


def test_show_an_item_without_an_article(tmp_path):
    env = env_for(tmp_path)
    _, _, item = stored_job(tmp_path, None, status=ItemStatus.failed, error="HTTP 400: no \x1b[2J")
    raw = run_cli(["show", item.id, "--raw"], env)
    assert raw.code == 4 and raw.out == "" and "it has no article text (HTTP 400: no \\x1b[2J)" in raw.err
    piped = run_cli(["show", item.id], env)
    assert piped.code == 0 and "Error: HTTP 400: no \\x1b[2J" in piped.out and "\x1b" not in piped.out
    assert json.loads(run_cli(["show", item.id, "--json"], env).out)["text"] is None


def test_show_prints_the_article_the_quality_gate_turned_down(tmp_path):
    env = env_for(tmp_path)
    verdict = {"status": "flagged", "reasons": ["3 of 1500 words"], "generation": 0}
    _, _, item = stored_job(tmp_path, {"title": "T", "body": "Too short."}, status=ItemStatus.failed,
                            error="quality: 3 of 1500 words", verdict=verdict)
    raw = run_cli(["show", item.id, "--raw"], env)
    assert raw.code == 0 and raw.out == "Too short."
    assert "this article was turned down by the quality gate (quality: 3 of 1500 words)" in raw.err
    piped = run_cli(["show", item.id], env)
    assert piped.code == 0 and "Article: turned down by the quality gate; kept, shown below" in piped.out
    assert piped.out.rstrip().endswith("Too short.")
    assert json.loads(run_cli(["show", item.id, "--json"], env).out)["text"] == "Too short."


def test_show_in_a_terminal_shows_hostile_text_as_it_is(tmp_path):
    env = env_for(tmp_path) | {"PAGER": f"cat > {tmp_path / 'paged.txt'}"}
    _, _, item = stored_job(tmp_path, HOSTILE)
    term = Terminal(["show", item.id[:8]], env)
    code = term.finish()
    raw = bytes(term.raw)
    text = term.text()
    assert code == 0 and "Traceback" not in text
    assert b"\x1b[31mred" not in raw and b"\x07" not in raw and "\u202e".encode() not in raw
    assert "\\x1b[31mred\\x1b[0m" in text and "\\u202eevil" in text
    assert "[bold]markup[/bold] :smile:" in text and "😄" not in text  # never rich markup or emoji codes
    assert "Title" in text and "http://x.example" in text  # Markdown rendered; the link as text
    assert not (tmp_path / "paged.txt").exists()  # short: not paged


def test_show_pages_a_long_article_on_a_terminal_only(tmp_path):
    paged = tmp_path / "paged.txt"
    env = env_for(tmp_path) | {"PAGER": f"cat > {paged}"}
    long = "\n\n".join(f"Paragraph {n} of the article." for n in range(80))
    _, _, item = stored_job(tmp_path, long)
    assert run_cli(["show", item.id], env).code == 0 and not paged.exists()  # a pipe: never paged
    term = Terminal(["show", item.id], env)
    assert term.finish() == 0
    assert "Paragraph 79 of the article." in paged.read_text() and "Paragraph 79" not in term.text()


def test_commands_name_items_by_prefix_and_scope_them_to_their_user(tmp_path):
    env = env_for(tmp_path)
    _, bulk, item = stored_job(tmp_path, "text", user="bob")
    assert run_cli(["show", item.id[:6]], env).code == 3  # bob's item, tester asks
    assert run_cli(["item", "retry", item.id[:6]], env).code == 3
    assert run_cli(["show", item.id[:6], "--all-users", "--raw"], env).out == "text"
    refused = run_cli(["item", "cancel", item.id[:6], "--all-users"], env)
    assert refused.code == 4
    assert (f"cannot cancel item {item.id[:8]} (#1 of bulk job {bulk.id}): it is completed; only a queued item "
            "or one in flight can be cancelled.") in refused.err
    as_json = run_cli(["item", "retry", item.id[:6], "--all-users", "--json"], env)
    assert as_json.code == 4 and json.loads(as_json.out)["error"]["code"] == 4
    assert run_cli(["show", "zz99"], env).code == 2
    both = run_cli(["show", item.id[:6], "--raw", "--json"], env)
    assert both.code == 2 and "give --raw (the article's text) or --json (the item's record), not both." in both.err


def test_an_item_id_given_for_a_job_and_a_job_id_given_for_an_item_get_a_hint(tmp_path):
    env = env_for(tmp_path)
    _, bulk, item = stored_job(tmp_path, "text")
    status = run_cli(["status", item.id[:8]], env)
    assert status.code == 3 and (f"no bulk job '{item.id[:8]}' for this user: that is an item of bulk job {bulk.id}: "
                                 f"`bulkgen show {item.id[:8]}` shows it.") in status.err
    unknown = run_cli(["status", bulk.id[:8]], env)
    assert unknown.code == 3 and "job ids are whole, never prefixes" in unknown.err
    show = run_cli(["show", bulk.id], env)
    assert show.code == 3 and f"that is a bulk job: `bulkgen status {bulk.id}` shows it" in show.err


def test_status_items_shows_short_ids_in_a_pipe(tmp_path):
    env = env_for(tmp_path)
    path = write_articles(tmp_path / "a.yaml", [f"Topic {n}" for n in range(10)])
    bulk_id = submit_file(env, path)
    ids = [j["id"] for j in status_of(env, bulk_id)["jobs"]]
    lines = run_cli(["status", bulk_id, "--items"], env).out.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("#"))
    assert lines[header].split()[:3] == ["#", "ID", "Item"]
    shown = [line.split()[1] for line in lines[header + 1:]]
    assert len(shown) == 10 and all(len(s) >= 8 and i.startswith(s) for s, i in zip(shown, ids))
    assert len(ids[0]) == 24 and len({i[:8] for i in ids}) == 10  # new ids differ from their first digits


def test_the_readmes_items_header_names_every_column():
    from bulkgen_cli.cli.render import ITEM_COLUMNS

    readme = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    header = next(line for line in readme.splitlines() if line.startswith("#   ID "))
    assert header.split() == [name for name, _ in ITEM_COLUMNS]


# -- real processors ------------------------------------------------------------------------------------------


def test_cancelling_an_item_in_flight_closes_its_request_and_completes_the_job(tmp_path, svc, processes):
    env = env_for(tmp_path, svc)
    path = write_articles(tmp_path / "a.yaml", [f"Plain {n}" for n in range(9)] + ["Last [hang]"], name="A")
    bulk_id = submit_file(env, path)
    last = status_of(env, bulk_id)["jobs"][9]["id"]
    proc = processes.spawn(["run"], env)
    wait_for(lambda: any(r["job_id"] == last and r["end"] is None for r in svc.stats()["requests"]), timeout=30,
             what="the last item's request in flight")
    cancelled = run_cli(["item", "cancel", last[:8]], env)
    assert cancelled.code == 0, cancelled.err
    assert "processing -> cancelled. Its request is being aborted: its processor closes it within about a second." in cancelled.err
    assert "That was its last pending item" in cancelled.err
    wait_for(lambda: [r["outcome"] for r in svc.stats()["requests"] if r["job_id"] == last] == ["closed-by-client"],
             timeout=5, what="the request to be closed")
    result = finish(proc)
    assert result.code == 0, result.err
    assert "stopped: it was cancelled" in result.err
    doc = status_of(env, bulk_id)
    assert doc["bulk_job"]["status"] == "completed" and doc["progress"]["completed"] == 9
    assert doc["progress"]["cancelled"] == 1 and doc["jobs"][9]["error"] == CANCELLED_IN_FLIGHT
    assert len([r for r in svc.stats()["requests"] if r["job_id"] == last]) == 1


def test_an_item_retry_reopens_a_completed_job_and_its_end_is_notified_again(tmp_path, svc):
    hook = WebhookReceiver()
    try:
        env = env_for(tmp_path, svc)
        path = write_articles(tmp_path / "a.yaml", ["Once [fail:3]"] + [f"Fine {n}" for n in range(9)], name="R")
        bulk_id = submit_file(env, path, "--notify", f"webhook:{hook.url}")
        assert run_cli(["run"], env).code == 0
        [first] = hook.events()
        assert (first["status"], first["failed_items"]) == ("completed", 1)
        failed = status_of(env, bulk_id)["jobs"][0]["id"]
        retried = run_cli(["item", "retry", failed[:8], "--json"], env)
        assert retried.code == 0, retried.err
        doc = json.loads(retried.out)
        assert (doc["status"], doc["attempts"], doc["error"], doc["retry_count"]) == ("queued", 0, None, 3)
        assert status_of(env, bulk_id)["bulk_job"]["status"] == "queued"
        again = run_cli(["run"], env)
        assert again.code == 0 and "Processed 1 item; the queue is empty." in again.err
        events = hook.events()
        assert len(events) == 2 and events[1]["event_id"] != first["event_id"]
        assert (events[1]["completed_items"], events[1]["failed_items"]) == (10, 0)
        assert run_cli(["item", "retry", failed[:8]], env).code == 4  # completed now
    finally:
        hook.stop()


def test_help_has_an_example_and_the_exit_codes(tmp_path):
    env = env_for(tmp_path)
    for args in (["show", "--help"], ["item", "retry", "--help"], ["item", "cancel", "--help"], ["item", "--help"]):
        result = run_cli(args, env)
        assert result.code == 0 and "Exit codes" in result.out, args
        assert args[0] == "item" and args[1] == "--help" or "Example:" in result.out, args
    assert re.search(r"item\s+Retry or cancel one item", run_cli(["--help"], env).out)


@pytest.mark.parametrize("ref", ["zz-not-hex", "3f2"])
def test_a_bad_item_reference_names_no_command_over_http(ref):
    with pytest.raises(UsageError) as bad:
        items.check_ref(ref)
    assert "`bulkgen status BULK_ID --items`" in str(bad.value)
    assert "bulkgen" not in bad.value.for_http() and "GET /api/bulk-generate/{id}" in bad.value.for_http()

