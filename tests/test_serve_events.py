"""Live progress over SSE from real processes: order, resume, other writers, several servers, heartbeats."""

from __future__ import annotations

import time

import pytest

from tests.cli_helpers import base_env, env_for, run_cli
from tests.conftest import wait_for
from tests.serve_helpers import EventReader, articles, make_token, start_server


def job_events(reader: EventReader, job: str) -> list:
    return [e for e in reader.events if e.data["bulk_job_id"] == job]


def lifecycle(n: int) -> list[str]:
    """What a job of n items that all complete, one at a time, goes through."""
    items = [f"item.{state}#{p}" for p in range(1, n + 1) for state in ("started", "completed")]
    return ["bulk.queued", items[0], "bulk.processing", *items[1:], "bulk.completed"]


def names(events) -> list[str]:
    return [e.event + (f"#{e.data['item']['queue_position']}" if "item" in e.data else "") for e in events]


@pytest.fixture
def setup(processes, tmp_path, svc):
    env = env_for(tmp_path, svc)
    token = make_token(env, "alice")
    return env, token


def test_a_job_run_by_another_process_streams_every_change_in_order_within_a_second(processes, setup):
    env, token = setup
    server = start_server(processes, env, "--heartbeat", "0.3")
    reader = EventReader(server.url + "/api/events", token)
    wait_for(lambda: reader.comments, what="the stream to open")
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    assert run_cli(["run"], env).code == 0  # a second writer: its own process, its own connection
    written = time.monotonic()
    # Every change is in the store now; the stream must show the last one within a second.
    wait_for(lambda: any(e.event == "bulk.completed" for e in reader.events), timeout=1.0,
             what="bulk.completed within a second of the writer's exit")
    events = job_events(reader, job)
    assert names(events) == lifecycle(10)
    assert [e.id for e in events] == sorted({e.id for e in events})  # once each, in the store's order
    assert events[-1].data["progress"]["completed"] == 10 and events[-1].arrived - written <= 1.0
    assert reader.headers["content-type"].startswith("text/event-stream")


def test_last_event_id_resumes_without_loss_or_repeat(processes, setup):
    env, token = setup
    server = start_server(processes, env)
    with server.client(token) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    assert run_cli(["run"], env).code == 0
    everything = EventReader(f"{server.url}/api/bulk-generate/{job}/events", token, last_id=0)
    wait_for(lambda: len(everything.events) == len(lifecycle(10)), what="the whole history")
    cut = everything.events[7].id
    resumed = EventReader(f"{server.url}/api/bulk-generate/{job}/events", token, last_id=cut)
    wait_for(lambda: len(resumed.events) == len(lifecycle(10)) - 8, what="the rest of the history")
    assert [e.id for e in resumed.events] == [e.id for e in everything.events[8:]]
    assert names(everything.events) == lifecycle(10)


def test_two_servers_and_a_processor_on_one_store_every_event_once_and_in_order(processes, setup):
    """The "Done when" check: one client submits through one server, another follows /events on the other."""
    env, token = setup
    first, second = start_server(processes, env), start_server(processes, env)
    follower = EventReader(second.url + "/api/events", token)
    wait_for(lambda: follower.comments, what="the stream to open")
    worker = processes.spawn(["run", "--forever"], env)
    jobs = []
    with first.client(token) as client:
        for n in range(3):
            jobs.append(client.post("/api/bulk-generate", json=articles(10, f"Job{n}")).json()["bulk_job_id"])
        client.post(f"/api/bulk-generate/{jobs[2]}/cancel")
    wait_for(lambda: sum(e.event in ("bulk.completed", "bulk.cancelled") for e in follower.events) == 3,
             timeout=60, what="every job's end")
    worker.terminate()
    ids = [e.id for e in follower.events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    for job in jobs[:2]:
        assert names(job_events(follower, job)) == lifecycle(10)
    assert job_events(follower, jobs[2])[-1].event in ("item.cancelled", "bulk.cancelled")
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(env["XDG_DATA_HOME"] + "/bulkgen/bulkgen.db", "read") as store:
        logged = [c.seq for c in store.changes_since(0, 10_000) if c.bulk_job_id in jobs]
    assert ids == logged  # nothing missing, nothing extra


def test_idle_streams_get_heartbeats_and_see_only_their_users_jobs(processes, tmp_path):
    env = base_env(tmp_path)
    alice, bob = make_token(env, "alice"), make_token(env, "bob")
    server = start_server(processes, env, "--heartbeat", "0.2")
    bobs = EventReader(server.url + "/api/events", bob)
    wait_for(lambda: len(bobs.comments) >= 3, what="heartbeat comments on an idle stream")
    assert ": heartbeat" in bobs.comments
    with server.client(alice) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
        client.post(f"/api/bulk-generate/{job}/pause")
    alices = EventReader(server.url + "/api/events", alice, last_id=0)
    wait_for(lambda: [e.event for e in alices.events] == ["bulk.queued", "bulk.paused"], what="alice's events")
    assert bobs.events == []
