"""The CI-sized chaos run (bench/chaos.py): real processes, kills, control commands, a flaky service.

Processors are also stalled (SIGSTOP past the lease, then SIGCONT). The duplicate accounting itself is
checked on made-up request logs below.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.cli_helpers import ROOT

_spec = importlib.util.spec_from_file_location("bench_chaos", ROOT / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)


def run_chaos(*args: str) -> subprocess.CompletedProcess:
    """bench/chaos.py with 4 jobs, 2 processors, 20 s and ARGS; its report is printed, and it must pass."""
    proc = subprocess.run([sys.executable, "bench/chaos.py", "--jobs", "4", "--processors", "2",
                           "--seconds", "20", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def most_in_flight(stdout: str) -> int:
    """The most requests in flight at once, leaving out those held open by a stopped (SIGSTOP) processor:
    its socket stays open at the service while a peer takes its item over, as fencing allows."""
    line = stdout.split("most in flight at once: ")[1].splitlines()[0]
    if "(not counting requests open across a stall: " in line:
        return int(line.split("(not counting requests open across a stall: ")[1].rstrip(")"))
    return int(line.split()[0])


def test_chaos_run_keeps_every_invariant():
    proc = run_chaos("--seed", "3")
    assert "items lost: 0" in proc.stdout and most_in_flight(proc.stdout) == 1
    assert "jobs stuck (state not what its items say): 0" in proc.stdout
    assert "unexplained duplicate requests: 0" in proc.stdout
    assert "items with more than one article generated: 0" in proc.stdout
    assert "all invariants held" in proc.stdout


def test_chaos_run_with_concurrency_3():
    proc = run_chaos("--seed", "4", "--concurrency", "3")
    assert "items lost: 0" in proc.stdout and "all invariants held" in proc.stdout
    assert 1 <= most_in_flight(proc.stdout) <= 3


# -- the duplicate accounting, on made-up request logs ------------------------------------


def req(job: str, start: float, end: float | None, outcome: str | None) -> dict:
    return {"job_id": job, "start": start, "end": end, "outcome": outcome, "token": None}


def test_most_in_flight_leaves_out_requests_held_open_by_a_stall():
    assert most_in_flight("most in flight at once: 1\n") == 1
    assert most_in_flight("most in flight at once: 2 (not counting requests open across a stall: 1)\n") == 1
    assert most_in_flight("most in flight at once: 3 (not counting requests open across a stall: 2)\n") == 2


def test_retries_after_an_ended_try_are_not_duplicates():
    log = [req("a", 0, 1, "http-500"), req("a", 2, 3, "closed-by-client"), req("a", 4, 5, "ok"),
           req("b", 0, 1, "ok")]
    counts, unexplained = chaos.duplicates(log, kills=[], stalls=[])
    assert counts["beyond the first"] == 2 and counts["retries"] == 2 and counts["extra"] == 0
    assert unexplained == []


def test_a_request_while_another_is_open_needs_an_explanation():
    overlapping = [req("a", 0, 5, "ok"), req("a", 1, 2, "ok")]
    counts, unexplained = chaos.duplicates(overlapping, kills=[], stalls=[])
    assert counts["extra"] == 1 and counts["unexplained"] == 1 and unexplained == ["a"]
    # The earlier one was open when a processor was stalled (or killed): explained.
    assert chaos.duplicates(overlapping, kills=[], stalls=[0.5])[0]["stall"] == 1
    assert chaos.duplicates(overlapping, kills=[5.0], stalls=[])[0]["kill"] == 1
    # A stall after both ended explains nothing.
    assert chaos.duplicates(overlapping, kills=[], stalls=[6])[0]["unexplained"] == 1


def test_a_request_after_an_article_needs_an_explanation():
    after_ok = [req("a", 0, 1, "ok"), req("a", 3, 4, "ok")]
    assert chaos.duplicates(after_ok, kills=[], stalls=[])[0]["unexplained"] == 1
    # Killed after the reply was written but before it was recorded: the window does not cover it.
    assert chaos.duplicates(after_ok, kills=[1.5], stalls=[])[0]["unexplained"] == 1
    assert chaos.duplicates(after_ok, kills=[0.5], stalls=[])[0]["kill"] == 1


def test_harmless_outcomes_explain_an_extra_request():
    # The newer request was refused by fencing (or aborted by its client): nothing generated.
    for outcome in ("stale", "closed-by-client"):
        counts, unexplained = chaos.duplicates([req("a", 0, 5, "ok"), req("a", 1, 2, outcome)], kills=[], stalls=[])
        assert counts[outcome] == 1 and unexplained == []
    # The older one, still open, later turned stale at reply time.
    counts, _ = chaos.duplicates([req("a", 0, 5, "stale"), req("a", 1, 2, "ok")], kills=[], stalls=[])
    assert counts["stale"] == 1 and counts["unexplained"] == 0
    # Every earlier request it collides with must be explained, not just one.
    log = [req("a", 0, 9, "closed-by-client"), req("a", 1, 9, "ok"), req("a", 2, 3, "ok")]
    assert chaos.duplicates(log, kills=[], stalls=[])[0]["unexplained"] == 1


def test_a_request_that_never_ended_is_open_at_every_later_moment():
    log = [req("a", 0, None, None), req("a", 1, 2, "ok")]
    assert chaos.duplicates(log, kills=[], stalls=[])[0]["unexplained"] == 1
    assert chaos.duplicates(log, kills=[], stalls=[0.5])[0]["stall"] == 1
    assert chaos.duplicates(log, kills=[30], stalls=[])[0]["kill"] == 1


def test_most_in_flight_leaves_out_requests_open_across_a_stall():
    log = [req("a", 0, 5, "closed-by-client"), req("a", 3, 4, "ok"), req("b", 4, 6, "ok")]
    assert chaos.most_in_flight(log, stalls=[]) == 2
    assert chaos.most_in_flight(log, stalls=[1]) == 1
    assert chaos.most_in_flight([req("a", 0, 1, "ok"), req("a", 1, 2, "ok")], stalls=[]) == 1  # back to back


def doc(status: str, *items: str, counters: tuple[int, int, int] | None = None) -> dict:
    bulk = {"status": status}
    if counters is not None:
        bulk.update(zip(("completed_items", "failed_items", "cancelled_items"), counters))
    return {"bulk_job": bulk, "jobs": [{"status": s} for s in items]}


def test_a_job_is_stuck_when_its_state_is_not_what_its_items_say():
    docs = {"done": doc("completed", "completed", "failed"), "cut": doc("cancelled", "cancelled", "completed"),
            "running": doc("processing", "completed", "queued"), "paused": doc("paused", "queued"),
            "no-end": doc("processing", "completed", "completed"), "early": doc("completed", "queued"),
            "behind": doc("completed", "completed", "completed", counters=(1, 0, 0))}
    assert [line.split(":")[0] for line in chaos.stuck_jobs(docs)] == ["no-end", "early", "behind"]


def test_the_stuck_check_reads_the_store_itself_not_status(tmp_path):
    """`status` shows an unrecorded end as its items say; the chaos check must see the stored job."""
    from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
    from bulkgen_cli.store.sqlite import SqliteStore
    from tests.conftest import claim, submit

    path = tmp_path / "bulkgen.db"
    with SqliteStore(path) as store:
        bulk = submit(store, 2)
        for _ in range(2):
            item = claim(store, "p1", 30, utcnow())
            store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), utcnow())
        store.db.execute("UPDATE bulk_jobs SET status = 'processing', completed_items = 1 WHERE id = ?", (bulk.id,))
    (line,) = chaos.stuck_jobs(chaos.stored_jobs(path, [bulk.id]))
    assert line == f"{bulk.id}: processing with 0 items pending, counters (1, 0, 0)"


def post(event_id: str, at: float) -> dict:
    return {"body": {"event_id": event_id}, "at": at}


def test_an_event_delivered_again_is_explained_only_by_a_kill_between_the_two():
    posts = [post("e1", 1.0), post("e2", 2.0), post("e1", 5.0)]
    assert chaos.repeated_events(posts, kills=[]) == (0, 1)
    assert chaos.repeated_events(posts, kills=[3.0]) == (1, 0)
    assert chaos.repeated_events(posts, kills=[6.0]) == (0, 1)  # a kill after the second explains nothing
    assert chaos.repeated_events(posts[:2], kills=[]) == (0, 0)
