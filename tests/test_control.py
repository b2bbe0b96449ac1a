"""The state rules of design.md, "State rules", as a user meets them: each action from each state."""

from __future__ import annotations

import json

import pytest

from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import EXAMPLES
from tests.conftest import claim
from tests.files import write_articles


def make_state(cli, tmp_path, state: str) -> str:
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    store = SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db")
    try:
        t = utcnow()
        if state in ("processing", "paused-started"):
            claim(store, "elsewhere", 600, t)
        if state in ("paused", "paused-started"):
            assert cli("pause", bulk_id).code == 0
        if state == "completed":
            assert cli("run").code == 0
        if state == "completed-failed":
            for n in range(12):
                item = claim(store, "p", 60, t)
                outcome = Outcome(ItemStatus.failed, error="HTTP 400") if n < 2 else Outcome(ItemStatus.completed)
                store.finish_item(item.id, "p", outcome, t)
            store.refresh_counters(bulk_id, t)
        if state == "cancelled":
            assert cli("cancel", bulk_id).code == 0
    finally:
        store.close()
    return bulk_id


# (state, action) -> (exit code, status afterwards); None: the action holds already
RULES = {
    ("queued", "pause"): (0, "paused"),
    ("queued", "resume"): (0, "queued"),
    ("queued", "cancel"): (0, "cancelled"),
    ("queued", "retry-failed"): (4, "queued"),
    ("processing", "pause"): (0, "paused"),
    ("processing", "resume"): (0, "processing"),
    ("processing", "cancel"): (0, "cancelled"),
    ("processing", "retry-failed"): (4, "processing"),
    ("paused", "pause"): (0, "paused"),
    ("paused", "resume"): (0, "queued"),
    ("paused", "cancel"): (0, "cancelled"),
    ("paused", "retry-failed"): (4, "paused"),
    ("paused-started", "resume"): (0, "processing"),
    ("completed", "pause"): (4, "completed"),
    ("completed", "resume"): (4, "completed"),
    ("completed", "cancel"): (4, "completed"),
    ("completed", "retry-failed"): (4, "completed"),
    ("completed-failed", "pause"): (4, "completed"),
    ("completed-failed", "cancel"): (4, "completed"),
    ("completed-failed", "retry-failed"): (0, "queued"),
    ("cancelled", "pause"): (4, "cancelled"),
    ("cancelled", "resume"): (4, "cancelled"),
    ("cancelled", "cancel"): (0, "cancelled"),
    ("cancelled", "retry-failed"): (4, "cancelled"),
}


@pytest.mark.parametrize("state, action", list(RULES))
def test_state_rules(cli, tmp_path, state, action):
    bulk_id = make_state(cli, tmp_path, state)
    code, after = RULES[state, action]
    result = cli(action, bulk_id, "--json")
    assert result.code == code, result.err
    status = json.loads(cli("status", bulk_id, "--json").out)["bulk_job"]["status"]
    assert status == after
    if code == 0:
        doc = json.loads(result.out)
        assert doc["bulk_job"]["status"] == after and len(doc["jobs"]) == 12
    else:
        assert f"cannot {action} bulk job {bulk_id}:" in result.err
        error = json.loads(result.out)["error"]  # with --json, the error is JSON on stdout too
        assert error["code"] == 4 and error["message"].startswith(f"cannot {action} bulk job {bulk_id}:")


@pytest.mark.parametrize("action", ["pause", "resume", "cancel", "retry-failed"])
def test_unknown_or_foreign_job_is_not_found(cli, action):
    theirs = cli("submit", str(EXAMPLES / "articles.yaml"), "--user", "someone-else").out.strip()
    assert cli(action, "f" * 24).code == 3
    result = cli(action, theirs)
    assert result.code == 3 and "no bulk job" in result.err
    assert json.loads(cli("status", theirs, "--json", "--all-users").out)["bulk_job"]["status"] == "queued"


def test_all_users_may_act_on_any_job(cli):
    theirs = cli("submit", str(EXAMPLES / "articles.yaml"), "--user", "someone-else").out.strip()
    assert cli("pause", theirs, "--all-users").code == 0
    assert json.loads(cli("status", theirs, "--json", "--all-users").out)["bulk_job"]["status"] == "paused"


def test_retry_failed_completes_the_job_after_the_service_recovers(cli, tmp_path, service):
    env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token", "BULKGEN_MAX_RETRIES": "1"}
    path = write_articles(tmp_path / "f.yaml", [f"T{i} [fail:2]" if i in (1, 4) else f"T{i}" for i in range(10)])
    bulk_id = cli("submit", str(path), "--wait", env=env).out.strip()
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["progress"]["failed"] == 2 and doc["bulk_job"]["status"] == "completed"
    # The service recovers (the third try of each succeeds): retry-failed completes the job.
    assert cli("retry-failed", bulk_id).code == 0
    assert cli("run", env=env).code == 0
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["bulk_job"]["status"] == "completed"
    assert doc["progress"] == {"total": 10, "completed": 10, "failed": 0, "cancelled": 0, "remaining": 0,
                               "percentage": 100}
    retried = [j for j in doc["jobs"] if j["queue_position"] in (2, 5)]
    assert all(j["retry_count"] == 2 and j["attempts"] == 1 for j in retried)
    ok_requests = [r for r in service.stats()["requests"] if r["outcome"] == "ok"]
    assert len(ok_requests) == 10 and len({r["job_id"] for r in ok_requests}) == 10


def test_retry_failed_waits_for_the_last_ends_notification(cli, tmp_path, service):
    from tests.receivers import WebhookReceiver

    receiver = WebhookReceiver(fail_first=99)
    try:
        env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token", "BULKGEN_NOTIFY_RETRY": "60"}
        path = write_articles(tmp_path / "f.yaml", ["Bad [fail:9]"] + [f"T{i}" for i in range(9)])
        bulk_id = cli("submit", str(path), "--notify", f"webhook:{receiver.url}", env=env).out.strip()
        store = SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db")
        try:  # a processor that ends the job and stops before the retry of its notification
            from bulkgen_cli.content.http import HttpGenerator
            from bulkgen_cli.delivery.notify import Notifier
            from bulkgen_cli.engine.processor import Processor
            from bulkgen_cli.core.settings import RunSettings

            processor = Processor(store, HttpGenerator(service.url, "s3cret-token", 5),
                                  RunSettings(delay=0, backoff=0.01, max_retries=0))
            processor.notifier = Notifier(store, "p", retry_delays=(60,))
            for _ in range(10):
                processor.work_once()
            processor.release()
        finally:
            store.close()
        doc = json.loads(cli("status", bulk_id, "--json").out)
        assert doc["bulk_job"]["status"] == "completed" and doc["notifications"][0]["state"] == "pending"
        refused = cli("retry-failed", bulk_id)
        assert refused.code == 4 and "still being delivered" in refused.err
    finally:
        receiver.stop()
