"""Ctrl-C says at once what happens, and the last line says what happened."""

from __future__ import annotations

import signal
import threading

import pytest
import yaml

from bulkgen_cli.content.reference import ReferenceService
from tests.cli_helpers import base_env, run_cli, spawn
from tests.conftest import wait_for


@pytest.fixture
def svc():
    service = ReferenceService().start()
    yield service
    service.stop()


def queue_hanging(tmp_path, env) -> str:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"items": [{"topic": "Hangs [hang]"}] + [{"topic": f"T{i}"} for i in range(9)]}))
    return run_cli(["submit", str(path)], env).out.strip()


def test_first_ctrl_c_says_it_waits_and_how_to_abort(tmp_path, svc):
    env = base_env(tmp_path) | {"BULKGEN_API_URL": svc.url}
    queue_hanging(tmp_path, env)
    proc = spawn(["run", "--grace", "0.3"], env)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the request to start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert ("stopping: waiting up to 0.3 s for the request in flight to finish; press Ctrl-C again to abort it"
            in err)
    assert "The unfinished item went back to the queue (its try not counted)" in err


def test_second_ctrl_c_aborts_at_once(tmp_path, svc):
    env = base_env(tmp_path) | {"BULKGEN_API_URL": svc.url}
    queue_hanging(tmp_path, env)
    proc = spawn(["run"], env)  # the default grace: 10 s
    err = Stderr(proc)
    wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the request to start")
    proc.send_signal(signal.SIGINT)
    err.wait_for("stopping: waiting up to 10 s")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=8)  # well inside the 10 s grace
    assert proc.returncode == 130, err.text()
    assert "stopping now: aborting the request in flight" in err.text()
    wait_for(lambda: svc.stats()["requests"][0]["outcome"] == "closed-by-client", timeout=5, what="the abort")


class Stderr:
    """A process's stderr, read as it comes."""

    def __init__(self, proc):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(proc.stderr.readline, "")), daemon=True)
        self.reader.start()

    def wait_for(self, text: str) -> None:
        wait_for(lambda: text in "".join(self.lines), timeout=20, what=repr(text))

    def text(self) -> str:
        if self.proc.poll() is not None:
            self.reader.join(timeout=10)
            self.proc.stdout.close()
            self.proc.stderr.close()
        return "".join(self.lines)


def test_ctrl_c_on_an_attached_run_only_stops_watching(tmp_path, svc):
    env = base_env(tmp_path) | {"BULKGEN_API_URL": svc.url}
    bulk_id = queue_hanging(tmp_path, env)
    worker = spawn(["run"], env)
    try:
        wait_for(lambda: svc.stats()["in_flight"] == 1, timeout=20, what="the worker's request")
        watcher = spawn(["run"], env)
        stderr = Stderr(watcher)
        stderr.wait_for("attached to it")
        watcher.send_signal(signal.SIGINT)
        watcher.wait(timeout=10)
        err = stderr.text()
        assert watcher.returncode == 130, err
        assert "only watches another processor, which goes on" in err
        assert "Stopped watching; the other processor goes on." in err
        assert "went back to the queue" not in err
        assert svc.stats()["in_flight"] == 1  # the worker's request is untouched
        doc = run_cli(["status", bulk_id, "--json"], env).out
        assert '"processing"' in doc
    finally:
        worker.kill()
        worker.communicate(timeout=10)
