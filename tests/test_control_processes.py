"""Steering running processors from other processes, and surviving crashes.

Real `bulkgen` processes, one SQLite file, the reference service on a real socket.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time

from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import Reading, env_for, finish, run_cli, status_of, submit_file
from tests.conftest import wait_for
from tests.files import write_articles
from tests.test_fencing import check_requests


def submit(tmp_path, env, name, topics):
    return submit_file(env, write_articles(tmp_path / f"{name}.yaml", topics, name=name))


def status(env, bulk_id):
    return status_of(env, bulk_id, "--all-users")


def plain(prefix, n=10):
    return [f"{prefix} {i}" for i in range(1, n + 1)]


def assert_counters_true(env, bulk_id):
    doc = status(env, bulk_id)
    by = {s: sum(1 for j in doc["jobs"] if j["status"] == s) for s in ("completed", "failed", "cancelled")}
    b = doc["bulk_job"]
    assert (b["completed_items"], b["failed_items"], b["cancelled_items"]) == (by["completed"], by["failed"], by["cancelled"])
    return doc


def in_flight_job(service):
    reqs = [r for r in service.stats()["requests"] if r["end"] is None]
    return reqs[0]["job_id"] if reqs else None


def test_pause_while_in_flight(tmp_path, svc, processes):
    env = env_for(tmp_path, svc)
    a = submit(tmp_path, env, "A", ["A 1 [slow:1]"] + plain("A", 9))
    b = submit(tmp_path, env, "B", plain("B"))
    a_first = status(env, a)["jobs"][0]["id"]
    proc = processes.spawn(["run"], env)
    wait_for(lambda: in_flight_job(svc) == a_first, timeout=20, what="A's first item in flight")
    assert run_cli(["pause", a], env).code == 0
    paused_at = time.time()
    result = finish(proc)
    assert result.code == 0, result.err
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "paused"
    assert [j["status"] for j in doc["jobs"]] == ["completed"] + ["queued"] * 9  # in flight: finished, recorded
    a_ids = {j["id"] for j in doc["jobs"]}
    reqs = svc.stats()["requests"]
    assert not [r for r in reqs if r["job_id"] in a_ids and r["start"] > paused_at]
    assert status(env, b)["bulk_job"]["status"] == "completed"  # other jobs went on
    # Resumed, A continues where it stopped, in order.
    assert run_cli(["resume", a], env).code == 0
    assert status(env, a)["bulk_job"]["status"] == "processing"
    assert run_cli(["run"], env).code == 0
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "completed" and doc["progress"]["completed"] == 10
    order = [r["job_id"] for r in svc.stats()["requests"] if r["job_id"] in a_ids]
    assert order == [j["id"] for j in doc["jobs"]]


def test_cancel_aborts_the_request_in_flight(tmp_path, svc, processes):
    env = env_for(tmp_path, svc)
    a = submit(tmp_path, env, "A", ["A 1 [hang]"] + plain("A", 9))
    b = submit(tmp_path, env, "B", plain("B"))
    proc = processes.spawn(["run"], env)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the hanging request")
    result = run_cli(["cancel", a, "--json"], env)
    assert result.code == 0
    cancelled_at = time.time()
    # The service sees the connection closed: the processor polls twice a second.
    wait_for(lambda: svc.stats()["requests"][0]["outcome"] == "closed-by-client", timeout=3,
             what="the connection to close after cancel")
    closed_after = svc.stats()["requests"][0]["end"] - cancelled_at
    result = finish(proc)
    assert result.code == 0, result.err
    assert "its bulk job was cancelled" in result.err
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "cancelled" and doc["progress"]["cancelled"] == 10
    assert doc["jobs"][0]["error"] == "cancelled while its request was in flight"
    assert status(env, b)["progress"]["completed"] == 10
    assert closed_after < 3


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def recover(env, lease="1"):
    """A new processor: it waits for the dead one's leases, then finishes the work."""
    result = run_cli(["run", "--lease", lease], env, timeout=120)
    assert result.code == 0, result.err
    return result


def kill_then_recover(env, proc, lease="1"):
    kill(proc)
    return recover(env, lease)


def test_sigkill_after_claim_before_the_request(tmp_path, svc, processes):
    env = env_for(tmp_path, svc)
    a = submit(tmp_path, env, "A", plain("A"))
    second = status(env, a)["jobs"][1]["id"]
    # The delay before the second request keeps the claimed item waiting, unsent.
    proc = processes.spawn(["run", "--delay", "60", "--lease", "1"], env)
    wait_for(lambda: status(env, a)["jobs"][1]["status"] == "processing", timeout=20, what="the second claim")
    kill_then_recover(env, proc)
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "completed" and doc["progress"]["completed"] == 10
    # The lost claim sent nothing, so it is not charged (design.md, "When a try counts").
    assert doc["jobs"][1]["attempts"] == 1 and doc["jobs"][1]["retry_count"] == 0
    requests = [r["job_id"] for r in svc.stats()["requests"]]
    assert requests.count(second) == 1 and len(requests) == 10  # nothing requested twice


def first_item_in_flight(tmp_path, svc, processes, topic, lease, what="the request in flight"):
    """Job A: `topic`, then nine plain items; a processor with --lease `lease` sends the first.
    Returns the env, A's id, the first item's id and the processor."""
    env = env_for(tmp_path, svc)
    a = submit(tmp_path, env, "A", [topic] + plain("A", 9))
    first = status(env, a)["jobs"][0]["id"]
    proc = processes.spawn(["run", "--lease", lease], env)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what=what)
    return env, a, first, proc


def test_sigkill_during_the_request(tmp_path, svc, processes):
    env, a, first, proc = first_item_in_flight(tmp_path, svc, processes, "A 1 [hang:1]", lease="1")
    kill_then_recover(env, proc)
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "completed" and doc["progress"]["completed"] == 10
    assert doc["jobs"][0]["attempts"] == 2
    outcomes = [r["outcome"] for r in svc.stats()["requests"] if r["job_id"] == first]
    assert outcomes == ["closed-by-client", "ok"]  # the killed try, then one success


def test_sigkill_after_the_reply_before_recording(tmp_path, svc, processes):
    env, a, first, proc = first_item_in_flight(tmp_path, svc, processes, "A 1 [slow:0.5]", lease="3")
    # Hold the store's write lock: the reply arrives, but the processor cannot record it.
    db = sqlite3.connect(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", timeout=30, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        wait_for(lambda: svc.stats()["requests"][0]["outcome"] == "ok", timeout=10, what="the reply to be sent")
        time.sleep(0.2)  # let the processor reach its write; it is blocked there either way
        kill(proc)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert status(env, a)["jobs"][0]["status"] == "processing"  # the reply was never recorded
    recover(env, lease="3")
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "completed" and doc["progress"]["completed"] == 10
    assert doc["jobs"][0]["attempts"] == 2 and doc["jobs"][0]["status"] == "completed"
    assert [r["job_id"] for r in svc.stats()["requests"]].count(first) == 2


def test_lease_is_renewed_during_a_long_request(tmp_path, svc, processes):
    env, a, _, proc = first_item_in_flight(tmp_path, svc, processes, "A 1 [slow:4]", lease="1.5",
                                           what="the long request")
    procs = [proc]
    procs.append(processes.spawn(["run", "--lease", "1.5"], env))  # would take over a lease that lapsed
    for proc in procs:
        result = finish(proc)
        assert result.code == 0, result.err
    doc = assert_counters_true(env, a)
    assert doc["jobs"][0]["attempts"] == 1 and doc["progress"]["completed"] == 10
    requested = [r["job_id"] for r in svc.stats()["requests"]]
    assert sorted(requested) == sorted(j["id"] for j in doc["jobs"])  # every item exactly once
    assert svc.stats()["max_in_flight"] == 1


def test_attached_run_shows_progress_and_takes_over_when_the_processor_dies(tmp_path, svc, processes):
    env = env_for(tmp_path, svc)
    a = submit(tmp_path, env, "A", ["A 1 [hang:1]"] + plain("A", 9))
    first = processes.spawn(["run", "--lease", "1"], env)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the first processor's request")
    attached = Reading(processes.spawn(["run", "--lease", "1"], env))
    wait_for(lambda: attached.said("attached to it"), timeout=60, what="the second run to attach")
    kill(first)
    result = attached.finish(timeout=120)
    assert result.code == 0, result.err
    assert "attached to it" in result.err and "0 of 10 completed" in result.err
    assert "Processed 10 items" in result.err  # it took over: the killed item and the rest
    doc = assert_counters_true(env, a)
    assert doc["bulk_job"]["status"] == "completed"


def test_attached_run_exits_when_idle_without_processing(tmp_path, svc, processes):
    env = env_for(tmp_path, svc, BULKGEN_DELAY="0.05")
    submit(tmp_path, env, "A", ["A 1 [slow:5]"] + plain("A", 19))  # the watcher attaches during the first
    worker = processes.spawn(["run"], env)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the worker's first request")
    watcher = run_cli(["run"], env, timeout=120)
    assert watcher.code == 0
    assert "attached to it" in watcher.err and "Nothing to process" in watcher.err
    result = finish(worker)
    assert result.code == 0 and "Processed 20 items" in result.err


def test_watch_follows_a_job_to_its_end(tmp_path, svc, processes):
    env = env_for(tmp_path, svc, BULKGEN_DELAY="0.05")
    a = submit(tmp_path, env, "A", ["A 1 [status:400]"] + plain("A", 9))
    watcher = processes.spawn(["watch", a, "--json"], env)
    worker = processes.spawn(["run"], env)
    watched = finish(watcher)
    assert watched.code == 1  # one item failed
    assert json.loads(watched.out)["progress"] == {"total": 10, "completed": 9, "failed": 1, "cancelled": 0,
                                                   "remaining": 0, "percentage": 100}
    assert "completed: 9 of 10 completed, 1 failed" in watched.err
    assert finish(worker).code == 0


def test_two_processors_and_a_stream_of_control_commands(tmp_path, svc, processes):
    rng = random.Random(7)
    env = env_for(tmp_path, svc)
    topics = lambda p: [f"{p} {i} [slow:0.05]" for i in range(10)]  # noqa: E731
    jobs = [submit(tmp_path, env, f"J{n}", topics(f"J{n}")) for n in range(4)]
    workers = [processes.spawn(["run", "--forever", "--lease", "2"], env) for _ in range(2)]
    store = SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db")
    try:
        for _ in range(25):
            action = rng.choice(["pause", "resume", "resume", "cancel", "pause"])
            result = run_cli([action, rng.choice(jobs)], env)
            assert result.code in (0, 4), result.err
            assert svc.stats()["in_flight"] <= 1
            assert len(store.in_flight()) <= 1  # design.md, "Invariants", 2, as the store sees it
        for job in jobs:
            run_cli(["resume", job], env)

        def all_ended():
            return all(status(env, j)["bulk_job"]["status"] in ("completed", "cancelled") for j in jobs)

        wait_for(all_ended, timeout=120, interval=0.3, what="every job to end")
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.communicate(timeout=30)
        store.close()
    assert sorted(w.returncode for w in workers) == [143, 143]
    stats = svc.stats()
    assert stats["max_in_flight"] == 1
    for job in jobs:
        doc = assert_counters_true(env, job)
        assert doc["progress"]["remaining"] == 0
        for j in doc["jobs"]:
            oks = [r for r in stats["requests"] if r["job_id"] == j["id"] and r["outcome"] == "ok"]
            if j["status"] == "completed":
                assert len(oks) == 1  # never completed twice
    check_requests(stats["requests"])  # no item generated twice, no two requests for one item at once
