"""Schedules with real processes: two `bulkgen run --forever` on one SQLite store submit each occurrence once
(design.md, "Exactly once per occurrence"), record the runs they missed, and an idle one wakes up for a run.

An occurrence is made due without waiting for a cron minute: the test moves the schedule's stored next
time back (as a processor that was down for days would find it), then starts the processors.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from bulkgen_cli.ops import schedules
from bulkgen_cli.core.model import ItemStatus, iso, utcnow
from bulkgen_cli.store import rules
from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import EXAMPLES, ROOT, env_for, finish, run_cli
from tests.conftest import wait_for

UTC = dt.timezone.utc


def far_cron(now: dt.datetime, minute_offset: int = 0) -> str:
    """Daily at a time about 12 hours from now: no new occurrence falls due while a test runs."""
    return f"{(now.minute + minute_offset) % 60} {(now.hour + 12) % 24} * * *"


def missed(path, user: str, name: str, days: int) -> dt.datetime:
    """Move the schedule's next time `days` runs back, as if no processor ran since; its latest due run."""
    with SqliteStore(path, "write") as store:
        schedule = store.get_schedule(user, name)
        latest = next(schedules.occurrences(schedule.cron, schedule.zone, utcnow(), reverse=True))
        assert store.advance_schedule(schedule.id, schedule.next_at, schedule.last_at,
                                      {"next_at": latest - dt.timedelta(days=days)})
    return latest


def scheduled(path):
    with SqliteStore(path, "read") as store:
        found = {s.name: s for s in store.list_schedules()}
        bulks = [b for b in store.list_bulks(None, 1000) if (b.idempotency_key or "").startswith("schedule:")]
        occurrences = {name: store.list_occurrences(s.id) for name, s in found.items()}
    return found, bulks, occurrences


def test_two_processors_submit_each_occurrence_once_and_record_what_was_skipped(tmp_path, processes):
    path = tmp_path / "store.db"
    env = env_for(tmp_path, BULKGEN_STORE=f"sqlite:///{path}", BULKGEN_USER="alice")
    now = utcnow()
    for name, offset in (("morning", 0), ("later", 1)):
        added = run_cli(["schedule", "add", name, "--cron", far_cron(now, offset), str(EXAMPLES / "articles.yaml")], env)
        assert added.code == 0, added.err
    latest = {name: missed(path, "alice", name, days=3) for name in ("morning", "later")}
    first = processes.spawn(["run", "--forever"], env)
    second = processes.spawn(["run", "--forever"], env)

    def all_done():
        found, bulks, _ = scheduled(path)
        return (all(s.last_at is not None for s in found.values()) and len(bulks) >= 2
                and all(b.status == "completed" for b in bulks))

    wait_for(all_done, timeout=60, what="both schedules' runs queued and processed")
    found, bulks, occurrences = scheduled(path)
    outputs = []
    for proc in (first, second):
        proc.send_signal(signal.SIGTERM)
        outputs.append(finish(proc))
    assert [o.code for o in outputs] == [143, 143] and not any("Traceback" in o.err for o in outputs)
    assert sorted(b.idempotency_key for b in bulks) == sorted(
        rules.occurrence_key(found[name].id, at) for name, at in latest.items())  # one job per occurrence
    for name, at in latest.items():
        schedule = found[name]
        assert schedule.skipped_count == 3 and schedule.last_at == at
        assert schedule.skipped_recent == [f"{(at - dt.timedelta(days=d)).isoformat(timespec='milliseconds')[:-6]}Z"
                                           for d in (3, 2, 1)]
        assert [(o.state, o.skipped) for o in occurrences[name]] == [("submitted", 3)]
        assert schedule.next_at == at + dt.timedelta(days=1)
    lines = [line for o in outputs for line in o.err.splitlines() if line.startswith("schedule '")]
    assert len(lines) == 2 and all("3 earlier runs skipped" in line for line in lines), lines
    listed = json.loads(run_cli(["schedule", "list", "--json"], env).out)
    assert {s["name"]: s["skipped"]["count"] for s in listed} == {"morning": 3, "later": 3}


def test_an_idle_run_forever_queues_a_run_that_falls_due_and_processes_it(tmp_path, processes):
    path = tmp_path / "store.db"
    env = env_for(tmp_path, BULKGEN_STORE=f"sqlite:///{path}", BULKGEN_USER="alice")
    assert run_cli(["schedule", "add", "daily", "--cron", far_cron(utcnow()), str(EXAMPLES / "articles.yaml")],
                   env).code == 0
    proc = processes.spawn(["run", "--forever"], env)

    def holds_the_lease():
        with SqliteStore(path, "read") as store:
            return store.processor_lease() is not None

    wait_for(holds_the_lease, timeout=30, what="the processor to start")
    latest = missed(path, "alice", "daily", days=0)  # due now, nothing skipped

    def processed():
        _, bulks, _ = scheduled(path)
        if bulks:
            with SqliteStore(path, "read") as store:
                return all(i.status == ItemStatus.completed.value for i in store.list_items(bulks[0].id))
        return False

    wait_for(processed, timeout=30, what="the run queued and processed by the idle processor")
    proc.send_signal(signal.SIGTERM)
    result = finish(proc)
    assert result.code == 143
    found, bulks, _ = scheduled(path)
    assert len(bulks) == 1 and found["daily"].last_at == latest and found["daily"].skipped_count == 0
    assert "queued as bulk job" in result.err


def test_plain_run_queues_no_scheduled_run_and_says_who_does(cli, tmp_path):
    path = tmp_path / "store.db"
    env = {"BULKGEN_STORE": f"sqlite:///{path}", "BULKGEN_USER": "alice"}
    assert cli("schedule", "add", "daily", "--cron", far_cron(utcnow()), str(EXAMPLES / "articles.yaml"),
               env=env).code == 0
    result = cli("run")
    assert result.code == 0 and "Schedule 'daily' (alice): next run is" in result.err
    missed(path, "alice", "daily", days=1)
    result = cli("run")
    assert "Schedule 'daily' (alice): next run was due" in result.err and "only `bulkgen run --forever` queues" in result.err
    _, bulks, _ = scheduled(path)
    assert bulks == []


# -- a processor stopped in the middle of an occurrence (issue 17: "Occurrences fenced like items") -------------


def spawn_stalling(processes, env: dict[str, str], **knobs: str):
    """`run --forever` through tests/schedule_stall.py (a stall point and a shifted clock); cleaned up after."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.schedule_stall", "run", "--forever"], env=env | knobs,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    processes.spawned.append(proc)
    return proc


def stopped_at(stall, proc) -> bool:
    """The process said it stops there (the stall file), and is stopped (Linux: state T in /proc)."""
    if not stall.exists():
        return False
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


def stop_both(stopped, stall, running) -> None:
    """SIGTERM the running one; continue the stopped one and SIGTERM it: its look under way ends first."""
    running.send_signal(signal.SIGTERM)
    assert finish(running).code == 143
    os.kill(stopped.pid, signal.SIGCONT)
    stall.with_name(stall.name + ".go").touch()
    stopped.send_signal(signal.SIGTERM)
    result = finish(stopped)
    assert result.code == 143 and "Traceback" not in result.err, result.err


def one_daily_run_due(tmp_path):
    path = tmp_path / "store.db"
    env = env_for(tmp_path, BULKGEN_STORE=f"sqlite:///{path}", BULKGEN_USER="alice")
    assert run_cli(["schedule", "add", "daily", "--cron", far_cron(utcnow()), str(EXAMPLES / "articles.yaml")],
                   env).code == 0
    first = missed(path, "alice", "daily", days=0)  # due now, nothing skipped
    return path, env, first, first + dt.timedelta(days=1)


def queued_at(path, at):
    found, bulks, _ = scheduled(path)
    key = rules.occurrence_key(found["daily"].id, at)
    return [b for b in bulks if b.idempotency_key == key]


def test_a_processor_stopped_after_its_check_past_the_next_run_queues_nothing_the_other_recorded(tmp_path,
                                                                                               processes):
    """P1 claims O1, passes its still-owed check and is stopped; P2 (a day ahead) queues O2 and records O1 as
    skipped; P1 continues: it queues nothing, and O1's record says dropped (it used to queue O1 late)."""
    path, env, o1, o2 = one_daily_run_due(tmp_path)
    stall = tmp_path / "p1-stopped"
    p1 = spawn_stalling(processes, env, STALL_AT="_still_owed", STALL_FILE=str(stall))
    wait_for(lambda: stopped_at(stall, p1), timeout=30, what="P1 stopped after its check")
    p2 = spawn_stalling(processes, env, CLOCK_SHIFT="86400")
    wait_for(lambda: queued_at(path, o2) and scheduled(path)[0]["daily"].next_at > o2, timeout=30,
             what="P2 to queue the next run")
    stop_both(p1, stall, p2)
    found, bulks, occurrences = scheduled(path)
    daily = found["daily"]
    assert [b.idempotency_key for b in bulks] == [rules.occurrence_key(daily.id, o2)]
    assert {o.at: o.state for o in occurrences["daily"]} == {o1: "dropped", o2: "submitted"}
    assert daily.skipped_count == 1 and daily.skipped_recent == [iso(o1)] and daily.last_at == o2


def test_a_processor_stopped_after_deciding_has_its_run_queued_first_by_the_other(tmp_path, processes):
    """P1 decides O1 and is stopped before making its job; P2 (a day ahead: P1's claim is stale to it) queues
    O1 with its key, then O2; P1 continues: the key hands its job back, nothing is made twice or skipped."""
    path, env, o1, o2 = one_daily_run_due(tmp_path)
    stall = tmp_path / "p1-stopped"
    p1 = spawn_stalling(processes, env, STALL_AT="submit_for", STALL_FILE=str(stall))
    wait_for(lambda: stopped_at(stall, p1), timeout=30, what="P1 stopped after deciding")
    p2 = spawn_stalling(processes, env, CLOCK_SHIFT="86400")
    wait_for(lambda: queued_at(path, o2), timeout=30, what="P2 to queue both runs")
    stop_both(p1, stall, p2)
    found, bulks, occurrences = scheduled(path)
    daily = found["daily"]
    made = sorted(bulks, key=lambda b: (b.created_at, b.id))
    assert [b.idempotency_key for b in made] == [rules.occurrence_key(daily.id, at) for at in (o1, o2)]
    assert {o.at: (o.state, o.owner.endswith(":schedules")) for o in occurrences["daily"]} == {
        o1: ("submitted", True), o2: ("submitted", True)}
    assert daily.skipped_count == 0 and daily.last_at == o2 and daily.last_bulk_job_id == made[1].id
