"""Quotas of `bulkgen serve` (design.md, "Quotas"; docs/serving.md, "Limits"): size caps where the store amplifies,
per-user limits, the per-token write rate, and schedules that check their permissions at every run.

Real `bulkgen serve` subprocesses on 127.0.0.1, a real SQLite file, a real webhook receiver. A schedule's
run is made due by moving its stored next time back (as tests/test_schedules_processes.py does).
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from bulkgen_cli.input.manifest import MAX_EXTRA_BYTES
from bulkgen_cli.core.model import utcnow
from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import env_for, run_cli
from tests.conftest import wait_for
from tests.receivers import WebhookReceiver
from tests.serve_helpers import articles, make_token, start_server
from tests.test_schedules_processes import far_cron, missed

MIB = 1024 * 1024


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.stop()


def store_env(tmp_path, svc=None):
    path = tmp_path / "store.db"
    return path, env_for(tmp_path, svc, BULKGEN_STORE=f"sqlite:///{path}")


def stored_bytes(path) -> tuple[int, int]:
    """(the SQLite files' size, the articles' text stored in the rows)."""
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    with sqlite3.connect(path) as db:
        text = db.execute("SELECT COALESCE(SUM(length(CAST(article AS BLOB))), 0) FROM generation_jobs").fetchone()[0]
    return size, text


# -- size caps ------------------------------------------------------------------------------------------------


def test_a_1_mib_request_never_stores_more_than_a_few_times_its_size(processes, tmp_path):
    path, env = store_env(tmp_path)
    token = make_token(env, "alice")
    server = start_server(processes, env)
    blob = {"notes": "x" * (MIB - 20_000)}  # one default copied into all 50 items: ~50 MiB before the cap
    body = {"bulk_config": {"mode": "topic", "defaults": {"extra": blob},
                            "items": [{"topic": f"T {i}"} for i in range(50)]}}
    spin = "mode: spin\ndefaults: {source_text: &a " + "y" * 150_000 + "}\nitems:\n" + "".join(
        f"  - {{title: T{i}, source_text: *a}}\n" for i in range(50))  # an alias, 50 times: 7.5 MB of articles
    with server.client(token) as client:
        amplified = client.post("/api/bulk-generate", json=body)
        aliased = client.post("/api/bulk-generate", files={"file": ("spin.yaml", spin.encode(), "text/yaml")})
        big = [{"title": f"T {i}", "source_text": "z" * 20_000} for i in range(50)]  # ~1 MB, each item its own
        fine = client.post("/api/bulk-generate", json={"bulk_config": {"mode": "spin", "items": big}})
    assert amplified.status_code == 422, amplified.text[:300]
    problem = amplified.json()["problems"][0]
    assert problem["field"] == "extra" and problem["file"] == "bulk_config"
    assert f"at most {MAX_EXTRA_BYTES:,} (16 KiB)" in problem["message"]
    assert len(amplified.json()["problems"]) == 1  # a default's problem is said once, not once per item
    assert aliased.status_code == 422, aliased.text[:300]
    assert "as stored" in aliased.json()["problems"][0]["message"]
    assert "4 times the request's" in aliased.json()["problems"][0]["message"]
    assert fine.status_code == 201, fine.text[:300]
    request = len(json.dumps({"bulk_config": {"mode": "spin", "items": big}}).encode())
    size, text = stored_bytes(path)
    assert text <= 4 * request  # the stored articles of the one job taken: within its bound
    assert size <= 12 * MIB  # the whole store after three ~1 MiB requests (it grew by ~55 MB before)


def test_the_cli_has_the_same_extra_cap(cli, tmp_path):
    doc = {"mode": "topic", "items": [{"topic": f"T {i}"} for i in range(10)]}
    doc["items"][3]["extra"] = {"blob": "x" * (MAX_EXTRA_BYTES + 1)}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = cli("submit", str(path))
    assert result.code == 2 and "Traceback" not in result.err
    assert "item 4" in result.err and "field 'extra'" in result.err and "16,384 (16 KiB)" in result.err
    assert "no store at" in cli("list", "--json").out  # nothing stored, not even the store


# -- the write rate and per-user limits -----------------------------------------------------------------------


def test_a_submit_flood_from_one_token_gets_429_with_retry_after_while_another_still_writes(processes, tmp_path):
    env = env_for(tmp_path)
    alice, bob = make_token(env, "alice"), make_token(env, "bob")
    server = start_server(processes, env, "--write-rate", "1", "--write-burst", "5", "--max-active-jobs", "0")
    codes, refused = [], None
    with server.client(alice) as client:
        for _ in range(30):
            response = client.post("/api/bulk-generate", json=articles())
            codes.append(response.status_code)
            if response.status_code == 429 and refused is None:
                refused = response
    assert set(codes) <= {201, 429} and codes[:5] == [201] * 5, codes
    assert refused is not None, codes  # 30 accepted before
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["type"] == "urn:bulkgen:problem:rate-limited"
    assert "--write-rate" in refused.json()["detail"] and "1 writes" in refused.json()["detail"]
    with server.client(bob) as client:
        assert client.post("/api/bulk-generate", json=articles()).status_code == 201
        assert client.get("/api/bulk-generate").status_code == 200
    with server.client(alice) as client:
        assert client.get("/api/bulk-generate").status_code == 200  # reads are not counted


def test_each_per_user_limit_says_which_limit_and_how_to_raise_it(processes, tmp_path):
    env = env_for(tmp_path)
    tokens = {user: make_token(env, user) for user in ("alice", "bob", "carol")}
    admin = make_token(env, "root", "--admin")
    server = start_server(processes, env, "--max-active-jobs", "2", "--max-schedules", "1", "--max-stored-mb", "1")
    with server.client(tokens["alice"]) as client:
        assert [client.post("/api/bulk-generate", json=articles()).status_code for _ in range(2)] == [201, 201]
        third = client.post("/api/bulk-generate", json=articles())
    assert third.status_code == 429, third.text
    assert "you have 2 active jobs" in third.json()["detail"] and "the limit is 2 per user" in third.json()["detail"]
    assert "--max-active-jobs" in third.json()["detail"]
    big = articles(50, extra={"blob": "b" * 15_000})  # ~750 KB as stored
    with server.client(tokens["bob"]) as client:
        assert client.post("/api/bulk-generate", json=big).status_code == 201
        over = client.post("/api/bulk-generate", json=big)
    assert over.status_code == 413, over.text
    assert "the limit is 1 MiB per user" in over.json()["detail"] and "--max-stored-mb" in over.json()["detail"]
    body = {**articles(), "schedule": "daily", "cron": "0 6 * * *", "zone": "UTC"}
    with server.client(tokens["carol"]) as client:
        assert client.post("/api/schedules", json=body).status_code == 201
        second = client.post("/api/schedules", json={**body, "schedule": "other"})
    assert second.status_code == 429, second.text
    assert "the limit is 1 per user" in second.json()["detail"] and "--max-schedules" in second.json()["detail"]
    with server.client(admin) as client:  # an admin token is the operator's: no per-user limit
        assert [client.post("/api/bulk-generate", json=articles()).status_code for _ in range(3)] == [201] * 3


def test_fifty_submits_at_once_never_pass_the_active_jobs_limit(processes, tmp_path):
    """The check and the insert are one step in the store: 50 simultaneous submits of one user against a limit
    of 5 leave 5 jobs (the reviewer's run stored 8)."""
    from tests.conftest import at_once

    path, env = store_env(tmp_path)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--max-active-jobs", "5", "--write-burst", "100")

    def submit(ready) -> int:
        with server.client(alice) as client:
            ready()
            return client.post("/api/bulk-generate", json=articles()).status_code

    codes = at_once([submit] * 50)
    assert sorted(codes) == [201] * 5 + [429] * 45, codes
    with SqliteStore(path, "read") as store:
        assert store.usage("alice").active_jobs == 5


def ended_jobs(client, n: int) -> list[str]:
    """`n` jobs whose every item was cancelled: they end `completed`, and count no more as active."""
    ids = []
    for k in range(n):
        answer = client.post("/api/bulk-generate", json={**articles(10, f"Ended {k}"), "not_before": "+1d"})
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["bulk_job_id"])
        for item in client.get(f"/api/bulk-generate/{ids[-1]}").json()["jobs"]:
            assert client.post(f"/api/items/{item['id']}/cancel").status_code == 200
        assert client.get(f"/api/bulk-generate/{ids[-1]}").json()["bulk_job"]["status"] == "completed"
    return ids


def fail_items(path, bulk_id: str) -> None:
    """Its cancelled items become failed ones (written directly: no processor runs in these tests)."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE generation_jobs SET status = 'failed' WHERE bulk_job_id = ?", (bulk_id,))


def test_re_opening_an_ended_job_at_the_limit_is_refused_as_a_submit_is(processes, tmp_path):
    """Second review of issue 18: a retry of an item of a completed job, or a retry-failed, re-opened it past
    --max-active-jobs (the user held 4 active jobs at a limit of 2, as many more as they liked)."""
    path, env = store_env(tmp_path)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--max-active-jobs", "2", "--write-burst", "1000")
    with server.client(alice) as client:
        ended = ended_jobs(client, 2)
        fail_items(path, ended[1])
        for k in range(2):
            assert client.post("/api/bulk-generate", json={**articles(), "not_before": "+1d"}).status_code == 201
        item = client.get(f"/api/bulk-generate/{ended[0]}").json()["jobs"][0]["id"]
        retried = client.post(f"/api/items/{item}/retry")
        again = client.post(f"/api/bulk-generate/{ended[1]}/retry-failed")
        statuses = [client.get(f"/api/bulk-generate/{b}").json()["bulk_job"]["status"] for b in ended]
    for answer in (retried, again):
        assert answer.status_code == 429, answer.text
        assert "the limit is 2 per user" in answer.json()["detail"] and "--max-active-jobs" in answer.json()["detail"]
        assert answer.headers["Retry-After"]
    assert statuses == ["completed", "completed"]
    with SqliteStore(path, "read") as store:
        assert store.usage("alice").active_jobs == 2


def test_retries_racing_submits_never_pass_the_active_jobs_limit(processes, tmp_path):
    """Item retries of ended jobs and new submits of one user at once: the check and the re-opening are one step
    in the serving process (a per-user lock), so the limit holds exactly."""
    from tests.conftest import at_once

    path, env = store_env(tmp_path)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--max-active-jobs", "3", "--write-burst", "1000")
    with server.client(alice) as client:
        ended = ended_jobs(client, 6)
        items = [client.get(f"/api/bulk-generate/{b}").json()["jobs"][0]["id"] for b in ended]
        assert client.post("/api/bulk-generate", json={**articles(), "not_before": "+1d"}).status_code == 201
    calls = [f"/api/items/{i}/retry" for i in items] + ["/api/bulk-generate"] * 6

    def call(route: str):
        def worker(ready) -> int:
            body = {"json": {**articles(), "not_before": "+1d"}} if route == "/api/bulk-generate" else {}
            with server.client(alice) as client:
                ready()
                return client.post(route, **body).status_code
        return worker

    codes = at_once([call(route) for route in calls])
    assert len(codes) == len(calls) and set(codes) <= {200, 201, 429}, codes
    assert len([c for c in codes if c in (200, 201)]) == 2, codes  # 1 active + 2 more = the limit of 3
    with SqliteStore(path, "read") as store:
        assert store.usage("alice").active_jobs == 3


def test_an_idempotent_replay_at_the_limit_answers_with_its_job(processes, tmp_path):
    env = env_for(tmp_path)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--max-active-jobs", "1")
    with server.client(alice) as client:
        first = client.post("/api/bulk-generate", json=articles(), headers={"Idempotency-Key": "k-1"})
        replay = client.post("/api/bulk-generate", json=articles(), headers={"Idempotency-Key": "k-1"})
        other = client.post("/api/bulk-generate", json=articles(), headers={"Idempotency-Key": "k-2"})
    assert first.status_code == 201, first.text
    assert replay.status_code == 200, replay.text
    assert replay.json()["bulk_job_id"] == first.json()["bulk_job_id"] and replay.json()["created"] is False
    assert other.status_code == 429 and "the limit is 1 per user" in other.json()["detail"], other.text


# -- schedules ------------------------------------------------------------------------------------------------


def test_an_every_minute_schedule_is_refused_for_a_user_and_allowed_for_an_admin(processes, tmp_path):
    env = env_for(tmp_path)
    alice, admin = make_token(env, "alice"), make_token(env, "root", "--admin")
    server = start_server(processes, env)
    body = {**articles(), "schedule": "often", "cron": "* * * * *", "zone": "UTC"}
    with server.client(alice) as client:
        refused = client.post("/api/schedules", json=body)
        fine = client.post("/api/schedules", json={**body, "cron": "*/5 * * * *"})
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("cron '* * * * *' runs 1m00s apart") and "at most every 5m00s" in detail
    assert fine.status_code == 201, fine.text
    with server.client(admin) as client:
        assert client.post("/api/schedules", json=body).status_code == 201


def test_a_users_schedule_keeps_to_the_limits_when_run_now_and_when_due(processes, tmp_path, svc):
    """Run now (HTTP and CLI) over the limit is refused as a submit is; a due run over the limit is recorded
    skipped with the reason, once, and the schedule goes on to its next time."""
    path, env = store_env(tmp_path, svc)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--processor", "--max-active-jobs", "1")
    body = {**articles(), "schedule": "daily", "cron": far_cron(utcnow()), "zone": "UTC"}
    with server.client(alice) as client:
        assert client.post("/api/schedules", json=body).status_code == 201
        waiting = client.post("/api/bulk-generate", json={**articles(), "not_before": "+1d"})  # active, not run
        assert waiting.status_code == 201, waiting.text
        now = client.post("/api/schedules/daily/run")
    assert now.status_code == 429, now.text
    assert "the limit is 1 per user" in now.json()["detail"] and "--max-active-jobs" in now.json()["detail"]
    due = missed(path, "alice", "daily", days=0)

    def ran():
        with SqliteStore(path, "read") as store:
            return store.get_schedule("alice", "daily").last_error
    error = wait_for(ran, timeout=30, what="the due run")
    assert error.startswith("skipped: over the active-jobs limit: 1 active jobs") and "1 per user" in error, error
    with SqliteStore(path, "read") as store:
        schedule = store.get_schedule("alice", "daily")
        assert schedule.status == "active" and schedule.next_at > due  # on to its next time, not retried
        assert len(store.list_bulks("alice")) == 1
    listed = json.loads(run_cli(["schedule", "list", "--user", "alice", "--json"], env).out)
    assert listed[0]["last_run"]["error"] == error, listed
    server.stop()
    cli_now = run_cli(["schedule", "run", "daily", "--user", "alice"], env)
    assert cli_now.code == 2 and "over the active-jobs limit" in cli_now.err and "Traceback" not in cli_now.err
    assert "bulkgen serve --max-active-jobs N" in cli_now.err


def test_a_schedule_loses_its_webhook_when_the_operator_narrows_the_allow_list(processes, tmp_path, receiver, svc):
    path, env = store_env(tmp_path, svc)
    alice = make_token(env, "alice")
    server = start_server(processes, env, "--processor", "--webhook-allow", "127.0.0.1")
    body = {**articles(), "schedule": "daily", "cron": far_cron(utcnow()), "zone": "UTC",
            "notify": [f"webhook:{receiver.url}"]}
    with server.client(alice) as client:
        assert client.post("/api/schedules", json=body).status_code == 201, "added"
        assert client.post("/api/schedules/daily/run").status_code == 201  # allowed today: it posts
    wait_for(lambda: receiver.events(), timeout=60, what="the webhook while allowed")
    server.stop()
    server = start_server(processes, env, "--processor")  # the operator narrowed --webhook-allow
    missed(path, "alice", "daily", days=0)  # the next run is due now

    def ran():
        with SqliteStore(path, "read") as store:
            return store.get_schedule("alice", "daily").last_error
    error = wait_for(ran, timeout=30, what="the run after the narrowing")
    assert error.startswith("paused: its notifications are no longer allowed"), error
    with SqliteStore(path, "read") as store:
        assert store.get_schedule("alice", "daily").status == "paused"
        assert len(store.list_bulks("alice")) == 1  # only the run made while allowed
    assert len(receiver.events()) == 1


def test_a_schedule_whose_owners_token_is_revoked_is_paused_with_the_reason(processes, tmp_path, svc):
    path, env = store_env(tmp_path, svc)
    server = start_server(processes, env, "--processor")
    body = {**articles(), "schedule": "daily", "cron": far_cron(utcnow()), "zone": "UTC"}
    with server.client(make_token(env, "alice")) as client:
        assert client.post("/api/schedules", json=body).status_code == 201
    for record in json.loads(run_cli(["token", "list", "--user", "alice", "--json"], env).out):
        assert run_cli(["token", "revoke", record["id"]], env).code == 0
    missed(path, "alice", "daily", days=0)

    def paused():
        with SqliteStore(path, "read") as store:
            schedule = store.get_schedule("alice", "daily")
            return schedule.status == "paused" and schedule
    schedule = wait_for(paused, timeout=30, what="the schedule paused")
    assert "its owner 'alice' has no live API token" in schedule.last_error
    listed = run_cli(["schedule", "list", "--user", "alice"], env)
    assert "paused" in listed.out and "no live API token" in listed.out, listed.out + listed.err
    with SqliteStore(path, "read") as store:
        assert store.list_bulks("alice") == []
    server.stop()


def test_usage_counts_active_jobs_and_stored_bytes(store):
    from tests.conftest import articles as plain
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.input.manifest import Manifest, stored_size
    from bulkgen_cli.core.model import Mode

    assert (store.usage("alice").active_jobs, store.usage("alice").stored_bytes) == (0, 0)
    made = [jobs.submit(store, Manifest("f", Mode.topic, "f", plain(10)), "alice").ids[0] for _ in range(2)]
    jobs.submit(store, Manifest("f", Mode.topic, "f", plain(10)), "bob")
    store.cancel_bulk(made[0], utcnow())
    usage = store.usage("alice")
    assert usage.active_jobs == 1 and usage.stored_bytes == 2 * stored_size(plain(10)) > 0


def test_a_settings_record_is_kept_and_replaced(store):
    assert store.get_setting("serve_policy") is None
    store.put_setting("serve_policy", {"webhook_allow": ["10.0.0.0/8"], "email_allow": []})
    store.put_setting("serve_policy", {"webhook_allow": [], "email_allow": ["example.com"]})
    assert store.get_setting("serve_policy") == {"webhook_allow": [], "email_allow": ["example.com"]}


def test_saved_templates_count_toward_a_per_user_limit(processes, tmp_path):
    env = env_for(tmp_path)
    alice, bob, admin = make_token(env, "alice"), make_token(env, "bob"), make_token(env, "root", "--admin")
    server = start_server(processes, env, "--max-templates", "2")
    text = {"text": "mode: topic\nitem:\n  topic: '{{ topic }}'\n"}
    with server.client(alice) as client:
        assert [client.put(f"/api/templates/t{n}", json=text).status_code for n in range(2)] == [201, 201]
        third = client.put("/api/templates/t2", json=text)
        replaced = client.put("/api/templates/t1", json={**text, "replace": True})
        assert client.delete("/api/templates/t0").status_code == 200
        again = client.put("/api/templates/t2", json=text)
    assert third.status_code == 429, third.text
    detail = third.json()["detail"]
    assert "you have 2 saved templates; the limit is 2 per user" in detail and "--max-templates" in detail
    assert replaced.status_code == 200, replaced.text  # a replacement adds no template
    assert again.status_code == 201, again.text  # one deleted: room for one
    with server.client(bob) as client:
        assert client.put("/api/templates/t0", json=text).status_code == 201  # each user's own count
    with server.client(admin) as client:
        assert [client.put(f"/api/templates/a{n}", json=text).status_code for n in range(3)] == [201] * 3
