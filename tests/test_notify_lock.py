"""Notifications are at least once, and a second delivery (or a delayed first one) comes within seconds.

A step is taken under a lock a little longer than its channel's send deadline, and a send is held to that
deadline as a whole (design.md, "The outbox and at-least-once delivery"). Real processes killed at the two
moments that matter, a real webhook receiver on 127.0.0.1, and receivers that answer a byte at a time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bulkgen_cli.delivery import notify
from bulkgen_cli.core.channels import SmtpSettings
from bulkgen_cli.delivery.deadline import Deadline
from bulkgen_cli.delivery.notify import Notifier, lock_seconds
from tests.cli_helpers import EXAMPLES, ROOT, env_for, finish, status_of, submit_file
from tests.conftest import wait_for
from tests.receivers import WebhookReceiver

#: `bulkgen ARGS` killed (SIGKILL) by itself right after it took a notification step, before sending it.
KILLED_BEFORE_SEND = """\
import os, signal, sys
from bulkgen_cli.delivery import notify

def killed(self, *args):
    os.kill(os.getpid(), signal.SIGKILL)

notify.Notifier._send = killed
sys.argv = ["bulkgen", *sys.argv[1:]]
from bulkgen_cli.cli.main import main
main()
"""

#: Seconds over the lock for the new processor to start (on a loaded machine), see the step due and send it.
SLACK = 10.0


@pytest.fixture
def held():
    receiver = WebhookReceiver(hold_first=1)
    yield receiver
    receiver.stop()


def test_killed_after_the_receiver_got_it_sends_it_again_within_the_lock(tmp_path, processes, held):
    env = env_for(tmp_path)
    bulk_id = submit_file(env, EXAMPLES / "articles.yaml", "--notify", f"webhook:{held.url}")
    first = processes.spawn(["run"], env)
    wait_for(lambda: held.posts, timeout=30, interval=0.05, what="the first POST")
    first.send_signal(signal.SIGKILL)  # the receiver has it; the sender never recorded it
    assert finish(first, timeout=10).code == -signal.SIGKILL
    [step] = status_of(env, bulk_id)["notifications"]
    assert step["state"] == "sending"

    again = processes.spawn(["run"], env)
    wait_for(lambda: len(held.posts) >= 2, timeout=lock_seconds(f"webhook:{held.url}") + SLACK, interval=0.1,
             what="the second delivery, once the dead sender's lock ran out")
    assert finish(again, timeout=30).code == 0
    one, two = held.posts
    assert two["body"] == one["body"]
    assert two["headers"]["Idempotency-Key"] == one["headers"]["Idempotency-Key"] == one["body"]["event_id"]
    [step] = status_of(env, bulk_id)["notifications"]
    assert step["state"] == "sent" and len(held.posts) == 2


def test_killed_after_taking_the_step_before_sending_it_delivers_within_the_lock(tmp_path, processes):
    receiver = WebhookReceiver()
    try:
        env = env_for(tmp_path)
        bulk_id = submit_file(env, EXAMPLES / "articles.yaml", "--notify", f"webhook:{receiver.url}")
        first = subprocess.run([sys.executable, "-c", KILLED_BEFORE_SEND, "run"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
        assert first.returncode == -signal.SIGKILL, first.stderr
        [step] = status_of(env, bulk_id)["notifications"]
        assert step["state"] == "sending" and receiver.posts == []

        again = processes.spawn(["run"], env)
        wait_for(lambda: receiver.posts, timeout=lock_seconds(f"webhook:{receiver.url}") + SLACK, interval=0.1,
                 what="the delayed first delivery")
        assert finish(again, timeout=30).code == 0
        [post] = receiver.posts
        assert post["body"]["bulk_job_id"] == bulk_id and post["headers"]["Idempotency-Key"] == post["body"]["event_id"]
        assert status_of(env, bulk_id)["notifications"][0]["state"] == "sent"
    finally:
        receiver.stop()


def test_the_lock_outlasts_every_channels_send():
    for channel in ("webhook:https://h.example/x", "email:a@b.co"):
        assert lock_seconds(channel) >= notify.send_timeout(channel) + notify.LOCK_MARGIN
    assert notify.LOCK_SECONDS == max(lock_seconds("webhook:x"), lock_seconds("email:x")) < 60


# -- a send is held to its deadline as a whole ------------------------------------------------------------


class Trickler:
    """A TCP server on 127.0.0.1 that answers `first` at once, then `line` once every `every` seconds,
    `times` times: each read is quick, the whole answer slow. Records whether the client hung up early."""

    def __init__(self, first: bytes, line: bytes, every: float = 0.2, times: int = 100, after_request: bool = True):
        self.first, self.line, self.every, self.times, self.after_request = first, line, every, times, after_request
        self.cut_off = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            try:
                if self.after_request:
                    conn.recv(65536)
                conn.sendall(self.first)
                for _ in range(self.times):
                    time.sleep(self.every)
                    conn.sendall(self.line)
                    if self.after_request is False:  # SMTP: the client's EHLO is read as it comes
                        conn.setblocking(False)
                        try:
                            conn.recv(65536)
                        except BlockingIOError:
                            pass
                        conn.setblocking(True)
            except OSError:
                self.cut_off.set()

    def stop(self) -> None:
        self.server.close()


EVENT = {"event": "bulk_job.completed", "event_id": "e1"}


def test_a_webhook_answering_a_byte_at_a_time_is_cut_at_the_deadline(monkeypatch):
    monkeypatch.setattr(notify, "WEBHOOK_TIMEOUT", 1.0)  # each byte comes well within it; the whole does not
    slow = Trickler(b"HTTP/1.1 204 No Content\r\n", b"X: y\r\n", every=0.2, times=100)
    try:
        started = time.monotonic()
        error = Notifier(None, "t")._send(f"webhook:http://127.0.0.1:{slow.port}/h", EVENT)  # type: ignore[arg-type]
        took = time.monotonic() - started
        assert error is not None and error.startswith("ReadTimeout"), error
        assert took < lock_seconds("webhook:x") < slow.times * slow.every  # over before the lock ends, long before the answer
        assert slow.cut_off.wait(5)  # the receiver saw the client hang up mid-answer
    finally:
        slow.stop()


def test_an_smtp_server_answering_a_line_at_a_time_is_cut_at_the_deadline(monkeypatch):
    monkeypatch.setattr(notify, "SMTP_TIMEOUT", 1.0)
    slow = Trickler(b"220 slow\r\n", b"250-still talking\r\n", every=0.2, times=100, after_request=False)
    try:
        started = time.monotonic()
        notifier = Notifier(None, "t", smtp=SmtpSettings("smtp", "127.0.0.1", slow.port))  # type: ignore[arg-type]
        error = notifier._send("email:ops@example.com", {**EVENT, **FULL_EVENT})
        took = time.monotonic() - started
        assert error is not None and error.startswith("TimeoutError: no answer within 1 s"), error
        assert took < lock_seconds("email:x") < slow.times * slow.every
    finally:
        slow.stop()


FULL_EVENT = {"name": "n", "status": "completed", "completed_items": 1, "total_items": 1, "failed_items": 0,
              "cancelled_items": 0, "duration_seconds": 1.0, "error_summary": [], "bulk_job_id": "b",
              "results_command": "bulkgen results b"}


def test_a_name_lookup_that_hangs_is_given_up_at_the_deadline(monkeypatch):
    """getaddrinfo has no timeout: a send does not wait for it past its deadline (and then sends nothing)."""
    stuck = threading.Event()
    real = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "stuck.example.test":
            stuck.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(notify, "WEBHOOK_TIMEOUT", 0.5)
    try:
        started = time.monotonic()
        error = Notifier(None, "t")._send("webhook:http://stuck.example.test/h", EVENT)  # type: ignore[arg-type]
        assert error is not None and "ConnectTimeout" in error, error
        assert time.monotonic() - started < lock_seconds("webhook:x")
        with pytest.raises(TimeoutError):
            Deadline(0.2).call(stuck.wait, 30)
    finally:
        stuck.set()


def test_a_step_the_store_was_slow_to_hand_over_is_not_sent_past_its_lock(store, monkeypatch):
    """The deadline starts when the lock's time is read, before the store's write that takes the step:
    a write that waited out the send's whole time (a busy store) leaves nothing to send within the lock."""
    from tests.conftest import submit
    from tests.test_store_contract import run_to_end
    from bulkgen_cli.core.model import utcnow

    receiver = WebhookReceiver()
    try:
        monkeypatch.setattr(notify, "WEBHOOK_TIMEOUT", 0.3)
        bulk = submit(store, 10, notify=[f"webhook:{receiver.url}"])
        run_to_end(store, bulk, utcnow())
        claim = store.claim_step

        def slow_claim(*args, **kwargs):
            time.sleep(0.5)
            return claim(*args, **kwargs)

        monkeypatch.setattr(store, "claim_step", slow_claim)
        Notifier(store, "slow").deliver(store.get_bulk(bulk.id))
        [step] = store.get_bulk(bulk.id).outbox["steps"]
        assert receiver.posts == [] and step["state"] == "pending" and step["attempts"] == 1
        assert step["last_error"].startswith("not sent: the store took more than the send's 0.3 s"), step
    finally:
        receiver.stop()
