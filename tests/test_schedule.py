"""Priorities and scheduled starts (`submit --priority`, `--not-before`)."""

from __future__ import annotations

import datetime as dt
import json
import signal

import pytest

from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.settings import parse_when
from tests.cli_helpers import EXAMPLES, env_for, status_of, submit_file
from tests.conftest import wait_for
from tests.files import write_articles

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def test_parse_when():
    assert parse_when("+30m", NOW) == NOW + dt.timedelta(minutes=30)
    assert parse_when("+2h", NOW) == NOW + dt.timedelta(hours=2)
    assert parse_when("+1d", NOW) == NOW + dt.timedelta(days=1)
    assert parse_when("+90s", NOW) == NOW + dt.timedelta(seconds=90)
    assert parse_when("2026-12-01T09:00:00+01:00", NOW) == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.timezone.utc)
    assert parse_when("2026-12-01T09:00Z", NOW) == dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
    local = dt.datetime(2026, 12, 1, 9, 0).astimezone().astimezone(dt.timezone.utc)
    assert parse_when("2026-12-01T09:00", NOW) == local  # no zone: local time
    for bad in ("tomorrow", "+2y", "2026-13-01", ""):
        with pytest.raises(UsageError):
            parse_when(bad, NOW)


def test_priority_goes_first(cli):
    normal = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    low = cli("submit", str(EXAMPLES / "trends.yaml"), "--priority", "low").out.strip()
    high = cli("submit", str(EXAMPLES / "keywords.yaml"), "--priority", "high").out.strip()
    urgent = cli("submit", str(EXAMPLES / "articles.yaml"), "--priority", "urgent").out.strip()  # the operator's
    assert cli("run").code == 0
    started = {j: json.loads(cli("status", j, "--json").out)["bulk_job"] for j in (normal, low, high, urgent)}
    assert started[high]["priority"] == "high" and started[low]["priority"] == "low"
    order = sorted(started, key=lambda j: started[j]["started_at"])
    assert order == [urgent, high, normal, low]  # one user's jobs: by priority (turns are between users)
    assert "high" in cli("list").out
    assert cli("submit", str(EXAMPLES / "articles.yaml"), "--priority", "top").code == 2


def test_scheduled_job_waits_and_run_says_so(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml"), "--not-before", "+2h").out.strip()
    doc = json.loads(cli("status", bulk_id, "--json").out)
    start = dt.datetime.fromisoformat(doc["bulk_job"]["not_before"])
    created = dt.datetime.fromisoformat(doc["bulk_job"]["created_at"])
    assert dt.timedelta(hours=2) - dt.timedelta(seconds=5) < start - created <= dt.timedelta(hours=2)
    assert "Starts" in cli("status", bulk_id).out
    result = cli("run")
    assert result.code == 0 and "`bulkgen run --forever` waits for it" in result.err
    assert json.loads(cli("status", bulk_id, "--json").out)["progress"]["completed"] == 0
    assert cli("submit", str(EXAMPLES / "articles.yaml"), "--not-before", "soonish").code == 2


def test_forever_wakes_up_for_a_scheduled_job(tmp_path, processes):
    env = env_for(tmp_path)
    bulk_id = submit_file(env, EXAMPLES / "articles.yaml", "--not-before", "+2s")
    proc = processes.spawn(["run", "--forever"], env)
    wait_for(lambda: status_of(env, bulk_id)["bulk_job"]["status"] == "completed", timeout=30, interval=0.3,
             what="the scheduled job to run")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    job = status_of(env, bulk_id)["bulk_job"]
    assert job["started_at"] >= job["not_before"]


def big_file(tmp_path, n):
    return write_articles(tmp_path / "big.yaml", [f"T{i:03d}" for i in range(n)], name="Big")


def test_split_sizes():
    from bulkgen_cli.core.model import split_sizes

    assert split_sizes(50) == [50]
    assert split_sizes(51) == [26, 25]
    assert split_sizes(120) == [40, 40, 40]
    assert split_sizes(101) == [34, 34, 33]
    assert all(10 <= size <= 50 for n in range(51, 2000) for size in split_sizes(n))
    assert all(sum(split_sizes(n)) == n for n in range(10, 2000))


def test_more_than_50_needs_split(cli, tmp_path):
    result = cli("submit", str(big_file(tmp_path, 51)))
    assert result.code == 2 and "Use --split" in result.err


def test_split_makes_balanced_jobs_in_file_order(cli, tmp_path):
    result = cli("submit", str(big_file(tmp_path, 101)), "--split", "--idempotency-key", "k")
    ids = result.out.split()
    assert result.code == 0 and len(ids) == 3
    docs = [json.loads(cli("status", i, "--json").out) for i in ids]
    assert [d["bulk_job"]["total_items"] for d in docs] == [34, 34, 33]
    assert [d["bulk_job"]["name"] for d in docs] == ["Big (1/3)", "Big (2/3)", "Big (3/3)"]
    topics = [j["topic"] for d in docs for j in d["jobs"]]
    assert topics == [f"T{i:03d}" for i in range(101)]
    group = docs[0]["bulk_job"]["group_id"]
    assert group and all(d["bulk_job"]["group_id"] == group for d in docs)
    # The same key again stores nothing new.
    again = cli("submit", str(big_file(tmp_path, 101)), "--split", "--idempotency-key", "k")
    assert again.out.split() == ids and len(json.loads(cli("list", "--json").out)) == 3
    grouped = json.loads(cli("status", "--group", group, "--json").out)
    assert [b["id"] for b in grouped["bulk_jobs"]] == ids
    assert grouped["progress"] == {"total": 101, "completed": 0, "failed": 0, "cancelled": 0, "remaining": 101,
                                   "percentage": 0}
    assert cli("run").code == 0
    done = cli("watch", "--group", group, "--json")
    assert done.code == 0 and json.loads(done.out)["progress"]["completed"] == 101
    assert "Group " in cli("status", "--group", group).out
    assert cli("status", "--group", "nope").code == 3
    assert cli("status").code == 2


def test_split_wait_and_json(cli, tmp_path):
    result = cli("submit", str(big_file(tmp_path, 60)), "--split", "--wait", "--json")
    assert result.code == 0
    docs = json.loads(result.out)
    assert [d["total_items"] for d in docs] == [30, 30] and all(d["status"] == "completed" for d in docs)
