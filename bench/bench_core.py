"""Core speed figures for docs/performance.md ("Performance"). A person runs it; tests never time things.

    python bench/bench_core.py [--runs 7]

Prints, for a 50-item bulk job with a no-op generator and no delay, on SQLite
and on mongomock: the median per-item processor overhead (claim, record,
counters) and store calls / SQL statements per item; the median `submit` time
for 50 items; and cold starts of `bulkgen --help` and `bulkgen status ID --json`
beside `python -c pass` (the reference run, so ratios survive a noisy machine).
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

from bulkgen_cli.content import Reply, ReplyKind  # noqa: E402
from bulkgen_cli.core.model import BulkJob, new_id, utcnow  # noqa: E402
from bulkgen_cli.engine.processor import Processor  # noqa: E402
from bulkgen_cli.core.settings import RunSettings  # noqa: E402
from bulkgen_cli.store.base import Store  # noqa: E402

ITEMS = 50


class NoOp:
    """A generator that answers at once: what remains is the processor's own cost."""

    name = "noop"
    remote = False

    def generate(self, item):
        return Reply(ReplyKind.ok, content="done")

    def abort(self):
        pass

    def close(self):
        pass


class Counting:
    """Counts calls to the store contract's methods."""

    def __init__(self, store: Store):
        self._store = store
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if callable(attr) and not name.startswith("_"):
            def counted(*a, **kw):
                self.calls += 1
                return attr(*a, **kw)
            return counted
        return attr


def new_bulk(n: int = ITEMS) -> tuple[BulkJob, list[dict]]:
    bulk = BulkJob(id=new_id(), userId="bench", mode="topic", name="bench", status="queued",
                   total_items=n, created_at=utcnow())
    return bulk, [{"topic": f"Article {i}", "word_count": 1000} for i in range(n)]


def open_kind(kind: str, folder: str) -> Store:
    if kind == "sqlite":
        from bulkgen_cli.store.sqlite import SqliteStore

        return SqliteStore(os.path.join(folder, f"{new_id()}.db"))
    import mongomock

    from bulkgen_cli.store.mongo import MongoStore

    return MongoStore(mongomock.MongoClient(tz_aware=True), "bench")


def processor_overhead(kind: str, runs: int) -> dict[str, float]:
    per_item, calls, statements, submits = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(runs):
            store = open_kind(kind, folder)
            bulk, arts = new_bulk()
            started = time.perf_counter()
            store.create_bulk(bulk, arts)
            submits.append(time.perf_counter() - started)
            counting = Counting(store)
            traced = [0]
            if kind == "sqlite":
                store.db.set_trace_callback(lambda sql, t=traced: t.__setitem__(0, t[0] + 1))
            processor = Processor(counting, NoOp(), RunSettings(delay=0, lease=60))  # type: ignore[arg-type]
            started = time.perf_counter()
            processor.run(until_idle=True)
            per_item.append((time.perf_counter() - started) / ITEMS)
            calls.append(counting.calls / ITEMS)
            statements.append(traced[0] / ITEMS)
            assert store.get_bulk(bulk.id).completed_items == ITEMS
            store.close()
    return {
        "per_item_ms": statistics.median(per_item) * 1000,
        "store_calls_per_item": statistics.median(calls),
        "sql_statements_per_item": statistics.median(statements) if kind == "sqlite" else float("nan"),
        "submit_ms": statistics.median(submits) * 1000,
    }


def cold_start(args: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} runs\n")
    print(f"Processor, {ITEMS}-item bulk job, no-op generator, no delay")
    print(f"{'store':10} {'per item':>10} {'store calls':>12} {'SQL stmts':>10} {'submit 50':>10}")
    for kind in ("sqlite", "mongomock"):
        r = processor_overhead("sqlite" if kind == "sqlite" else "mongo", args.runs)
        stmts = f"{r['sql_statements_per_item']:.0f}" if kind == "sqlite" else "—"
        print(f"{kind:10} {r['per_item_ms']:>8.2f}ms {r['store_calls_per_item']:>12.1f} {stmts:>10} {r['submit_ms']:>8.1f}ms")

    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
        env["XDG_DATA_HOME"] = home
        bulkgen = [sys.executable, "-m", "bulkgen_cli"]
        bulk_id = subprocess.run(bulkgen + ["submit", str(ROOT / "examples" / "articles.yaml")], env=env,
                                 capture_output=True, text=True, check=True).stdout.strip()
        base = cold_start([sys.executable, "-c", "pass"], env, args.runs)
        print("\nCold start (wall time)")
        print(f"{'python -c pass':34} {base:7.1f} ms   (reference)")
        for label, argv in (("bulkgen --help", ["--help"]),
                            ("bulkgen status ID --json", ["status", bulk_id, "--json"]),
                            ("bulkgen submit (12 items)", ["submit", str(ROOT / "examples" / "articles.yaml")])):
            ms = cold_start(bulkgen + argv, env, args.runs)
            print(f"{label:34} {ms:7.1f} ms   ({ms / base:.1f}× python -c pass, +{ms - base:.0f} ms)")


if __name__ == "__main__":
    main()
