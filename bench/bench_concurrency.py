"""Total time of a 30-item job at --concurrency 1, 2, 3 against a service with a fixed 1 s latency.

    python bench/bench_concurrency.py [--items 30] [--latency 1.0]

Expect about 30 s, 15 s and 10 s plus overhead; the maximum in flight the
service saw must equal the concurrency.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bulkgen_cli.content.reference import ReferenceService  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{args.items}-item job, service latency {args.latency:g} s, --delay 0")
    for n in (1, 2, 3):
        service = ReferenceService(latency=args.latency).start()
        with tempfile.TemporaryDirectory() as home:
            env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
            env.update(XDG_DATA_HOME=home, BULKGEN_API_URL=service.url, BULKGEN_DELAY="0")
            path = Path(home) / "job.yaml"
            path.write_text("items:\n" + "".join(f"  - topic: Article {i}\n" for i in range(args.items)))
            subprocess.run([sys.executable, "-m", "bulkgen_cli", "submit", str(path)], env=env, check=True,
                           capture_output=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "bulkgen_cli", "run", "--concurrency", str(n)], env=env,
                           check=True, capture_output=True)
            total = time.perf_counter() - started
        stats = service.stats()
        service.stop()
        ideal = args.items * args.latency / n
        print(f"  concurrency {n}: {total:6.2f} s (ideal {ideal:5.1f} s, +{total - ideal:.2f} s); "
              f"most in flight seen by the service: {stats['max_in_flight']}")


if __name__ == "__main__":
    main()
