"""Live progress inside one process (design.md, "Live progress"): streams cancelled at every await, the watchdog
and /healthz over a real uvicorn on 127.0.0.1 with a store that hangs, the change log's pruning and the `reset`
a resume from before it gets, on both stores."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import threading
from typing import Iterator

import httpx
import pytest

from bulkgen_cli.ops import tokens
from bulkgen_cli.core.model import utcnow
from bulkgen_cli.server import live
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.store.sqlite import SqliteStore
from tests.conftest import submit, wait_for
from tests.serve_helpers import EventReader, free_port
from tests.test_serve_store import _life, run_app


# -- cancelled at every await ------------------------------------------------------------------------------


def test_an_inbox_wait_cancelled_leaves_nothing_behind_and_the_next_wait_wakes():
    async def main():
        inbox = live.Inbox(live.Watch("alice", False))
        for _ in range(50):
            waiter = asyncio.create_task(inbox.wait(30))
            await asyncio.sleep(0)
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        later = asyncio.create_task(inbox.wait(30))
        await asyncio.sleep(0)
        inbox.end("done")
        await asyncio.wait_for(later, 2)
        return inbox.ended

    assert asyncio.run(main()) == "done"


def _scope(path: str = "/api/events") -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "GET", "path": path, "headers": []}


def test_streams_cancelled_at_every_await_leave_the_poller_and_other_streams_working(tmp_path):
    """Issue 18, item 1: 120 streams (each resuming, so the store reads count too) are each cancelled after a
    different number of turns of the loop while another process's writes flow; then a new event still reaches
    a new stream at once, and no stream is left counted or subscribed."""
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        bulk = submit(store, 10)

    async def main():
        access = StoreAccess(lambda: SqliteStore(path))
        poller, streams = live.Poller(access, 0.01), live.Streams(access, 1_000)
        poller.start()
        flowing = threading.Event()
        writer = threading.Thread(target=_toggle, args=(path, bulk.id, flowing), daemon=True)
        writer.start()
        try:
            for turns in range(120):
                await _cancel_after(poller, streams, access, turns)
                assert streams.open == {} and not poller._users and not poller._admins
            assert poller.trouble() is None
            flowing.set()
            writer.join(10)
            return await _one_event(poller, streams, access, path, bulk.id)
        finally:
            flowing.set()
            await poller.stop()
            access.close()

    assert asyncio.run(main()) == b"event: bulk.cancelled"


def _toggle(path, bulk_id: str, done: threading.Event) -> None:
    """Pause and resume a job on a connection of its own until `done`."""
    from bulkgen_cli.ops import control

    with SqliteStore(path) as store:
        while not done.is_set():
            for action in (control.Action.pause, control.Action.resume):
                control.apply(store, action, bulk_id)
            done.wait(0.01)


def _stream(poller, streams, access, last_id):
    return live.EventStream(poller, streams, "token", live.Watch("alice", False), last_id, 0.05, lambda: False,
                            lambda work: asyncio.to_thread(access.call, work), None)


async def _cancel_after(poller, streams, access, turns: int) -> None:
    sent = []

    async def receive():
        await asyncio.Event().wait()  # the client never leaves by itself

    async def send(message):
        sent.append(message)

    task = asyncio.create_task(_stream(poller, streams, access, turns % 3)(_scope(), receive, send))
    for _ in range(turns):
        await asyncio.sleep(0 if turns % 2 else 0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _one_event(poller, streams, access, path, bulk_id: str) -> bytes:
    """The cancel made after a new stream opened, as that stream sends it."""
    found = asyncio.get_running_loop().create_future()

    async def receive():
        await found
        return {"type": "http.disconnect"}

    async def send(message):
        for line in message.get("body", b"").split(b"\n"):
            if line == b"event: bulk.cancelled" and not found.done():
                found.set_result(line)

    task = asyncio.create_task(_stream(poller, streams, access, None)(_scope(), receive, send))
    await asyncio.sleep(0.1)
    with SqliteStore(path) as store:
        assert store.cancel_bulk(bulk_id, utcnow())
    try:
        return await asyncio.wait_for(asyncio.shield(found), 2)
    finally:
        await asyncio.wait_for(task, 5)


# -- the watchdog and /healthz over a real server -------------------------------------------------------------


class HeldStore(SqliteStore):
    """A real SQLite store whose change-log reads can be made to hang (a test double for a store that stops
    answering: a lost network mount, a lock that is never released) or to fail once with a bug's error."""

    open_gate = threading.Event()
    crash_next = threading.Event()

    def changes_since(self, *args, **kwargs):
        if self.crash_next.is_set():
            self.crash_next.clear()
            raise RuntimeError("a bug in the poller's read")
        assert self.open_gate.wait(60), "held for a minute"
        return super().changes_since(*args, **kwargs)


@contextlib.contextmanager
def serving(path, **settings) -> Iterator[str]:
    """The app on a real uvicorn on 127.0.0.1 in a thread of this process, on a HeldStore."""
    import uvicorn

    from bulkgen_cli.server.app import create_app
    from bulkgen_cli.server.config import ServerConfig

    HeldStore.open_gate.set()
    HeldStore.crash_next.clear()
    port = free_port()
    config = ServerConfig(lambda: HeldStore(path), poll=0.05, **settings)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        HeldStore.open_gate.set()
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def quick_watchdog(monkeypatch):
    monkeypatch.setattr(live, "STUCK_SECONDS", 1.0)
    monkeypatch.setattr(live, "WATCH_SECONDS", 0.1)


def _health(url: str) -> int:
    return httpx.get(url + "/healthz", timeout=5).status_code


def test_healthz_is_503_while_the_poller_hangs_and_200_once_it_reads_again(tmp_path, quick_watchdog, caplog):
    caplog.set_level(logging.INFO, logger="bulkgen.events")
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        token = tokens.create(store, "alice")[1]
    with serving(path, heartbeat=0.2) as url:
        assert _health(url) == 200
        follower = EventReader(url + "/api/events", token)
        wait_for(lambda: follower.comments, what="the stream to open")
        HeldStore.open_gate.clear()
        with SqliteStore(path) as store:
            bulk = submit(store, 10)  # a change the hung poller cannot read
        wait_for(lambda: _health(url) == 503, timeout=10, what="/healthz to say 503")
        assert httpx.get(url + "/healthz", timeout=5).json() == {"ok": False}
        wait_for(lambda: "event poller restarted" in caplog.text, what="the restart in the log")
        assert "the store has newer changes" in caplog.text or "the store did not answer" in caplog.text
        HeldStore.open_gate.set()
        wait_for(lambda: _health(url) == 200, timeout=10, what="/healthz to say 200 again")
        wait_for(lambda: [e.data["bulk_job_id"] for e in follower.events] == [bulk.id],
                 what="the change made while it hung")
        follower.close()


def test_a_poller_that_died_is_restarted_and_events_flow_again(tmp_path, quick_watchdog, caplog):
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        token = tokens.create(store, "alice")[1]
    with serving(path, heartbeat=0.2) as url:
        follower = EventReader(url + "/api/events", token)
        wait_for(lambda: follower.comments, what="the stream to open")
        HeldStore.crash_next.set()
        wait_for(lambda: "the poller stopped" in caplog.text, timeout=10, what="the dead poller in the log")
        with SqliteStore(path) as store:
            bulk = submit(store, 10)
        wait_for(lambda: [e.data["bulk_job_id"] for e in follower.events] == [bulk.id], what="the next change")
        assert _health(url) == 200
        follower.close()


# -- pruning and reset ---------------------------------------------------------------------------------------


def test_the_change_log_is_pruned_by_time_a_page_per_write_and_keeps_its_floor(store):
    _life(store)
    top = max(c.seq for c in store.changes_since(0, 1000))
    assert store.prune_changes(utcnow() - dt.timedelta(days=1), 100) == 0 and store.changes_floor() == 0
    later = utcnow() + dt.timedelta(seconds=1)
    assert store.prune_changes(later, 2) == 2
    assert 0 < store.changes_floor() <= top
    while store.prune_changes(later, 2) == 2:
        pass
    assert store.changes_since(0, 1000) == [] and store.changes_floor() == top
    submit(store, 10)
    after = store.changes_since(0, 1000)
    assert after and all(c.seq > top for c in after)  # a new change is numbered above what was dropped


def test_a_resume_from_before_the_pruned_floor_gets_a_reset_then_live_events(store):
    async def scenario(client, app):
        poller = app.state.poller
        bulk, _, _ = _life(store)
        await asyncio.sleep(0.2)  # not a wait for a result: the poller's reads run every 0.02 s
        while store.prune_changes(utcnow() + dt.timedelta(seconds=1), 1000):
            pass
        inbox = live.Inbox(live.Watch("alice", False))
        poller.subscribe(inbox)
        body = live.stream(poller, inbox, 3, 5.0, lambda: False,
                           lambda work: asyncio.to_thread(app.state.access.call, work))
        try:
            assert (await anext(body)).startswith(b"retry:")
            reset = await asyncio.wait_for(anext(body), 5)
        finally:
            await body.aclose()
            poller.unsubscribe(inbox)
        return reset, store.changes_floor()

    reset, floor = run_app(store, scenario)
    head, data = reset.decode().split("\ndata: ")
    assert head.startswith("id: ") and int(head.split("\n")[0][4:]) >= floor and "event: reset" in head
    assert json.loads(data)["type"] == "reset"


def test_a_resume_from_beyond_the_stores_last_change_gets_a_reset_then_live_events(store):
    """A client holding a number this store never gave (a store restored or swapped under the server) would
    drop every change numbered below it, for good: it is told to reload, and the next change reaches it."""
    async def scenario(client, app):
        poller = app.state.poller
        _life(store)
        await asyncio.sleep(0.2)  # not a wait for a result: the poller's reads run every 0.02 s
        inbox = live.Inbox(live.Watch("alice", False))
        poller.subscribe(inbox)
        body = live.stream(poller, inbox, 10**9, 5.0, lambda: False,
                           lambda work: asyncio.to_thread(app.state.access.call, work))
        try:
            assert (await anext(body)).startswith(b"retry:")
            reset = await asyncio.wait_for(anext(body), 5)
            bulk = submit(store, 10)
            following = await asyncio.wait_for(anext(body), 5)
        finally:
            await body.aclose()
            poller.unsubscribe(inbox)
        return reset, following, bulk.id

    reset, following, bulk_id = run_app(store, scenario)
    assert b"event: reset" in reset
    assert b"event: bulk.queued" in following and bulk_id.encode() in following
