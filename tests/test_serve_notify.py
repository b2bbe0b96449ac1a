"""Notifications of jobs submitted over HTTP cannot reach into the operator's network (netpolicy).

Names are resolved through `netpolicy.resolve`; the in-process tests replace it to say what a made-up
name resolves to (no DNS here), and the real-server tests use `localhost` (127.0.0.1 from /etc/hosts) and
the metadata address itself.
"""

from __future__ import annotations

import pytest

from bulkgen_cli.ops import jobs
from bulkgen_cli.delivery import netpolicy
from bulkgen_cli.input.manifest import Manifest
from bulkgen_cli.core.model import Mode, StepState
from bulkgen_cli.delivery.notify import Notifier
from tests.cli_helpers import base_env, env_for, run_cli
from tests.conftest import wait_for
from tests.receivers import WebhookReceiver
from tests.serve_helpers import articles, make_token, start_server


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.stop()


def resolving(monkeypatch, table: dict[str, str]) -> list[str]:
    """Make `netpolicy.resolve` answer from `table` (and record what it was asked)."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise OSError("no such name in this test")
        return [table[host]]

    monkeypatch.setattr(netpolicy, "resolve", resolve)
    return asked


def test_loopback_and_metadata_webhooks_are_refused_at_submit(processes, tmp_path, receiver):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start_server(processes, env)
    port = receiver.server.server_address[1]
    with server.client(token) as client:
        rule = "is not allowed: a webhook reaches only hosts with public addresses"
        for target, reason in ((f"http://localhost:{port}/hook", rule),
                               ("http://169.254.169.254/latest/meta-data/", rule)):
            response = client.post("/api/bulk-generate", json={**articles(), "notify": [f"webhook:{target}"]})
            assert response.status_code == 422, response.text
            assert response.json()["type"] == "urn:bulkgen:problem:notification-refused"
            assert reason in response.json()["detail"] and "--webhook-allow" in response.json()["detail"]
            assert "127.0.0.1" not in response.json()["detail"]  # the rule, not what the name resolves to
    assert run_cli(["list", "--all-users", "--json"], env).out.strip() == "[]"


def test_an_allowed_network_gets_its_webhook_from_the_servers_processor(processes, tmp_path, receiver, svc):
    env = env_for(tmp_path, svc)
    token = make_token(env, "alice")
    server = start_server(processes, env, "--processor", "--webhook-allow", "127.0.0.0/8")
    hook = f"webhook:http://localhost:{receiver.server.server_address[1]}/hook"
    with server.client(token) as client:
        made = client.post("/api/bulk-generate", json={**articles(), "notify": [hook]})
        assert made.status_code == 201, made.text
    wait_for(lambda: receiver.events(), timeout=60, what="the webhook")
    assert receiver.events()[0]["bulk_job_id"] == made.json()["bulk_job_id"]
    assert receiver.posts[0]["headers"]["Host"] == f"localhost:{receiver.server.server_address[1]}"


def test_email_goes_only_to_the_users_own_address_or_allowed_domains(processes, tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice", "--email", "alice@example.com")
    server = start_server(processes, env, "--email-allow", "team.example.org")
    with server.client(token) as client:
        def notify(channel: str) -> int:
            return client.post("/api/bulk-generate", json={**articles(), "notify": [channel]}).status_code

        assert notify("email:alice@example.com") == 201
        assert notify("email:anyone@team.example.org") == 201
        assert notify("email:someone@elsewhere.example") == 422


# -- in-process: names resolved as the test says -----------------------------------------------------------


def test_names_that_resolve_inward_are_refused(monkeypatch):
    resolving(monkeypatch, {"hooks.example.test": "127.0.0.1", "meta.example.test": "169.254.169.254",
                            "ten.example.test": "10.1.2.3", "v6.example.test": "::ffff:127.0.0.1",
                            "public.example.test": "93.184.216.34"})
    policy = netpolicy.Policy()
    for name, reason in (("hooks", "loopback"), ("meta", "link-local"), ("ten", "private"), ("v6", "loopback")):
        with pytest.raises(netpolicy.Refused) as refused:
            netpolicy.check_webhook(f"https://{name}.example.test/h", policy)
        assert reason in refused.value.why and reason not in str(refused.value)
    assert netpolicy.check_webhook("https://public.example.test/h", policy) == ["93.184.216.34"]
    assert netpolicy.check_webhook("https://ten.example.test/h", netpolicy.Policy(("10.0.0.0/8",))) == ["10.1.2.3"]
    assert netpolicy.check_webhook("https://hooks.example.test/h", netpolicy.Policy(("hooks.example.test",)))


def test_ipv4_carried_inside_ipv6_is_judged_as_that_ipv4_address():
    """6to4 (2002::/16) and Teredo (2001::/32) carry an IPv4 address that a relay or tunnel may deliver to."""
    import ipaddress

    for text, reason in (("2002:7f00:1::", "loopback"), ("2002:a9fe:a9fe::", "link-local"),
                         ("2002:0a01:0203::", "private"), ("::ffff:169.254.169.254", "link-local"),
                         # Teredo: the client's IPv4 address is stored inverted in the last 32 bits.
                         ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback")):
        assert reason in (netpolicy.why_not_public(ipaddress.ip_address(text)) or ""), text
    assert netpolicy.why_not_public(ipaddress.ip_address("2002:5db8:d822::")) is None  # 6to4 of 93.184.216.34


def _ended_http_job(store, channel: str, policy: netpolicy.Policy):
    parsed = Manifest("t.yaml", Mode.topic, "t", [{"topic": f"T{i}", "word_count": 500} for i in range(10)])
    bulk = jobs.submit(store, parsed, "alice", notify=[channel], notify_policy=policy.to_record()).jobs[0][0]
    from bulkgen_cli.ops import control

    control.apply(store, control.Action.cancel, bulk.id)
    return store.get_bulk(bulk.id)


def test_a_name_rebound_inward_after_submit_is_refused_at_send(store, monkeypatch, receiver):
    """DNS rebinding: public when submitted, loopback when the notification is sent."""
    table = {"rebind.example.test": "93.184.216.34"}
    resolving(monkeypatch, table)
    port = receiver.server.server_address[1]
    channel = f"webhook:http://rebind.example.test:{port}/hook"
    netpolicy.check_channels([channel], netpolicy.Policy())  # what the server checks at submit: allowed
    bulk = _ended_http_job(store, channel, netpolicy.Policy())
    for inward in ("127.0.0.1", "169.254.169.254"):
        table["rebind.example.test"] = inward
        Notifier(store, "test", retry_delays=(0.0,) * 3).deliver(store.get_bulk(bulk.id))
    step = store.get_bulk(bulk.id).outbox["steps"][0]
    assert step["state"] == StepState.pending.value and step["attempts"] == 2
    assert step["last_error"].startswith("refused: webhook host 'rebind.example.test' is not allowed")
    assert "169.254" not in step["last_error"]
    assert receiver.posts == []


def test_the_request_connects_to_the_address_that_was_checked(store, monkeypatch, receiver):
    """An allowed made-up name (no DNS answers for it) reaches the receiver: the connection went to the
    address the check resolved, with the original Host header."""
    resolving(monkeypatch, {"hooks.internal.test": "127.0.0.1"})
    port = receiver.server.server_address[1]
    policy = netpolicy.Policy(("hooks.internal.test",))
    bulk = _ended_http_job(store, f"webhook:http://hooks.internal.test:{port}/hook", policy)
    Notifier(store, "test").deliver(store.get_bulk(bulk.id))
    assert [p["headers"]["Host"] for p in receiver.posts] == [f"hooks.internal.test:{port}"]
    assert store.get_bulk(bulk.id).outbox["steps"][0]["state"] == StepState.sent.value


def test_cli_jobs_keep_loopback_webhooks(store, receiver):
    parsed = Manifest("t.yaml", Mode.topic, "t", [{"topic": f"T{i}", "word_count": 500} for i in range(10)])
    bulk = jobs.submit(store, parsed, "alice", notify=[f"webhook:{receiver.url}"]).jobs[0][0]
    assert bulk.notify_policy is None
    from bulkgen_cli.ops import control

    control.apply(store, control.Action.cancel, bulk.id)
    Notifier(store, "test").deliver(store.get_bulk(bulk.id))
    assert len(receiver.posts) == 1
