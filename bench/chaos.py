"""A chaos run with real processes: does every invariant hold under a bad week?

    python bench/chaos.py                        # CI size: 4 jobs, 2 processors, 20 s of chaos
    python bench/chaos.py --jobs 20 --processors 3 --seconds 600 --seed 7     # the long run
    python bench/chaos.py --concurrency 3                                     # up to 3 items in flight
    python bench/chaos.py --no-stalls                                         # kills only, no SIGSTOP

Several bulk jobs, two or three `bulkgen run --forever` processes, the
reference service mixing successes, 500s, 429s, hangs, slow and malformed
replies, a stream of pause / resume / cancel / retry-failed from other
processes, processors killed with SIGKILL at random moments and restarted,
and (unless --no-stalls) processors stalled with SIGSTOP for longer than their
lease (2 s) at random moments, then continued with SIGCONT. Some kills are
aimed at a job's end: when a job has one item left in flight, the processor
holding it (its pid is in the item's lease owner) is killed a few milliseconds
after the service answered it, on the path that records the item, the job's
counters, its end and its notification.
At the end it prints, and checks: items lost, items requested beyond their
tries, counter drift, jobs stuck (a job whose state is not what its items say:
running with nothing pending, or ended with something pending), the most
requests in flight at once, notifications per job end (one event per end; a
second delivery of one event, with its Idempotency-Key, only when a processor
was killed between the two), the time from each cancel to the connection
closing, duplicate requests and articles generated more than once. Exit 1
when any check fails.

Duplicates, from the service's request log, per item (job_id), requests in the
order they arrived. A request beyond the item's first is a retry when every
earlier request for the item had ended, none with an article, before it
arrived (how many there may be is the "beyond their tries" check). Otherwise it
is an extra request: sent while an earlier one for the item was still open, or
after one had produced an article. An extra request is explained when it, or
every such earlier request, ended `closed-by-client` (the client aborted it or
died) or `stale` (refused by fencing, nothing generated), or was open when a
processor was killed or stalled (start <= kill/SIGSTOP time <= end, or it never
ended; the start taken 50 ms early, as the service notes it once the body is
read). Anything else is an unexplained duplicate; it fails the run, as does an
item with more than one article generated (the service's generated_per_job),
explained or not. Requests open across a stall are left out of the in-flight
and cancel-latency checks: the stalled processor cannot close them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bulkgen_cli.content.reference import ReferenceService  # noqa: E402
from bulkgen_cli.store.sqlite import SqliteStore  # noqa: E402
from tests.receivers import WebhookReceiver  # noqa: E402

STALL_SECONDS = (2.5, 4.0)  # longer than BULKGEN_LEASE_SECONDS below
#: The service notes a request's start once its body is read, a moment after the client sent it.
START_SLACK = 0.05
#: Outcomes of a request that generated nothing and blocked nothing: aborted by its client, refused by
#: fencing, or answered with the article kept for its Idempotency-Key.
HARMLESS = ("closed-by-client", "stale", "replayed")
DIRECTIVES = ["", "", "", "", "[fail:1]", "[429:1] [retry-after:0.2]", "[malformed]", "[hang:1]",
              "[slow:0.4]", "[status:400]", "[fail:5]"]


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def open_at(request: dict, moment: float) -> bool:
    return request["start"] - START_SLACK <= moment and (request["end"] is None or moment <= request["end"])


def explain(request: dict, kills: list[float], stalls: list[float]) -> str | None:
    """Why a request may have been duplicated: its outcome, or a kill or stall while it was open."""
    if request["outcome"] in HARMLESS:
        return request["outcome"]
    if any(open_at(request, t) for t in stalls):
        return "stall"
    if any(open_at(request, t) for t in kills):
        return "kill"
    return None


def duplicates(requests: list[dict], kills: list[float], stalls: list[float]) -> tuple[dict[str, int], list[str]]:
    """Sort every request beyond an item's first (see the module docstring); the unexplained, as job ids."""
    counts = {"beyond the first": 0, "retries": 0, "extra": 0, "closed-by-client": 0, "stale": 0, "replayed": 0,
              "kill": 0,
              "stall": 0, "unexplained": 0}
    unexplained: list[str] = []
    by_job: dict[str, list[dict]] = {}
    for r in requests:
        by_job.setdefault(r["job_id"], []).append(r)
    for job_id, seen in by_job.items():
        seen.sort(key=lambda r: r["start"])
        for k, r in enumerate(seen[1:], start=1):
            counts["beyond the first"] += 1
            colliding = [e for e in seen[:k]
                         if e["end"] is None or e["end"] > r["start"] or e["outcome"] == "ok"]
            if not colliding:
                counts["retries"] += 1
                continue
            counts["extra"] += 1
            reason = explain(r, kills, stalls)
            if reason is None:
                reasons = [explain(e, kills, stalls) for e in colliding]
                reason = None if None in reasons else reasons[0]
            if reason is None:
                counts["unexplained"] += 1
                unexplained.append(job_id)
            else:
                counts[reason] += 1
    return counts, sorted(set(unexplained))


def stored_jobs(store_path: Path, jobs: list[str]) -> dict[str, dict]:
    """Each job as the store holds it (status, counters) with its items' statuses: read from the file itself,
    since `status` shows an unrecorded end as the items say (repair.seen), which would hide a stuck job."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        out = {}
        for job in jobs:
            row = db.execute("SELECT status, completed_items, failed_items, cancelled_items FROM bulk_jobs"
                             " WHERE id = ?", (job,)).fetchone()
            items = [r[0] for r in db.execute("SELECT status FROM generation_jobs WHERE bulk_job_id = ?", (job,))]
            out[job] = {"bulk_job": dict(zip(("status", "completed_items", "failed_items", "cancelled_items"), row)),
                        "jobs": [{"status": s} for s in items]}
        return out
    finally:
        db.close()


def stuck_jobs(stored: dict[str, dict]) -> list[str]:
    """Jobs whose stored state is not what their items say: running with nothing pending, ended with something
    pending, or counters that differ from the items."""
    stuck = []
    for job, doc in stored.items():
        statuses = [i["status"] for i in doc["jobs"]]
        pending = sum(1 for s in statuses if s in ("queued", "processing"))
        bulk = doc["bulk_job"]
        ended = bulk["status"] in ("completed", "cancelled")
        counted = tuple(bulk.get(f"{s}_items", statuses.count(s)) for s in ("completed", "failed", "cancelled"))
        if ended == bool(pending) or counted != tuple(statuses.count(s) for s in ("completed", "failed", "cancelled")):
            stuck.append(f"{job}: {bulk['status']} with {pending} items pending, counters {counted}")
    return stuck


def repeated_events(posts: list[dict], kills: list[float]) -> tuple[int, int]:
    """Deliveries of an event already received: (explained by a kill between the two, unexplained)."""
    first: dict[str, float] = {}
    explained = unexplained = 0
    for post in sorted(posts, key=lambda p: p["at"]):
        event_id = post["body"]["event_id"]
        if event_id not in first:
            first[event_id] = post["at"]
        elif any(first[event_id] - START_SLACK <= t <= post["at"] for t in kills):
            explained += 1
        else:
            unexplained += 1
    return explained, unexplained


def holder_near_its_jobs_end(store_path: Path) -> tuple[int, str] | None:
    """(pid, item id) of a processor holding the last pending item of a job, if one does now."""
    with SqliteStore(store_path, mode="read") as store:
        for item in store.in_flight():
            pending = [i for i in store.list_items(item.bulk_job_id) if i.status in ("queued", "processing")]
            if len(pending) == 1 and item.lease_owner:
                return int(item.lease_owner.split(":")[1]), item.id
    return None


def most_in_flight(requests: list[dict], stalls: list[float]) -> int:
    """The most requests open at once in the log, leaving out those open when a processor was stalled."""
    events = []
    for r in requests:
        if any(open_at(r, t) for t in stalls):
            continue
        events += [(r["start"], 1), (r["end"] if r["end"] is not None else float("inf"), -1)]
    most = now = 0
    for _, step in sorted(events):  # at one instant an end (-1) sorts before a start
        now += step
        most = max(most, now)
    return most


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1, help="items in flight at most (run --concurrency)")
    parser.add_argument("--stalls", action=argparse.BooleanOptionalAction, default=True,
                        help=f"SIGSTOP processors for {STALL_SECONDS[0]:g}-{STALL_SECONDS[1]:g} s at random "
                             "(longer than their lease), then SIGCONT")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = tempfile.mkdtemp(prefix="bulkgen-chaos-")
    service = ReferenceService(fail_rate=0.05, seed=args.seed, latency=0.05).start()
    hook = WebhookReceiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
    env.update(XDG_DATA_HOME=folder, BULKGEN_USER="chaos", BULKGEN_API_URL=service.url, BULKGEN_DELAY="0",
               BULKGEN_BACKOFF="0.05", BULKGEN_TIMEOUT="1.5", BULKGEN_LEASE_SECONDS="2", BULKGEN_GRACE="0.5",
               BULKGEN_NOTIFY_RETRY="0.2,0.5")
    jobs = []
    for n in range(args.jobs):
        path = Path(folder) / f"job{n}.yaml"
        topics = [f"J{n} item {i} {rng.choice(DIRECTIVES)}".strip() for i in range(10)]
        path.write_text("items:\n" + "".join(f"  - topic: '{t}'\n" for t in topics))
        out = cli(["submit", str(path), "--notify", f"webhook:{hook.url}"], env)
        assert out.returncode == 0, out.stderr
        jobs.append(out.stdout.strip())

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bulkgen_cli", "run", "--forever", "--concurrency",
                                 str(args.concurrency)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [start() for _ in range(args.processors)]
    started_at = time.time()
    kill_times: list[float] = []
    stall_times: list[float] = []  # when each SIGSTOP was sent
    continued: dict[float, float] = {}  # SIGSTOP time -> when the processor was continued (or killed)
    stalled: dict[int, tuple[float, float]] = {}  # processor index -> (when (monotonic) to continue it, SIGSTOP time)

    def wake(everyone: bool = False) -> None:
        for index, (until, stopped_at) in list(stalled.items()):
            if everyone or time.monotonic() >= until:
                procs[index].send_signal(signal.SIGCONT)
                continued[stopped_at] = time.time()
                del stalled[index]

    def nap(seconds: float) -> None:
        """Sleep, continuing stalled processors when their stall is over."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            wake()
            time.sleep(min(left, 0.05))
        wake()

    store_path = Path(folder) / "bulkgen" / "bulkgen.db"
    aimed = 0

    def kill(victim: int) -> None:
        kill_times.append(time.time())
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        if victim in stalled:
            continued[stalled.pop(victim)[1]] = kill_times[-1]
        procs[victim] = start()

    def kill_at_a_jobs_end() -> bool:
        """Kill the holder of a job's last item just after the service answered it; False if none came in 3 s."""
        give_up = time.monotonic() + 3
        while time.monotonic() < give_up:
            found = holder_near_its_jobs_end(store_path)
            victims = [] if found is None else [i for i, p in enumerate(procs)
                                                if p.pid == found[0] and i not in stalled]
            if not victims:
                nap(0.01)
                continue
            answered_by = time.monotonic() + 2
            while time.monotonic() < answered_by:  # the request of that item is out: wait for its answer
                mine = [r for r in service.stats()["requests"] if r["job_id"] == found[1]]
                if mine and all(r["end"] is not None for r in mine):
                    time.sleep(rng.uniform(0, 0.02))  # somewhere on the path that records it
                    kill(victims[0])
                    return True
                time.sleep(0.002)
        return False

    actions: dict[str, int] = {}
    cancels: list[tuple[str, float]] = []
    rounds = {j: 1 for j in jobs}
    began = time.monotonic()
    deadline = began + args.seconds
    try:
        while time.monotonic() < deadline:
            nap(rng.uniform(0.1, 0.5))
            roll = rng.random()
            if roll < 0.1:
                kill(rng.randrange(len(procs)))
                continue
            if roll < 0.2:
                aimed += kill_at_a_jobs_end()
                continue
            if args.stalls and roll < 0.3:
                running = [i for i in range(len(procs)) if i not in stalled]
                if len(running) > 1:  # keep one processor going
                    victim = rng.choice(running)
                    stall_times.append(time.time())
                    procs[victim].send_signal(signal.SIGSTOP)
                    stalled[victim] = (time.monotonic() + rng.uniform(*STALL_SECONDS), stall_times[-1])
                continue
            action = rng.choice(["pause", "resume", "resume", "cancel", "retry-failed", "pause", "resume"])
            if action == "cancel" and rng.random() < 0.75:
                continue  # keep most jobs alive to the end
            job = rng.choice(jobs)
            asked_at = time.time()  # cancel latency counts from when the user typed it
            sent_at = time.monotonic()
            result = cli([action, job], env)
            took = time.monotonic() - sent_at
            if result.returncode not in (0, 4):
                print(f"unexpected exit {result.returncode} from {action} after {took:.2f} s: {result.stderr}", file=sys.stderr)
                return 1
            actions[action] = actions.get(action, 0) + 1
            if result.returncode == 0 and action == "cancel" and "->" in result.stderr:
                cancels.append((job, asked_at))
            if result.returncode == 0 and action == "retry-failed" and "->" in result.stderr:
                rounds[job] += 1
        while stalled:  # the last stalls run their course
            nap(0.05)
        for job in jobs:
            cli(["resume", job], env)

        def settled() -> bool:
            for job in jobs:
                doc = json.loads(cli(["status", job, "--json"], env).stdout)
                if doc["bulk_job"]["status"] not in ("completed", "cancelled"):
                    return False
                if any(n["state"] in ("pending", "sending") for n in doc["notifications"]):
                    return False
            return True

        chaos_over = time.monotonic()
        end_by = chaos_over + 180
        while not settled():
            if time.monotonic() > end_by:
                print("jobs did not settle within 180 s after the chaos; stuck: "
                      + "; ".join(stuck_jobs(stored_jobs(store_path, jobs)) or ["none by their items (notifications pending)"]),
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        settle_time = time.monotonic() - chaos_over
    finally:
        wake(everyone=True)
        stopping = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        quiet_by = time.monotonic() + 2  # let the service see the last connections close
        while service.stats()["in_flight"] and time.monotonic() < quiet_by:
            time.sleep(0.02)
        stats = service.stats()
        stop_time = time.monotonic() - stopping
        service.stop()
        hook.stop()

    lost = drift = beyond = 0
    docs = {job: json.loads(cli(["status", job, "--json"], env).stdout) for job in jobs}
    requests: dict[str, list[dict]] = {}
    for r in stats["requests"]:
        requests.setdefault(r["job_id"], []).append(r)
    for doc in docs.values():
        items = doc["jobs"]
        by = {s: sum(1 for i in items if i["status"] == s) for s in ("completed", "failed", "cancelled")}
        lost += len(items) - sum(by.values()) + (doc["bulk_job"]["total_items"] - len(items))
        b = doc["bulk_job"]
        drift += abs(b["completed_items"] - by["completed"]) + abs(b["failed_items"] - by["failed"]) + \
            abs(b["cancelled_items"] - by["cancelled"])
        for item in items:
            seen = requests.get(item["id"], [])
            uncharged = sum(1 for r in seen if r["outcome"] in ("http-429", *HARMLESS))
            if len(seen) - uncharged > 1 + item["retry_count"]:
                beyond += 1
    events: dict[str, list[str]] = {}
    for event in hook.events():
        events.setdefault(event["bulk_job_id"], []).append(event["event_id"])
    with hook.lock:
        posts = list(hook.posts)
    repeated_explained, duplicate_events = repeated_events(posts, kill_times)
    stuck = stuck_jobs(stored_jobs(store_path, jobs))
    # One event per end: each round of a job (its first, and one per retry-failed) ends once.
    missing_events = sum(abs(len(set(events.get(job, []))) - rounds[job]) for job in jobs)
    close_times = []
    for job, cancelled_at in cancels:
        ids = {i["id"] for i in docs[job]["jobs"]}
        closed = [r["end"] for r in stats["requests"] if r["job_id"] in ids and r["outcome"] == "closed-by-client"
                  and r["start"] <= cancelled_at <= (r["end"] or 0) + 5
                  and not any(open_at(r, t) for t in stall_times)]
        close_times += [max(c - cancelled_at, 0.0) for c in closed if c >= cancelled_at - 1]
    print(f"chaos: {args.jobs} jobs × 10 items, {args.processors} processors × concurrency {args.concurrency}, "
          f"{args.seconds:.0f} s, seed {args.seed}")
    counts, unexplained = duplicates(stats["requests"], kill_times, stall_times)
    twice = {job_id: n for job_id, n in stats["generated_per_job"].items() if n > 1}
    most = most_in_flight(stats["requests"], stall_times)
    print(f"  processors killed (SIGKILL): {len(kill_times)} ({aimed} aimed at a job's end); stalled (SIGSTOP {STALL_SECONDS[0]:g}-"
          f"{STALL_SECONDS[1]:g} s): {len(stall_times) if args.stalls else 'off'}; control commands: {actions}")
    print(f"  requests to the service: {len(stats['requests'])}; most in flight at once: {stats['max_in_flight']}"
          + (f" (not counting requests open across a stall: {most})" if stall_times else ""))
    print(f"  items lost: {lost}")
    print(f"  items requested beyond their tries: {beyond}")
    print(f"  counter drift: {drift}")
    print(f"  jobs stuck (state not what its items say): {len(stuck)}")
    for line in stuck:
        print(f"    {line}")
    print(f"  requests beyond an item's first: {counts['beyond the first']} ({counts['retries']} retries after "
          f"an ended try, {counts['extra']} extra); extra explained by closed-by-client {counts['closed-by-client']}, "
          f"stale {counts['stale']}, replayed {counts['replayed']}, kill {counts['kill']}, stall {counts['stall']}")
    print(f"  unexplained duplicate requests: {counts['unexplained']}")
    print(f"  items with more than one article generated: {len(twice)}")
    for job_id in sorted(set(unexplained) | set(twice)):
        print(f"    {job_id}: {twice.get(job_id, 1)} generated; requests (s from start: start-end outcome token):")
        for r in sorted((r for r in stats["requests"] if r["job_id"] == job_id), key=lambda r: r["start"]):
            end = f"{r['end'] - started_at:.3f}" if r["end"] is not None else "open"
            print(f"      {r['start'] - started_at:.3f}-{end} {r['outcome']} {r['token']}")
    if unexplained or twice:
        print("    kills at: " + ", ".join(f"{t - started_at:.3f}" for t in kill_times))
        print("    stalls (SIGSTOP-SIGCONT) at: " + ", ".join(
            f"{t - started_at:.3f}-{continued.get(t, t) - started_at:.3f}" for t in stall_times))
    ends = {j: d["bulk_job"]["status"] for j, d in docs.items()}
    print(f"  times: chaos {chaos_over - began:.1f} s, then settled in {settle_time:.1f} s, "
          f"processors stopped in {stop_time:.1f} s")
    print(f"  jobs ended: {sum(1 for s in ends.values() if s == 'completed')} completed, "
          f"{sum(1 for s in ends.values() if s == 'cancelled')} cancelled")
    print(f"  notifications: {sum(len(v) for v in events.values())} received for {len(jobs)} jobs; "
          f"ends without exactly one event: {missing_events}; an event delivered again: {repeated_explained} after "
          f"a kill between the two (the same Idempotency-Key), {duplicate_events} unexplained")
    if close_times:
        print(f"  cancel -> connection closed: median {statistics.median(close_times):.2f} s, "
              f"max {max(close_times):.2f} s over {len(close_times)} in-flight cancels")
    else:
        print("  cancel -> connection closed: no cancel hit an item in flight this run")
    ok = lost == 0 and beyond == 0 and drift == 0 and not stuck and most <= args.concurrency \
        and (stall_times or stats["max_in_flight"] <= args.concurrency) \
        and counts["unexplained"] == 0 and not twice and missing_events == 0 \
        and duplicate_events == 0 and all(t < 3.0 for t in close_times)
    print("  result:", "all invariants held" if ok else "INVARIANT BROKEN")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
