"""Real `bulkgen` processes sharing one SQLite file and one service socket."""

from __future__ import annotations

import json
import re
import signal

from tests.cli_helpers import env_for, finish, run_cli, status_of, submit_file
from tests.conftest import wait_for
from tests.files import write_articles


def write_file(tmp_path, name, n, prefix):
    return write_articles(tmp_path / name, [f"{prefix} {i}" for i in range(n)])


def test_two_processors_started_at_once_stay_sequential(tmp_path, start_service, processes):
    service = start_service(latency=0.05)
    env = env_for(tmp_path, service)
    ids = [submit_file(env, write_file(tmp_path, f"f{n}.yaml", 10, f"Job{n}")) for n in range(2)]
    procs = [processes.spawn(["run"], env) for _ in range(2)]
    results = [finish(p, timeout=120) for p in procs]
    assert [r.code for r in results] == [0, 0], results
    stats = service.stats()
    assert stats["max_in_flight"] == 1
    requested = [r["job_id"] for r in stats["requests"]]
    assert len(requested) == 20 and len(set(requested)) == 20  # each item exactly once
    expected = []
    for bulk_id in ids:
        doc = status_of(env, bulk_id)
        assert doc["bulk_job"]["status"] == "completed"
        assert doc["progress"]["completed"] == 10
        expected += [j["id"] for j in doc["jobs"]]
    assert requested == expected  # FIFO: first job's items in order, then the second's
    # Between them the two processes report each item once.
    done = [int(m.group(1)) for r in results for m in re.finditer(r"Processed (\d+) items?", r.err)]
    assert sum(done) == 20


def test_concurrent_submits_all_land(tmp_path, processes):
    env = env_for(tmp_path)
    files = [write_file(tmp_path, f"f{n}.yaml", 10, f"S{n}") for n in range(6)]
    procs = [processes.spawn(["submit", str(f)], env) for f in files]
    ids = [finish(p).out.strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    listed = json.loads(run_cli(["list", "--json"], env).out)
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert all(j["total_items"] == 10 for j in listed)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_service_exits_5_and_charges_nothing(tmp_path):
    env = env_for(tmp_path, BULKGEN_API_URL=f"http://127.0.0.1:{free_port()}")
    bulk_id = submit_file(env, write_file(tmp_path, "f.yaml", 10, "T"))
    result = run_cli(["run", "--give-up", "0.3"], env)
    assert result.code == 5
    assert "could not be reached for 0.3 s" in result.err and "Traceback" not in result.err
    doc = status_of(env, bulk_id)
    assert all(j["status"] == "queued" and j["attempts"] == 0 for j in doc["jobs"])


def test_forever_picks_up_new_work_and_stops_on_sigterm(tmp_path, processes):
    env = env_for(tmp_path)
    proc = processes.spawn(["run", "--forever"], env)
    bulk_id = submit_file(env, write_file(tmp_path, "f.yaml", 10, "Late"))
    wait_for(lambda: status_of(env, bulk_id)["bulk_job"]["status"] == "completed", timeout=30, interval=0.2,
             what="the forever processor to finish the job")
    assert proc.poll() is None  # still waiting for more work
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=10)
    assert result.code == 143, result.err


def started_with_one_request_in_flight(tmp_path, service, processes, first, *run_args):
    """Submits `first` and nine plain items, starts `bulkgen run ARGS…` and waits for its first request."""
    env = env_for(tmp_path, service)
    bulk_id = submit_file(env, write_articles(tmp_path / "f.yaml", [first] + [f"T{i}" for i in range(9)]))
    proc = processes.spawn(["run", *run_args], env)
    wait_for(lambda: service.stats()["in_flight"] == 1, timeout=20, what="the request to start")
    return env, bulk_id, proc


def test_sigint_mid_request_hands_the_item_back_uncharged(tmp_path, svc, processes):
    env, bulk_id, proc = started_with_one_request_in_flight(tmp_path, svc, processes, "Hangs [hang]", "--grace", "0.3")
    proc.send_signal(signal.SIGINT)
    result = finish(proc, timeout=10)
    assert result.code == 130, result.err
    wait_for(lambda: svc.stats()["requests"][0]["outcome"] == "closed-by-client", timeout=5,
             what="the service to see the connection closed")
    doc = status_of(env, bulk_id)
    first = doc["jobs"][0]
    assert first["status"] == "queued" and first["attempts"] == 0
    assert doc["bulk_job"]["completed_items"] == 0
    assert "went back to the queue" in result.err


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, svc, processes):
    env, bulk_id, proc = started_with_one_request_in_flight(tmp_path, svc, processes, "Slow [slow:1]")  # grace: 10 s
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=20)
    assert result.code == 143, result.err
    stats = svc.stats()
    assert [r["outcome"] for r in stats["requests"]] == ["ok"]  # no new request after the signal
    doc = status_of(env, bulk_id)
    assert doc["jobs"][0]["status"] == "completed" and doc["jobs"][0]["attempts"] == 1
    assert [j["status"] for j in doc["jobs"][1:]] == ["queued"] * 9
    assert doc["bulk_job"]["completed_items"] == 1


def test_concurrency_is_bounded_across_processes(tmp_path, start_service, processes):
    """Two processes with --concurrency 3: up to three requests at once in the whole store, never four."""
    service = start_service(latency=0.3)
    env = env_for(tmp_path, service)
    ids = [submit_file(env, write_file(tmp_path, f"c{n}.yaml", 15, f"C{n}")) for n in range(2)]
    procs = [processes.spawn(["run", "--concurrency", "3"], env) for _ in range(2)]
    results = [finish(p, timeout=120) for p in procs]
    assert [r.code for r in results] == [0, 0], results
    stats = service.stats()
    assert stats["max_in_flight"] == 3
    requested = [r["job_id"] for r in stats["requests"]]
    assert len(requested) == 30 and len(set(requested)) == 30
    for bulk_id in ids:
        doc = status_of(env, bulk_id)
        assert doc["progress"]["completed"] == 15 and doc["bulk_job"]["status"] == "completed"


def test_concurrency_one_stays_sequential_beside_a_wider_processor(tmp_path, start_service):
    service = start_service(latency=0.2)
    env = env_for(tmp_path, service)
    submit_file(env, write_file(tmp_path, "s.yaml", 10, "S"))
    result = run_cli(["run", "--concurrency", "1"], env)
    assert result.code == 0
    assert service.stats()["max_in_flight"] == 1
    assert sorted(service.stats()["generated_per_job"].values()) == [1] * 10  # each item once


def test_a_429_cools_down_every_slot(tmp_path, svc):
    env = env_for(tmp_path, svc)
    path = write_articles(tmp_path / "r.yaml", ["Busy [429:1] [retry-after:1]"] + [f"T{i} [slow:0.1]" for i in range(9)])
    bulk_id = submit_file(env, path)
    result = run_cli(["run", "--concurrency", "2"], env)
    assert result.code == 0, result.err
    reqs = svc.stats()["requests"]
    [limited] = [r for r in reqs if r["outcome"] == "http-429"]
    # A request another slot sent in the moment before the 429 reached the store is fair;
    # after that, nothing may start until the cooldown (1 s) is over.
    stored_by = limited["end"] + 0.25
    started_during = [r for r in reqs if stored_by < r["start"] < limited["end"] + 0.95]
    assert [round(r["start"] - limited["end"], 3) for r in started_during] == []
    assert any(r["start"] >= limited["end"] + 0.95 for r in reqs)
    doc = status_of(env, bulk_id)
    assert doc["progress"]["completed"] == 10 and doc["jobs"][0]["attempts"] == 1  # the 429 was not charged
