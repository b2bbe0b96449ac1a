"""Live progress under careless and greedy clients, against a real `bulkgen serve` on 127.0.0.1 (design.md,
"Live progress"): hundreds of streams dropped while events flow, a replay of a large log, the per-token cap,
revocation. Each is bounded in count and time."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import pytest

from tests.cli_helpers import base_env, run_cli
from tests.conftest import wait_for
from tests.serve_helpers import EventReader, RawStream, articles, make_token, start_server


@pytest.fixture
def env(tmp_path):
    return base_env(tmp_path)


def store_path(env: dict[str, str]) -> str:
    return env["XDG_DATA_HOME"] + "/bulkgen/bulkgen.db"


class Toggler:
    """Pauses and resumes a job about 20 times a second in a thread, so that events flow all the time."""

    def __init__(self, server, token: str, job: str):
        self.stop = threading.Event()
        self.rounds = 0
        self.thread = threading.Thread(target=self.run, args=(server, token, job), daemon=True)
        self.thread.start()

    def run(self, server, token: str, job: str) -> None:
        with server.client(token) as client:
            while not self.stop.is_set():
                for action in ("pause", "resume"):
                    assert client.post(f"/api/bulk-generate/{job}/{action}").status_code == 200
                self.rounds += 1
                self.stop.wait(0.1)

    def end(self) -> None:
        self.stop.set()
        self.thread.join(30)


def test_streams_dropped_by_the_hundred_while_events_flow_leave_live_progress_working(processes, env):
    """Issue 18, item 1: B opens 200 streams, each mid-wait, and drops them all (half with a reset), three
    times, while B's job is paused and resumed 20 times a second; A's own pause must still reach A."""
    alice, bob = make_token(env, "alice"), make_token(env, "bob")
    server = start_server(processes, env, "--max-streams", "500")
    with server.client(alice) as client:
        mine = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    with server.client(bob) as client:
        theirs = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
    follower = EventReader(server.url + "/api/events", alice)
    wait_for(lambda: follower.comments, what="alice's stream to open")
    toggler = Toggler(server, bob, theirs)
    streams: list[RawStream] = []
    try:
        for cycle in range(3):
            streams = [RawStream(server, bob) for _ in range(200)]
            deadline = time.monotonic() + 20
            for stream in streams:  # every one answered and waiting for its next event
                assert stream.status() == 200
                stream.read(b"event: bulk.", deadline=deadline)
            for n, stream in enumerate(streams):
                stream.drop(reset=n % 2 == 0)
    finally:
        toggler.end()
        for stream in streams:
            stream.sock.close()
    assert toggler.rounds > 0
    with server.client(alice) as client:
        assert client.post(f"/api/bulk-generate/{mine}/pause").status_code == 200
    paused = time.monotonic()
    wait_for(lambda: any(e.event == "bulk.paused" and e.data["bulk_job_id"] == mine for e in follower.events),
             timeout=2.0, what="alice's pause on alice's stream within 2 s")
    assert time.monotonic() - paused <= 2.0
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    assert not any("Lock is not acquired" in line or "Traceback" in line for line in server.log)


def _fill_log(env: dict[str, str], user: str, bulk_id: str, count: int) -> None:
    """`count` changes of one job written straight into the store's change log (as a long history would be)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    db = sqlite3.connect(store_path(env), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO changes (kind, record_id, bulk_job_id, userId, status, at) VALUES (?, ?, ?, ?, ?, ?)",
                   (("bulk", bulk_id, bulk_id, user, ("paused", "queued")[n % 2], now) for n in range(count)))
    db.execute("COMMIT")
    db.close()


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


class PeakRss:
    """The largest VmRSS of a process seen while this runs (sampled every 10 ms in a thread)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, _rss_kib(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_kib(self.pid))

    def end(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def test_a_replay_of_100k_changes_pages_through_the_store_and_stops_at_a_hang_up(processes, env):
    """Issue 18, item 4: `Last-Event-ID: 0` over 100,000 changes in bounded memory (it read the whole log: ~170 MB
    per replay), and a client that hangs up mid-replay is not written to again (it was: 618k log lines)."""
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--max-streams", "1")
    with server.client(alice) as client:
        job = client.post("/api/bulk-generate", json=articles()).json()["bulk_job_id"]
        client.get(f"/api/bulk-generate/{job}")
    _fill_log(env, "alice", job, 100_000)
    before = _rss_kib(server.proc.pid)
    peak = PeakRss(server.proc.pid)
    whole = RawStream(server, alice, last_id=0)
    assert whole.status() == 200
    got = 0
    while got < 100_001:  # the job's own queued event, then the 100,000 written
        chunk = whole.sock.recv(1 << 20)
        assert chunk, "the replay ended early"
        got += chunk.count(b"\nevent: bulk.")
    grown_mib = (peak.end() - before) / 1024
    assert grown_mib < 30, f"the server grew {grown_mib:.0f} MiB during the replay"
    whole.drop(reset=False)

    second = wait_for(lambda: _admitted(server, alice, last_id=0), what="a stream once the first is gone")
    second.read(b"\0", limit=2 << 20)  # 2 MiB of the replay as fast as it comes, then hang up at once
    second.drop()
    third = wait_for(lambda: _admitted(server, alice), what="a stream once the hung-up replay ended")
    third.drop()
    failed = sum("socket.send() raised exception" in line for line in server.log)
    assert failed <= 3, f"{failed} writes to a client that had gone"


def _admitted(server, token: str, last_id: int | None = None) -> RawStream | None:
    """A stream the server took (200), or None when it refused it (429: the token's streams are all open)."""
    stream = RawStream(server, token, last_id=last_id)
    if stream.status() == 200:
        return stream
    stream.drop(reset=False)
    return None


def test_the_eleventh_stream_of_a_token_is_refused_with_429_and_retry_after(processes, env):
    alice, bob = make_token(env, "alice"), make_token(env, "bob")
    server = start_server(processes, env)
    held = [RawStream(server, alice) for _ in range(10)]
    assert [s.status() for s in held] == [200] * 10
    refused = RawStream(server, alice, path="/api/events")
    head = refused.read(b"}", deadline=time.monotonic() + 10)
    assert refused.status() == 429 and b"retry-after: 10" in head.lower()
    problem = json.loads(head.split(b"\r\n\r\n", 1)[1])
    assert problem["type"] == "urn:bulkgen:problem:too-many-streams" and "--max-streams" in problem["detail"]
    other = RawStream(server, bob)  # the cap is per token
    assert other.status() == 200
    held.pop().drop()
    again = wait_for(lambda: _admitted(server, alice), what="a stream once one of the ten was closed")
    for stream in (*held, refused, other, again):
        stream.drop()


def test_revoking_a_token_ends_its_open_streams_within_about_a_second(processes, env):
    """Issue 18, item 7: the revoked token's stream kept receiving events; revoked by another process here."""
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--heartbeat", "0.2")
    follower = EventReader(server.url + "/api/events", alice)
    job_stream = EventReader(server.url + "/api/events", alice, last_id=0)
    wait_for(lambda: follower.comments and job_stream.comments, what="the streams to open")
    token_id = json.loads(run_cli(["token", "list", "--json"], env).out)[0]["id"]
    assert run_cli(["token", "revoke", token_id], env).code == 0
    revoked = time.monotonic()
    wait_for(lambda: follower.ended and job_stream.ended, timeout=3.0, what="the revoked token's streams to end")
    assert time.monotonic() - revoked <= 2.0  # one check a second, shared by the token's streams
    assert follower.error is None and job_stream.error is None  # ended by the server, not broken
    again = httpx.get(server.url + "/api/events", headers={"Authorization": f"Bearer {alice}"}, timeout=5)
    assert again.status_code == 401
