"""A chaos run with real processes: does every invariant hold under a bad week?

    python bench/chaos.py                        # CI size: 4 jobs, 2 processors, 20 s of chaos
    python bench/chaos.py --jobs 20 --processors 3 --seconds 600 --seed 7     # the long run
    python bench/chaos.py --concurrency 3                                     # up to 3 items in flight

Several bulk jobs, two or three `bulkgen run --forever` processes, the
reference service mixing successes, 500s, 429s, hangs, slow and malformed
replies, a stream of pause / resume / cancel / retry-failed from other
processes, and processors killed with SIGKILL at random moments and restarted.
At the end it prints, and checks: items lost, items requested beyond their
tries, counter drift, the most requests in flight at once, notifications per
job end, and the time from each cancel to the connection closing. Exit 1 when
any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bulkgen_cli.content.reference import ReferenceService  # noqa: E402
from tests.receivers import WebhookReceiver  # noqa: E402

DIRECTIVES = ["", "", "", "", "[fail:1]", "[429:1] [retry-after:0.2]", "[malformed]", "[hang:1]",
              "[slow:0.4]", "[status:400]", "[fail:5]"]


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--processors", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1, help="items in flight at most (run --concurrency)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = tempfile.mkdtemp(prefix="bulkgen-chaos-")
    service = ReferenceService(fail_rate=0.05, seed=args.seed).start()
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
    kills = 0
    actions: dict[str, int] = {}
    cancels: list[tuple[str, float]] = []
    rounds = {j: 1 for j in jobs}
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.5))
            roll = rng.random()
            if roll < 0.15:
                victim = rng.randrange(len(procs))
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = start()
                kills += 1
                continue
            action = rng.choice(["pause", "resume", "resume", "cancel", "retry-failed", "pause", "resume"])
            if action == "cancel" and rng.random() < 0.75:
                continue  # keep most jobs alive to the end
            job = rng.choice(jobs)
            asked_at = time.time()  # cancel latency counts from when the user typed it
            result = cli([action, job], env)
            if result.returncode not in (0, 4):
                print(f"unexpected exit {result.returncode} from {action}: {result.stderr}", file=sys.stderr)
                return 1
            actions[action] = actions.get(action, 0) + 1
            if result.returncode == 0 and action == "cancel" and "->" in result.stderr:
                cancels.append((job, asked_at))
            if result.returncode == 0 and action == "retry-failed" and "->" in result.stderr:
                rounds[job] += 1
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

        end_by = time.monotonic() + 180
        while not settled():
            if time.monotonic() > end_by:
                print("jobs did not settle within 180 s after the chaos", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        stats = service.stats()
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
            uncharged = sum(1 for r in seen if r["outcome"] in ("http-429", "closed-by-client"))
            if len(seen) - uncharged > 1 + item["retry_count"]:
                beyond += 1
    events: dict[str, list[str]] = {}
    for event in hook.events():
        events.setdefault(event["bulk_job_id"], []).append(event["event_id"])
    duplicate_events = sum(len(ids) - len(set(ids)) for ids in events.values())
    # One event per end: each round of a job (its first, and one per retry-failed) ends once.
    missing_events = sum(abs(len(set(events.get(job, []))) - rounds[job]) for job in jobs)
    close_times = []
    for job, cancelled_at in cancels:
        ids = {i["id"] for i in docs[job]["jobs"]}
        closed = [r["end"] for r in stats["requests"] if r["job_id"] in ids and r["outcome"] == "closed-by-client"
                  and r["start"] <= cancelled_at <= (r["end"] or 0) + 5]
        close_times += [max(c - cancelled_at, 0.0) for c in closed if c >= cancelled_at - 1]
    print(f"chaos: {args.jobs} jobs × 10 items, {args.processors} processors × concurrency {args.concurrency}, "
          f"{args.seconds:.0f} s, seed {args.seed}")
    print(f"  processors killed (SIGKILL): {kills}; control commands: {actions}")
    print(f"  requests to the service: {len(stats['requests'])}; most in flight at once: {stats['max_in_flight']}")
    print(f"  items lost: {lost}")
    print(f"  items requested beyond their tries: {beyond}")
    print(f"  counter drift: {drift}")
    ends = {j: d["bulk_job"]["status"] for j, d in docs.items()}
    print(f"  jobs ended: {sum(1 for s in ends.values() if s == 'completed')} completed, "
          f"{sum(1 for s in ends.values() if s == 'cancelled')} cancelled")
    print(f"  notifications: {sum(len(v) for v in events.values())} received for {len(jobs)} jobs; "
          f"ends without exactly one event: {missing_events}; duplicates of one event: {duplicate_events}")
    if close_times:
        print(f"  cancel -> connection closed: median {statistics.median(close_times):.2f} s, "
              f"max {max(close_times):.2f} s over {len(close_times)} in-flight cancels")
    else:
        print("  cancel -> connection closed: no cancel hit an item in flight this run")
    ok = lost == 0 and beyond == 0 and drift == 0 and stats["max_in_flight"] <= args.concurrency \
        and missing_events == 0 \
        and duplicate_events == 0 and all(t < 3.0 for t in close_times)
    print("  result:", "all invariants held" if ok else "INVARIANT BROKEN")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
