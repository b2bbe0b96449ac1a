"""The CI-sized chaos run (bench/chaos.py): real processes, kills, control commands, a flaky service."""

from __future__ import annotations

import subprocess
import sys

from tests.cli_helpers import ROOT


def test_chaos_run_keeps_every_invariant():
    proc = subprocess.run([sys.executable, "bench/chaos.py", "--jobs", "4", "--processors", "2",
                           "--seconds", "20", "--seed", "3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "items lost: 0" in proc.stdout and "most in flight at once: 1" in proc.stdout
    assert "all invariants held" in proc.stdout


def test_chaos_run_with_concurrency_3():
    proc = subprocess.run([sys.executable, "bench/chaos.py", "--jobs", "4", "--processors", "2",
                           "--seconds", "20", "--seed", "4", "--concurrency", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "items lost: 0" in proc.stdout and "all invariants held" in proc.stdout
    most = int(proc.stdout.split("most in flight at once: ")[1].split()[0])
    assert 1 <= most <= 3
