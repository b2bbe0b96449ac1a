"""Fair turns (design.md, "Fair turns") end to end: a real `bulkgen serve --processor` on 127.0.0.1 and a real
SQLite store; who may queue an urgent job over HTTP and on the CLI."""

from __future__ import annotations

import datetime as dt

from bulkgen_cli.core.model import utcnow
from tests.cli_helpers import base_env, env_for, run_cli, status_of
from tests.conftest import wait_for
from tests.serve_helpers import articles, make_token, start_server


def _submit(server, token: str, body: dict) -> str:
    with server.client(token) as client:
        response = client.post("/api/bulk-generate", json=body)
    assert response.status_code == 201, response.text
    return response.json()["bulk_job_id"]


def test_a_server_takes_turns_between_two_users_jobs(processes, tmp_path, start_service):
    """Alice's three jobs (her last one high) were queued before Bob's one: Bob's items still go every other claim."""
    env = env_for(tmp_path, start_service())
    alice, bob = make_token(env, "alice"), make_token(env, "bob")
    server = start_server(processes, env, "--processor")
    # Every job becomes due at once: the claims' order is then the turns' alone, whatever the submits' timing.
    due = utcnow() + dt.timedelta(seconds=3)
    when = {"not_before": due.isoformat()}
    a1 = _submit(server, alice, {**articles(10, "A1"), **when})
    a2 = _submit(server, alice, {**articles(10, "A2"), **when})
    a3 = _submit(server, alice, {**articles(10, "A3"), **when, "priority": "high"})
    b1 = _submit(server, bob, {**articles(10, "B1"), **when})
    assert utcnow() < due, "the submits took longer than the margin before the jobs' start"
    wait_for(lambda: status_of(env, b1, "--user", "bob")["bulk_job"]["status"] == "completed", timeout=20,
             what="bob's job to complete")
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", "read") as store:
        claimed = [i for job in (a1, a2, a3, b1) for i in store.list_items(job) if i.fence is not None]
    order = [(i.userId, i.bulk_job_id) for i in sorted(claimed, key=lambda i: i.fence)]
    assert order[:20] == [("alice", a3), ("bob", b1)] * 10  # alice's high job first among hers
    server.stop()


def test_only_an_admin_queues_an_urgent_job_over_http(processes, tmp_path):
    env = base_env(tmp_path)
    alice, root = make_token(env, "alice"), make_token(env, "root", "--admin")
    server = start_server(processes, env)
    with server.client(alice) as client:
        refused = client.post("/api/bulk-generate", json={**articles(), "priority": "urgent"})
        assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["detail"] == ("priority 'urgent' puts a job ahead of every user's and needs an admin "
                                            "token; use 'high' to put this job ahead of your own others.")
        schedule = {**articles(), "schedule": "s", "cron": "0 6 * * MON", "zone": "UTC", "priority": "urgent"}
        assert client.post("/api/schedules", json=schedule).status_code == 403
        assert client.get("/api/bulk-generate").json() == [] and client.get("/api/schedules").json() == []
        high = _submit(server, alice, {**articles(), "priority": "high"})
        assert client.get(f"/api/bulk-generate/{high}").json()["bulk_job"]["priority"] == "high"
    urgent = _submit(server, root, {**articles(), "priority": "urgent"})
    with server.client(root) as client:
        assert client.get(f"/api/bulk-generate/{urgent}").json()["bulk_job"]["priority"] == "urgent"
    server.stop()


def test_the_operator_queues_an_urgent_job_on_the_cli(tmp_path):
    env = base_env(tmp_path)
    path = tmp_path / "a.yaml"
    path.write_text("mode: topic\nitems:\n" + "".join(f"  - topic: T{n}\n" for n in range(10)))
    done = run_cli(["submit", str(path), "--priority", "urgent"], env)
    assert done.code == 0, done.err
    assert status_of(env, done.out.strip())["bulk_job"]["priority"] == "urgent"
    wrong = run_cli(["submit", str(path), "--priority", "top"], env)
    assert wrong.code == 2 and "urgent" in wrong.err and "Traceback" not in wrong.err


def test_concurrent_claims_on_sqlite_take_exact_turns(tmp_path):
    """Three processors (threads, each with its own connection) claiming at once: the turn is read and recorded in
    each claim's transaction, so the claims, in fencing-token order, still alternate between the users exactly."""
    import threading

    from bulkgen_cli.core.model import ItemStatus, Outcome
    from bulkgen_cli.store.sqlite import SqliteStore
    from tests.conftest import claim, submit

    path = tmp_path / "s.db"
    with SqliteStore(path) as setup:
        t = utcnow() - dt.timedelta(seconds=10)
        jobs = [submit(setup, 10, user="alice", created_at=t + dt.timedelta(seconds=n)) for n in range(3)]
        jobs.append(submit(setup, 10, user="bob", created_at=t + dt.timedelta(seconds=5)))

    def work(owner: str) -> None:
        with SqliteStore(path) as store:
            while any(i.status == "queued" for job in jobs for i in store.list_items(job.id)):
                item = claim(store, owner, 30, utcnow(), max_in_flight=3)
                if item is not None:
                    store.finish_item(item.id, owner, Outcome(ItemStatus.completed), utcnow())

    threads = [threading.Thread(target=work, args=(f"p{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    with SqliteStore(path, "read") as store:
        claimed = sorted((i for job in jobs for i in store.list_items(job.id)), key=lambda i: i.fence)
    assert all(i.status == "completed" for i in claimed)
    assert [i.userId for i in claimed] == ["alice", "bob"] * 10 + ["alice"] * 20
