"""The live view in a real pseudo-terminal: paused, resumed and cancelled jobs, and Ctrl-C's message."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading

import pytest
import yaml

from bulkgen_cli.content.reference import ReferenceService
from tests.cli_helpers import ROOT, base_env, run_cli
from tests.conftest import wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """`bulkgen ARGS` on a 120x35 pseudo-terminal; what it drew, escapes removed."""

    def __init__(self, args: list[str], env: dict[str, str]):
        master, slave = pty.openpty()
        env = {k: v for k, v in env.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color", "COLUMNS": "120",
                                                                     "LINES": "35"}
        self.proc = subprocess.Popen([sys.executable, "-m", "bulkgen_cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, cwd=ROOT, close_fds=True)
        os.close(slave)
        self.master, self.raw = master, bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.raw.extend(chunk)

    def text(self, since: int = 0) -> str:
        return ANSI.sub("", bytes(self.raw[since:]).decode("utf-8", "replace"))

    def mark(self) -> int:
        return len(self.raw)

    def wait_for(self, needle: str, since: int = 0, timeout: float = 30) -> None:
        wait_for(lambda: needle in self.text(since), timeout=timeout, what=repr(needle))

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        os.close(self.master)
        return code


@pytest.fixture
def svc():
    service = ReferenceService(latency=0.3).start()
    yield service
    service.stop()


def submit(tmp_path, env, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "items": [{"topic": f"{name} {i}"} for i in range(10)]}))
    result = run_cli(["submit", str(path)], env)
    assert result.code == 0, result.err
    return result.out.strip()


def item_ids(env, bulk_id: str) -> set[str]:
    import json

    return {j["id"] for j in json.loads(run_cli(["status", bulk_id, "--json"], env).out)["jobs"]}


def test_live_view_shows_pause_resume_and_cancel(tmp_path, svc):
    env = base_env(tmp_path) | {"BULKGEN_API_URL": svc.url}
    first, second = submit(tmp_path, env, "Alpha"), submit(tmp_path, env, "Bravo")
    third = submit(tmp_path, env, "Charlie")
    term = Terminal(["run"], env)
    try:
        term.wait_for("Alpha")
        # The whole queue shows from the start, the jobs not begun as waiting rows.
        row = re.compile(r"Charlie\s+━+ 0 of 10 completed 0 failed ETA — waiting in the queue")
        wait_for(lambda: row.search(term.text()), timeout=30, what="Charlie's waiting row")
        assert [r for r in svc.stats()["requests"] if r["job_id"] in item_ids(env, third)] == []
        wait_for(lambda: len(svc.stats()["requests"]) >= 2, timeout=30, what="Alpha under way")
        mark = term.mark()
        assert run_cli(["pause", first], env).code == 0
        term.wait_for("paused: `bulkgen resume` continues it", since=mark)  # no spinner, no ETA
        assert "Bravo" in term.text(mark)  # the queue went on with the next job
        mark = term.mark()
        assert run_cli(["resume", first], env).code == 0
        term.wait_for("resumed", since=mark)
        mark = term.mark()
        assert run_cli(["cancel", second], env).code == 0
        code = term.finish()
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert code == 0, term.text()
    after = term.text(mark)
    assert "Bravo — cancelled" in after  # the cancelled job ends with its panel
    assert "Alpha — completed" in after and "Charlie — completed" in after
    paused_frames = [line for line in term.text().splitlines() if "paused: `bulkgen resume`" in line]
    assert paused_frames and all("ETA —" in line for line in paused_frames)


def test_live_view_says_what_ctrl_c_does(tmp_path, svc):
    env = base_env(tmp_path) | {"BULKGEN_API_URL": svc.url}
    path = tmp_path / "hang.yaml"
    path.write_text(yaml.safe_dump({"items": [{"topic": "Hangs [hang]"}] + [{"topic": f"T{i}"} for i in range(9)]}))
    assert run_cli(["submit", str(path)], env).code == 0
    term = Terminal(["run", "--grace", "5"], env)
    try:
        wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=30, what="the request in flight")
        mark = term.mark()
        term.proc.send_signal(signal.SIGINT)
        term.wait_for("stopping: waiting up to 5 s for the request in flight to finish; press Ctrl-C again", mark)
        term.proc.send_signal(signal.SIGINT)
        code = term.finish(timeout=20)
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert code == 130
    assert "The unfinished item went back to the queue" in term.text(mark)


def test_live_view_shows_hostile_names_and_errors_as_they_are(tmp_path):
    """Markup in a name or topic, and a service's error text, never break the live view or get read as markup."""
    service = ReferenceService().start()
    try:
        env = base_env(tmp_path) | {"BULKGEN_API_URL": service.url}
        path = tmp_path / "hostile.yaml"
        topics = ["Editing files under [/etc] safely [status:400]", "[bold red]shout[/] :smile:"]
        topics += [f"Plain {i}" for i in range(8)]
        path.write_text(yaml.safe_dump({"name": "Job [/etc] [markup] \x1b[31m", "items": [{"topic": t} for t in topics]}))
        assert run_cli(["submit", str(path)], env).code == 0
        term = Terminal(["run"], env)
        try:
            code = term.finish()
        finally:
            if term.proc.poll() is None:
                term.proc.kill()
    finally:
        service.stop()
    text = term.text()
    assert code == 0 and "Traceback" not in text and "MarkupError" not in text
    assert "Job [/etc] [markup] \\x1b[31m" in text  # the name as typed, the escape shown escaped
    assert "Editing files under [/etc] safely" in text and "HTTP 400" in text  # the failed item's line
    assert "10 of 10" not in text and "9 of 10 completed" in text
