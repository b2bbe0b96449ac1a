"""The store verbs of `bulkgen serve` (tokens, the change log) on both stores, and the API in-process on each
(mongomock cannot be shared with a server process, so the app runs on httpx's ASGI transport here)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from bulkgen_cli.ops import tokens
from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
from tests.conftest import claim, submit


def test_tokens_are_found_by_hash_listed_and_revoked(store):
    record, token = tokens.create(store, "alice", email="alice@example.com")
    other, _ = tokens.create(store, "root", admin=True)
    assert tokens.authenticate(store, token).userId == "alice"
    assert tokens.authenticate(store, token + "x") is None and tokens.authenticate(store, "nope") is None
    assert sorted(t.userId for t in store.list_tokens()) == ["alice", "root"]
    assert [t.admin for t in store.list_tokens("root")] == [True]
    assert record.token_hash == tokens.token_hash(token) and token not in repr(store.list_tokens())
    assert store.revoke_token(record.id, utcnow()) and not store.revoke_token(record.id, utcnow())
    assert tokens.authenticate(store, token) is None
    assert store.list_tokens("alice")[0].revoked_at is not None


def _life(store, n: int = 10):
    bulk = submit(store, n)
    now = utcnow()
    item = claim(store, "p1", 60, now)
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, {"content": "x"}), now)
    store.refresh_counters(bulk.id, now)
    failed = claim(store, "p1", 60, now)
    store.finish_item(failed.id, "p1", Outcome(ItemStatus.failed, error="boom"), now)
    store.cancel_bulk(bulk.id, now)
    return bulk, item, failed


def test_every_state_change_is_numbered_in_the_change_log(store):
    start = store.last_change()
    bulk, item, failed = _life(store)
    changes = store.changes_since(start, 1000)
    seen = [(c.kind, c.status, c.queue_position) for c in changes if c.bulk_job_id == bulk.id]
    assert seen[:6] == [("bulk", "queued", None), ("item", "processing", 1), ("bulk", "processing", None),
                        ("item", "completed", 1), ("item", "processing", 2), ("item", "failed", 2)]
    assert seen[6] == ("bulk", "cancelled", None)
    assert sorted(seen[7:]) == [("item", "cancelled", p) for p in range(3, 11)]
    assert [c.error for c in changes if c.status == "failed"] == ["boom"]
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and store.last_change() >= seqs[-1]
    assert all(c.userId == "alice" and c.at is not None for c in changes)
    later = store.changes_since(seqs[5], 1000)
    assert {c.seq for c in later} >= set(seqs[6:])


def test_sqlite_numbers_are_in_commit_order_and_exact(tmp_path):
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "s.db") as store:
        _life(store)
        every = store.changes_since(0)
        assert store.change_lag == 0
        assert [c.seq for c in every] == list(range(1, len(every) + 1))
        assert store.changes_since(5) == every[5:] and store.changes_since(len(every)) == []


# -- the app in-process, on each store ----------------------------------------------------------------------


def _app(store):
    from bulkgen_cli.server.app import create_app
    from bulkgen_cli.server.config import ServerConfig

    return create_app(ServerConfig(lambda: store, shared_store=True, poll=0.02))


def run_app(store, scenario):
    """Run `scenario(client)` against the app, its lifespan (the poller) running."""
    app = _app(store)
    app.state.access.close = lambda: None  # the test owns the store

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await scenario(client, app)

    return asyncio.run(main())


def test_the_api_on_each_store(store):
    alice = tokens.create(store, "alice")[1]
    bob = tokens.create(store, "bob")[1]
    body = {"bulk_config": {"items": [{"topic": f"T{i}"} for i in range(10)]}}

    async def scenario(client, app):
        auth = {"Authorization": f"Bearer {alice}"}
        made = await client.post("/api/bulk-generate", json=body, headers=auth)
        job = made.json()["bulk_job_id"]
        assert made.status_code == 201
        doc = (await client.get(f"/api/bulk-generate/{job}", headers=auth)).json()
        assert doc["progress"]["total"] == 10 and len(doc["jobs"]) == 10
        other = await client.get(f"/api/bulk-generate/{job}", headers={"Authorization": f"Bearer {bob}"})
        assert other.status_code == 404
        assert (await client.post(f"/api/bulk-generate/{job}/cancel", headers=auth)).json()["changed"] is True
        listed = (await client.get("/api/bulk-generate", params={"status": "cancelled"}, headers=auth)).json()
        assert [b["id"] for b in listed] == [job]
        return job

    job = run_app(store, scenario)
    assert store.get_bulk(job).notify_policy == {"origin": "http", "webhook_allow": [], "email_allow": [],
                                                 "user_email": None}


def test_events_on_each_store(store):
    """The poller and a stream on each store: a resumed stream continues after its Last-Event-ID."""
    from bulkgen_cli.server import live

    async def scenario(client, app):
        poller = app.state.poller
        bulk, item, failed = _life(store)
        watch = live.Watch("alice", False, bulk.id)

        async def take(last_id, count):
            out = []
            inbox = live.Inbox(watch)
            poller.subscribe(inbox)
            offload = lambda work: asyncio.to_thread(app.state.access.call, work)  # noqa: E731
            try:
                async for chunk in live.stream(poller, inbox, last_id, 5.0, lambda: False, offload):
                    out.extend(e.split("\n")[:2] for e in chunk.decode().split("\n\n") if e.startswith("id:"))
                    if len(out) >= count:
                        return out[:count]
            finally:
                poller.unsubscribe(inbox)

        everything = await asyncio.wait_for(take(0, 15), 10)
        resumed = await asyncio.wait_for(take(int(everything[5][0][4:]), 9), 10)
        return everything, resumed

    everything, resumed = run_app(store, scenario)
    assert [name for _, name in everything][:4] == ["event: bulk.queued", "event: item.started",
                                                   "event: bulk.processing", "event: item.completed"]
    assert resumed == everything[6:]


def test_sqlite_store_of_schema_6_gets_the_serve_tables_and_triggers(tmp_path):
    import sqlite3

    from bulkgen_cli.store.sqlite import SCHEMA_VERSION, SqliteStore

    path = tmp_path / "v6.db"
    with SqliteStore(path) as store:
        bulk = submit(store, 10)
    db = sqlite3.connect(path, isolation_level=None)
    for statement in ("DROP TRIGGER changes_bulk_new", "DROP TRIGGER changes_bulk_status",
                      "DROP TRIGGER changes_item_status", "DROP TABLE changes", "DROP TABLE api_tokens",
                      "ALTER TABLE bulk_jobs DROP COLUMN notify_policy", "ALTER TABLE generation_jobs DROP COLUMN sent_at",
                      "DROP INDEX bulk_jobs_usage", "ALTER TABLE bulk_jobs DROP COLUMN stored_bytes",
                      "ALTER TABLE schedule_occurrences DROP COLUMN claim", "PRAGMA user_version = 6"):
        db.execute(statement)
    db.close()
    with SqliteStore(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 11
        assert store.get_bulk(bulk.id).notify_policy is None and store.changes_since(0) == []
        store.cancel_bulk(bulk.id, utcnow())
        assert [c.status for c in store.changes_since(0)][:2] == ["cancelled", "cancelled"]
        tokens.create(store, "alice")
        assert len(store.list_tokens()) == 1
