"""How close `bulkgen run --delay 0` comes to the ideal against a service with a fixed latency.

    python bench/bench_efficiency.py [--latency 0.05] [--items 200] [--repeat 3] [--reference DIR]

The ideal is items x latency / concurrency: the service never waits for the
processor. Efficiency is ideal / measured, for the whole `bulkgen run` command
(cold start and exit included) and for the span the service was busy (first
request's start to last request's end). Medians of --repeat runs, at
concurrency 1 and 4. It also checks that every item was requested exactly once
and that the service never saw more requests in flight than the concurrency.

With --reference DIR (a checkout of an earlier version: `git worktree add DIR
v0.x` or `git archive REV | tar -x -C DIR`), every repeat runs that version's
`bulkgen` and then this one's, one after the other against the same service
settings, so both see the same machine; it prints both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bulkgen_cli.content.reference import ReferenceService  # noqa: E402


def one_run(items: int, latency: float, concurrency: int,
            code: Path = ROOT) -> tuple[float, float, int, int, float, float]:
    """(command seconds, busy seconds, most in flight, requests beyond one per item,
    median seconds a request took at the service, median gap between two requests of one slot)."""
    service = ReferenceService(latency=latency).start()
    try:
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
            env.update(XDG_DATA_HOME=home, BULKGEN_API_URL=service.url, BULKGEN_DELAY="0")
            for start in range(0, items, 50):
                path = Path(home) / f"job{start}.yaml"
                count = min(50, items - start)
                path.write_text("items:\n" + "".join(f"  - topic: Article {start + i}\n" for i in range(count)))
                subprocess.run([sys.executable, "-m", "bulkgen_cli", "submit", str(path)], env=env,
                               check=True, capture_output=True, cwd=code)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "bulkgen_cli", "run", "--concurrency", str(concurrency)],
                           env=env, check=True, capture_output=True, cwd=code)
            total = time.perf_counter() - started
        stats = service.stats()
    finally:
        service.stop()
    requests = stats["requests"]
    busy = max(r["end"] for r in requests) - min(r["start"] for r in requests)
    per_item = Counter(r["job_id"] for r in requests)
    extra = sum(n - 1 for n in per_item.values()) + (items - len(per_item))
    took = statistics.median(r["end"] - r["start"] for r in requests)
    # Between a request's end and the next start, per slot: each start follows the latest end before it.
    ordered = sorted(requests, key=lambda r: r["start"])
    gaps = []
    for n, r in enumerate(ordered[concurrency:], start=concurrency):
        ends = sorted(e["end"] for e in ordered[:n] if e["end"] <= r["start"])
        if ends:
            gaps.append(r["start"] - ends[-1])
    return total, busy, stats["max_in_flight"], extra, took, statistics.median(gaps)


def report(label: str, runs: list[tuple[float, float, int, int, float, float]], items: int, ideal: float,
           concurrency: int) -> float:
    """Print one version's medians; return its median busy seconds."""
    total = statistics.median(r[0] for r in runs)
    busy = statistics.median(r[1] for r in runs)
    print(f"  {label}concurrency {concurrency}, {items} items: ideal {ideal:.2f} s | command {total:.2f} s "
          f"(efficiency {ideal / total:.1%}) | service busy {busy:.2f} s (efficiency {ideal / busy:.1%}) | "
          f"most in flight {max(r[2] for r in runs)} | requests beyond one per item {sum(r[3] for r in runs)}")
    print(f"    a request at the service: median {statistics.median(r[4] for r in runs) * 1000:.1f} ms; "
          f"the processor's gap between a reply and the next request: median "
          f"{statistics.median(r[5] for r in runs) * 1000:.1f} ms")
    return busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--items", type=int, default=200, help="items at concurrency 1 (twice as many at 4)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", type=Path, help="a checkout of an earlier version, run beside this one")
    args = parser.parse_args()
    print(f"service latency {args.latency * 1000:g} ms, --delay 0, median of {args.repeat} runs")
    for concurrency, items in ((1, args.items), (4, args.items * 2)):
        ideal = items * args.latency / concurrency
        ours, theirs = [], []
        for _ in range(args.repeat):
            if args.reference:
                theirs.append(one_run(items, args.latency, concurrency, args.reference))
            ours.append(one_run(items, args.latency, concurrency))
        if args.reference:
            before = report("reference: ", theirs, items, ideal, concurrency)
            after = report("this one:  ", ours, items, ideal, concurrency)
            print(f"    service-busy time, this one / reference: {after / before:.3f}")
        else:
            report("", ours, items, ideal, concurrency)


if __name__ == "__main__":
    main()
