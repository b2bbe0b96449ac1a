"""Real `bulkgen` processes sharing one SQLite file and one service socket."""

from __future__ import annotations

import json

from bulkgen_cli.content.reference import ReferenceService
from tests.cli_helpers import base_env, run_cli, spawn


def write_file(tmp_path, name, n, prefix):
    path = tmp_path / name
    path.write_text("items:\n" + "".join(f"  - topic: {prefix} {i}\n" for i in range(n)), encoding="utf-8")
    return path


def test_two_processors_started_at_once_stay_sequential(tmp_path):
    service = ReferenceService(latency=0.05).start()
    try:
        env = base_env(tmp_path) | {"BULKGEN_API_URL": service.url}
        ids = [run_cli(["submit", str(write_file(tmp_path, f"f{n}.yaml", 10, f"Job{n}"))], env).out.strip()
               for n in range(2)]
        procs = [spawn(["run"], env) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        stats = service.stats()
    finally:
        service.stop()
    assert stats["max_in_flight"] == 1
    requested = [r["job_id"] for r in stats["requests"]]
    assert len(requested) == 20 and len(set(requested)) == 20  # each item exactly once
    expected = []
    for bulk_id in ids:
        doc = json.loads(run_cli(["status", bulk_id, "--json"], env).out)
        assert doc["bulk_job"]["status"] == "completed"
        assert doc["progress"]["completed"] == 10
        expected += [j["id"] for j in doc["jobs"]]
    assert requested == expected  # FIFO: first job's items in order, then the second's
    # Between them the two processes report each item once.
    import re

    done = [int(m.group(1)) for _, err in outs for m in re.finditer(r"Processed (\d+) items", err)]
    assert sum(done) == 20


def test_concurrent_submits_all_land(tmp_path):
    env = base_env(tmp_path)
    files = [write_file(tmp_path, f"f{n}.yaml", 10, f"S{n}") for n in range(6)]
    procs = [spawn(["submit", str(f)], env) for f in files]
    ids = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    listed = json.loads(run_cli(["list", "--json"], env).out)
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert all(j["total_items"] == 10 for j in listed)
