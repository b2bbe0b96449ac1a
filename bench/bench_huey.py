"""bulkgen beside Huey (SqliteHuey), and the figures of the proof issue. A person runs it:

    pip install huey            # only for this script; not a bulkgen dependency
    python bench/bench_huey.py [--runs 7] [--big-jobs 10000] [--idle-seconds 60]

Everything is measured in one run, on the same machine, and printed as medians
with the ratio against the reference measured beside it:

1. per-item overhead: bulkgen submit + processor (no-op generator, no delay,
   50-item jobs, SQLite file) against Huey's enqueue + dequeue + execute of a
   no-op task in the same process (SqliteHuey file);
2. the hand-off gap between one request's end and the next request's start,
   with --delay 0 and with the default delay (5 s);
3. `status --json` and `list --json` with 10,000 bulk jobs / 500,000 items,
   with the SQLite query plans and the MongoDB index definitions;
4. the idle cost of `run --forever`: CPU seconds and store calls per minute;
5. cold start of --help, status --json and submit beside `python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_core import Counting, NoOp, cold_start, new_bulk  # noqa: E402

from bulkgen_cli.engine.processor import Processor  # noqa: E402
from bulkgen_cli.core.settings import RunSettings  # noqa: E402
from bulkgen_cli.store.sqlite import SqliteStore  # noqa: E402

ITEMS = 50


def bulkgen_per_item(folder: str, runs: int) -> tuple[float, float]:
    """(submit + process, process only) per item, in seconds: medians."""
    total, process = [], []
    for run in range(runs):
        store = SqliteStore(os.path.join(folder, f"bulkgen-{run}.db"))
        bulk, arts = new_bulk(ITEMS)
        started = time.perf_counter()
        store.create_bulk(bulk, arts)
        mid = time.perf_counter()
        Processor(store, NoOp(), RunSettings(delay=0, lease=60)).run(until_idle=True)
        end = time.perf_counter()
        assert store.get_bulk(bulk.id).completed_items == ITEMS
        store.close()
        total.append((end - started) / ITEMS)
        process.append((end - mid) / ITEMS)
    return statistics.median(total), statistics.median(process)


def huey_per_task(folder: str, runs: int) -> tuple[float, float]:
    """(enqueue + dequeue + execute, dequeue + execute) per task, in seconds: medians."""
    from huey import SqliteHuey

    total, work = [], []
    for run in range(runs):
        huey = SqliteHuey(filename=os.path.join(folder, f"huey-{run}.db"))

        @huey.task()
        def noop(n: int) -> None:
            return None

        started = time.perf_counter()
        for n in range(ITEMS):
            noop(n)
        mid = time.perf_counter()
        done = 0
        while (task := huey.dequeue()) is not None:
            huey.execute(task)
            done += 1
        end = time.perf_counter()
        assert done == ITEMS
        total.append((end - started) / ITEMS)
        work.append((end - mid) / ITEMS)
    return statistics.median(total), statistics.median(work)


def handoff_gaps(folder: str, delay: float, items: int) -> float:
    """Median gap (s) between one request's end and the next one's start, seen by the service."""
    from bulkgen_cli.content.http import HttpGenerator
    from bulkgen_cli.content.reference import ReferenceService

    service = ReferenceService().start()
    try:
        store = SqliteStore(os.path.join(folder, f"gap-{delay}.db"))
        bulk, arts = new_bulk(items)
        store.create_bulk(bulk, arts)
        generator = HttpGenerator(service.url, None, 30)
        Processor(store, generator, RunSettings(delay=delay, lease=60)).run(until_idle=True)
        generator.close()
        store.close()
        reqs = service.stats()["requests"]
    finally:
        service.stop()
    return statistics.median(b["start"] - a["end"] for a, b in zip(reqs, reqs[1:]))


def big_store(folder: str, jobs: int) -> tuple[Path, str]:
    path = Path(folder) / "big" / "bulkgen" / "bulkgen.db"
    store = SqliteStore(path)
    last = ""
    for n in range(jobs):
        bulk, arts = new_bulk(ITEMS)
        if n % 10:  # most jobs long done, as in a real store
            bulk.status = "completed"
        store.create_bulk(bulk, arts)
        last = bulk.id
    store.db.execute("ANALYZE")
    plans = {
        "claim_next (job)": ("SELECT b.id FROM bulk_jobs b INDEXED BY bulk_jobs_status WHERE b.status IN "
                             "('queued', 'processing') AND EXISTS (SELECT 1 FROM generation_jobs i WHERE "
                             "i.bulk_job_id = b.id AND i.status = 'queued') ORDER BY b.created_at, b.id LIMIT 1"),
        "claim_next (item)": ("SELECT id FROM generation_jobs WHERE bulk_job_id = ? AND status = 'queued' "
                              "ORDER BY queue_position LIMIT 1"),
        "status (items)": "SELECT * FROM generation_jobs WHERE bulk_job_id = ? ORDER BY queue_position",
        "list": "SELECT * FROM bulk_jobs WHERE userId = ? ORDER BY created_at DESC, id DESC LIMIT 20",
        "in flight": "SELECT count(*) FROM generation_jobs WHERE status = 'processing'",
        "expired leases": "SELECT * FROM generation_jobs WHERE status = 'processing' AND lease_expires_at < ?",
    }
    print(f"\nSQLite query plans ({jobs:,} jobs):")
    for label, sql in plans.items():
        args = (last,) if sql.count("?") == 1 and "bulk_job_id" in sql else ("bench",) if "userId" in sql else \
            ("2026",) if "?" in sql else ()
        rows = store.db.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
        print(f"  {label}: " + "; ".join(r[3] for r in rows))
    store.close()
    return path, last


def mongo_indexes() -> None:
    import mongomock

    from bulkgen_cli.store.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), "bench")
    print("\nMongoDB index definitions (created once per database):")
    for name, col in (("bulk_jobs", store.bulks), ("generation_jobs", store.items)):
        for index, spec in sorted(col.index_information().items()):
            print(f"  {name}.{index}: {spec['key']}")


def idle_cost(seconds: float, folder: str) -> tuple[float, float]:
    """(% of one core, store calls per minute) of `run --forever` with nothing queued."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
    env["XDG_DATA_HOME"] = os.path.join(folder, "idle")
    proc = subprocess.Popen([sys.executable, "-m", "bulkgen_cli", "run", "--forever"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)  # past start-up
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    c0, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu(), time.monotonic()
    proc.terminate()
    proc.wait()
    # Store calls, in-process, over the same time: the processor's own loop.
    import threading

    store = Counting(SqliteStore(os.path.join(folder, "idle-count.db")))
    processor = Processor(store, NoOp(), RunSettings(delay=0, lease=60))  # type: ignore[arg-type]
    thread = threading.Thread(target=processor.run, kwargs={"until_idle": False})
    thread.start()
    time.sleep(seconds)
    calls = store.calls
    processor.stop()
    thread.join()
    return 100 * (c1 - c0) / (t1 - t0), calls * 60 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--big-jobs", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, medians of {args.runs} runs")
    with tempfile.TemporaryDirectory() as folder:
        b_total, b_proc = bulkgen_per_item(folder, args.runs)
        h_total, h_work = huey_per_task(folder, args.runs)
        print(f"\n1. Per item, {ITEMS}-item jobs, no-op work, SQLite files")
        print(f"   bulkgen submit + process      {b_total * 1000:7.3f} ms")
        print(f"   Huey enqueue + dequeue + exec {h_total * 1000:7.3f} ms   ratio bulkgen/Huey {b_total / h_total:.2f}")
        print(f"   bulkgen process only          {b_proc * 1000:7.3f} ms")
        print(f"   Huey dequeue + execute        {h_work * 1000:7.3f} ms   ratio {b_proc / h_work:.2f}")

        g0 = handoff_gaps(folder, 0.0, 30)
        g5 = handoff_gaps(folder, 5.0, 3)
        print("\n2. Hand-off gap: one request's end to the next one's start (reference service)")
        print(f"   --delay 0   {g0 * 1000:8.2f} ms")
        print(f"   --delay 5   {g5 * 1000:8.2f} ms   (5000 asked: +{(g5 - 5) * 1000:.2f} ms)")

        print(f"\n3. A big store: {args.big_jobs:,} bulk jobs, {args.big_jobs * ITEMS:,} items")
        started = time.perf_counter()
        path, last = big_store(folder, args.big_jobs)
        print(f"   (filled in {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:.0f} MB)")
        mongo_indexes()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
        env.update(XDG_DATA_HOME=str(path.parent.parent), BULKGEN_USER="bench")
        base = cold_start([sys.executable, "-c", "pass"], env, args.runs)
        bulkgen = [sys.executable, "-m", "bulkgen_cli"]
        st = cold_start(bulkgen + ["status", last, "--json"], env, args.runs)
        ls = cold_start(bulkgen + ["list", "--json"], env, args.runs)
        print(f"\n   python -c pass        {base:7.1f} ms")
        print(f"   status ID --json      {st:7.1f} ms   (+{st - base:.0f} ms over python)")
        print(f"   list --json (20)      {ls:7.1f} ms   (+{ls - base:.0f} ms over python)")

        cpu, calls = idle_cost(args.idle_seconds, folder)
        print(f"\n4. Idle `run --forever`, {args.idle_seconds:.0f} s: {cpu:.2f} % of one core, "
              f"{calls:.0f} store calls per minute")

        print("\n5. Cold start (wall time)")
        print(f"   python -c pass        {base:7.1f} ms")
        for label, argv in (("--help", ["--help"]), ("status ID --json", ["status", last, "--json"]),
                            ("submit (12 items)", ["submit", str(ROOT / "examples" / "articles.yaml")])):
            ms = cold_start(bulkgen + argv, env, args.runs)
            print(f"   {label:20}  {ms:7.1f} ms   ({ms / base:.1f}× python -c pass)")


if __name__ == "__main__":
    main()
