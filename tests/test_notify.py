"""Notifications end to end: real webhook and SMTP receivers, real processes."""

from __future__ import annotations

import json
import signal
import sys
import threading

import pytest

from bulkgen_cli.core.model import utcnow
from bulkgen_cli.core.channels import parse_channels
from bulkgen_cli.delivery.notify import Notifier
from bulkgen_cli.core.errors import UsageError
from tests.cli_helpers import EXAMPLES, env_for, finish, run_cli, status_of, submit_file
from tests.conftest import submit, wait_for
from tests.files import write_articles
from tests.receivers import SmtpReceiver, WebhookReceiver
from tests.test_store_contract import run_to_end


@pytest.fixture
def hook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp():
    receiver = SmtpReceiver()
    yield receiver
    receiver.stop()


def items_file(tmp_path, topics, name="f.yaml"):
    return write_articles(tmp_path / name, topics, name="Demo")


def test_one_webhook_post_per_ended_job(cli, tmp_path, hook, service):
    env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token"}
    path = items_file(tmp_path, ["Bad [status:400]"] + [f"T{i}" for i in range(9)])
    result = cli("submit", str(path), "--notify", f"webhook:{hook.url}", "--wait", env=env)
    assert result.code == 1
    bulk_id = result.out.strip()
    [event] = hook.events()
    assert event["event"] == "bulk_job.completed" and event["bulk_job_id"] == bulk_id
    assert (event["total_items"], event["completed_items"], event["failed_items"]) == (10, 9, 1)
    assert event["error_summary"][0].startswith("#1 Bad [status:400]: HTTP 400")
    assert event["results_command"] == f"bulkgen results {bulk_id} --out articles/"
    assert event["name"] == "Demo" and event["userId"] == "tester" and event["duration_seconds"] >= 0
    headers = hook.posts[0]["headers"]
    assert headers["Idempotency-Key"] == event["event_id"] and headers["X-Bulkgen-Event"] == "bulk_job.completed"
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["notifications"][0]["state"] == "sent" and doc["bulk_job"]["notified_at"]
    assert f"notified webhook:{hook.url}" in result.err
    # Running again sends nothing more.
    assert cli("run").code == 0 and len(hook.events()) == 1


def test_a_job_whose_items_all_failed_still_notifies(cli, tmp_path, hook, service):
    env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "wrong"}  # every request: 401
    result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", f"webhook:{hook.url}", "--wait", env=env)
    assert result.code == 1
    [event] = hook.events()
    assert event["failed_items"] == 12 and event["completed_items"] == 0


def test_receiver_that_fails_twice_gets_it_on_the_third_try(cli, tmp_path, service):
    receiver = WebhookReceiver(fail_first=2)
    try:
        env = {"BULKGEN_NOTIFY_RETRY": "0.1,0.1,0.1"}
        result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", f"webhook:{receiver.url}", "--wait",
                     env=env)
        assert result.code == 0, result.err
        assert len(receiver.posts) == 3  # two 500s, then one delivery
        assert len({p["body"]["event_id"] for p in receiver.posts}) == 1
        doc = json.loads(cli("status", result.out.strip(), "--json").out)
        assert doc["notifications"][0]["state"] == "sent" and doc["notifications"][0]["attempts"] == 3
        assert "trying again later" in result.err
    finally:
        receiver.stop()


def test_receiver_that_stays_down_is_recorded_not_fatal(cli, tmp_path):
    receiver = WebhookReceiver(fail_first=99)
    try:
        env = {"BULKGEN_NOTIFY_RETRY": "0.05,0.05"}
        result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", f"webhook:{receiver.url}", "--wait",
                     env=env)
        assert result.code == 0  # the job is fine; the notification is not
        doc = json.loads(cli("status", result.out.strip(), "--json").out)
        assert doc["notifications"][0]["state"] == "failed" and doc["notifications"][0]["attempts"] == 3
        assert doc["notifications"][0]["last_error"].startswith("HTTP 500")
        assert doc["bulk_job"]["status"] == "completed" and doc["bulk_job"]["notified_at"] is None
        assert "after 3 tries: HTTP 500" in cli("status", result.out.strip()).out
    finally:
        receiver.stop()


def test_email_carries_id_counts_and_failures(cli, tmp_path, smtp, service):
    env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token",
           "BULKGEN_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}?from=robot@example.com"}
    path = items_file(tmp_path, ["Bad [refuse]"] + [f"T{i}" for i in range(9)])
    result = cli("submit", str(path), "--notify", "email:ops@example.com", "--wait", env=env)
    bulk_id = result.out.strip()
    [message] = smtp.messages
    assert message["To"] == "ops@example.com" and message["From"] == "robot@example.com"
    assert message["Subject"] == "bulkgen: Demo completed: 9 of 10 completed, 1 failed"
    body = message.get_content()
    assert bulk_id in body and "Failed:    1" in body and "#1 Bad [refuse]: the service refused it" in body
    assert f"bulkgen results {bulk_id} --out articles/" in body


def test_no_password_over_a_server_without_starttls(cli, tmp_path):
    server = SmtpReceiver(offer_auth=True)
    try:
        env = {"BULKGEN_SMTP_URL": f"smtp://mailer:pa55word-xyz@127.0.0.1:{server.port}",
               "BULKGEN_NOTIFY_RETRY": "0.01,0.01"}
        result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", "email:ops@example.com", "--wait",
                     env=env)
        assert result.code == 0
        assert server.logins == [] and server.messages == []
        doc = json.loads(cli("status", result.out.strip(), "--json").out)
        step = doc["notifications"][0]
        assert step["state"] == "failed" and "no STARTTLS" in step["last_error"]
        everything = result.err + result.out + json.dumps(doc)
        assert "pa55word-xyz" not in everything
    finally:
        server.stop()


def test_plain_smtp_without_credentials_works(cli, smtp):
    env = {"BULKGEN_SMTP_URL": f"smtp://127.0.0.1:{smtp.port}"}
    cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", "email:a@example.com", "--notify",
        "email:b@example.com", "--wait", env=env)
    assert sorted(m["To"] for m in smtp.messages) == ["a@example.com", "b@example.com"]


def test_cancel_command_delivers_the_cancelled_event(cli, hook):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", f"webhook:{hook.url}").out.strip()
    result = cli("cancel", bulk_id)
    assert result.code == 0 and "Notification webhook:" in result.err
    [event] = hook.events()
    assert event["event"] == "bulk_job.cancelled" and event["cancelled_items"] == 12
    assert cli("run").code == 0 and len(hook.events()) == 1


def test_notify_defaults_from_environment_and_validation(cli, hook):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml"), env={"BULKGEN_NOTIFY": f"webhook:{hook.url}"}).out.strip()
    assert cli("run").code == 0
    assert [e["bulk_job_id"] for e in hook.events()] == [bulk_id]
    for bad in ("ftp://x", "webhook:file:///etc/passwd", "webhook:javascript:alert(1)", "email:nobody", "sms:123"):
        result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", bad)
        assert result.code == 2 and "--notify" in result.err, bad
    assert len(json.loads(cli("list", "--json").out)) == 1  # nothing stored by the refused ones


def test_parse_channels():
    assert parse_channels(["webhook:https://x.example/h, email:a@b.co", "none"]) == [
        "webhook:https://x.example/h", "email:a@b.co"]
    with pytest.raises(UsageError):
        parse_channels(["webhook:"])


def test_two_deliverers_at_once_send_once(store, backend, hook):
    bulk = submit(store, 10, notify=[f"webhook:{hook.url}"])
    run_to_end(store, bulk, utcnow())
    ended = store.get_bulk(bulk.id)  # every deliverer starts from the same snapshot
    if backend.threads:
        barrier = threading.Barrier(4)

        def deliver(n):
            barrier.wait()
            Notifier(store, f"d{n}").deliver(ended)

        threads = [threading.Thread(target=deliver, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:  # the same race, one after another
        for n in range(4):
            Notifier(store, f"d{n}").deliver(ended)
    assert len(hook.events()) == 1


def test_on_complete_runs_once_with_the_event(cli, tmp_path):
    out = tmp_path / "hook.out"
    script = f"{sys.executable} -c \"import os,sys; open({str(out)!r},'a').write(os.environ['BULKGEN_BULK_ID'] + ' ' + os.environ['BULKGEN_STATUS'] + ' ' + sys.stdin.read() + chr(10))\""
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    assert cli("run", "--on-complete", script).code == 0
    assert cli("run", "--on-complete", script).code == 0  # nothing new: not run again
    [line] = out.read_text().splitlines()
    got_id, got_status, payload = line.split(" ", 2)
    assert (got_id, got_status) == (bulk_id, "completed")
    event = json.loads(payload)
    assert event["bulk_job_id"] == bulk_id and event["completed_items"] == 12


def test_a_cancel_runs_the_processors_hook(cli, tmp_path):
    out = tmp_path / "hook.out"
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    cli("cancel", bulk_id)
    assert cli("run", "--on-complete", f"cat > {out}").code == 0
    assert json.loads(out.read_text())["event"] == "bulk_job.cancelled"


def test_killed_after_the_end_before_delivery_next_processor_delivers_once(tmp_path, processes):
    import socket

    with socket.socket() as s:  # a port with no receiver yet: every try there is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env_for(tmp_path, BULKGEN_NOTIFY_RETRY="2,2")
    url = f"http://127.0.0.1:{port}/hook"
    bulk_id = submit_file(env, EXAMPLES / "articles.yaml", "--notify", f"webhook:{url}")
    proc = processes.spawn(["run"], env)

    def first_try_failed():
        doc = status_of(env, bulk_id)
        return doc["bulk_job"]["status"] == "completed" and doc["notifications"][0]["attempts"] >= 1

    wait_for(first_try_failed, timeout=30, interval=0.1, what="the end and a refused delivery")
    proc.send_signal(signal.SIGKILL)  # the end is recorded; nothing was delivered
    proc.communicate(timeout=10)
    doc = status_of(env, bulk_id)
    assert doc["notifications"][0]["state"] in ("pending", "sending")
    receiver = WebhookReceiver(port=port)
    try:
        result = run_cli(["run"], env, timeout=90)
        assert result.code == 0, result.err
        assert [e["bulk_job_id"] for e in receiver.events()] == [bulk_id]
        assert run_cli(["run"], env).code == 0 and len(receiver.events()) == 1
    finally:
        receiver.stop()


def test_two_processes_racing_send_one_post_per_job(tmp_path, hook, start_service, processes):
    env = env_for(tmp_path, start_service(latency=0.02))
    ids = []
    for n in range(3):
        path = items_file(tmp_path, [f"J{n} {i}" for i in range(10)], name=f"j{n}.yaml")
        ids.append(submit_file(env, path, "--notify", f"webhook:{hook.url}"))
    procs = [processes.spawn(["run", "--lease", "1"], env) for _ in range(2)]
    for proc in procs:
        assert finish(proc, timeout=120).code == 0
    assert sorted(e["bulk_job_id"] for e in hook.events()) == sorted(ids)


def tls_context(tmp_path):
    """A certificate for 127.0.0.1, made here; the client trusts it through SSL_CERT_FILE."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_credentials_go_over_tls(cli, tmp_path, scheme):
    """The credential path for real: STARTTLS (smtp://) or TLS from the start (smtps://)."""
    context, cert = tls_context(tmp_path)
    server = SmtpReceiver(offer_auth=True, tls=context, implicit_tls=scheme == "smtps")
    try:
        env = {"BULKGEN_SMTP_URL": f"{scheme}://mailer:s%40fe-pass@127.0.0.1:{server.port}",
               "SSL_CERT_FILE": str(cert), "BULKGEN_NOTIFY_RETRY": "0.01"}
        result = cli("submit", str(EXAMPLES / "articles.yaml"), "--notify", "email:ops@example.com", "--wait",
                     env=env)
        assert result.code == 0, result.err
        assert server.tls_used and server.logins == [("mailer", "s@fe-pass")]
        [message] = server.messages
        assert message["To"] == "ops@example.com"
        assert "s@fe-pass" not in result.err + result.out
    finally:
        server.stop()
