"""Running bulkgen as a user does: in-process through main(), or as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
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
        from bulkgen_cli.cli.main import main

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


# -- real processes against a real service ----------------------------------------------------------


def env_for(tmp_path: Path, service=None, **overrides: str) -> dict[str, str]:
    """base_env, pointed at `service` (a ReferenceService) if given, with overrides by full name:
    env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1")."""
    env = base_env(tmp_path)
    if service is not None:
        env["BULKGEN_API_URL"] = service.url
    return env | overrides


def submit_file(env: dict[str, str], path: Path, *args: str) -> str:
    """`bulkgen submit PATH ARGS…` as a subprocess; returns the new bulk job's id."""
    result = run_cli(["submit", str(path), *args], env)
    assert result.code == 0, result.err
    return result.out.strip()


def status_of(env: dict[str, str], bulk_id: str, *args: str) -> dict:
    """`bulkgen status ID --json ARGS…` as a subprocess, parsed."""
    return json.loads(run_cli(["status", bulk_id, "--json", *args], env).out)


class Reading:
    """A spawned process whose stderr is read as it comes (a thread), so a test can wait for a line it prints
    before acting, instead of sleeping and hoping the process got there."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in iter(self.proc.stderr.readline, ""):
            self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def finish(self, timeout: float = 60) -> Result:
        out = self.proc.stdout.read() if self.proc.stdout else ""
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return Result(self.proc.returncode, out, "".join(self.lines))


def finish(proc: subprocess.Popen, timeout: float = 60) -> Result:
    """Wait for a spawned process to exit; its exit code and output."""
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


class Processes:
    """Spawns bulkgen processes and, when the block ends however it ends, leaves none behind:
    a stopped one is continued (SIGCONT) and killed, a running one killed, every one reaped.

        with Processes() as procs:
            a = procs.spawn(["run"], env)
    """

    def __init__(self) -> None:
        self.spawned: list[subprocess.Popen] = []

    def spawn(self, args: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
        proc = spawn(args, env, **kw)
        self.spawned.append(proc)
        return proc

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.spawned):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.communicate(timeout=10)
