"""Running bulkgen as a user does: in-process through main(), or as a real subprocess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        BULKGEN_USER="tester",
        BULKGEN_DELAY="0",
        BULKGEN_BACKOFF="0.01",
        COLUMNS="200",
        NO_COLOR="1",
    )
    return env


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Call bulkgen in-process: cli("submit", "f.yaml") -> Result(code, out, err)."""
    for key in list(os.environ):
        if key.startswith("BULKGEN_"):
            monkeypatch.delenv(key)
    for key, value in base_env(tmp_path).items():
        monkeypatch.setenv(key, value)

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        from bulkgen_cli.cli import main

        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        out, err = io.StringIO(), io.StringIO()
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        monkeypatch.setattr(sys, "argv", ["bulkgen", *args])
        code = 0
        try:
            with redirect_stdout(out), redirect_stderr(err):
                main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
        return Result(code, out.getvalue(), err.getvalue())

    return invoke


def spawn(args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkgen_cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw,
    )


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "bulkgen_cli", *args],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
