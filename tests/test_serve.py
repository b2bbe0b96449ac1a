"""`bulkgen serve`: a real uvicorn server on 127.0.0.1 (a `bulkgen serve` subprocess), a real SQLite store,
httpx as the client. The routes, tokens, problem details, limits, CORS, logs and stopping."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from bulkgen_cli.cli.serve import INSTALL_HINT
from tests.cli_helpers import ROOT, base_env, env_for, run_cli, status_of
from tests.conftest import wait_for
from tests.serve_helpers import articles, make_token, start_server


@pytest.fixture
def served(processes, tmp_path):
    """A server on a fresh store, with tokens for alice (with her address), bob and an admin."""
    env = base_env(tmp_path)
    tokens = {"alice": make_token(env, "alice", "--email", "alice@example.com"), "bob": make_token(env, "bob"),
              "admin": make_token(env, "root", "--admin")}
    server = start_server(processes, env)
    server.tokens = tokens  # type: ignore[attr-defined]
    return server


def submit(server, token: str, body: dict | None = None, **headers: str) -> dict:
    with server.client(token) as client:
        response = client.post("/api/bulk-generate", json=body or articles(), headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_the_plain_cli_loads_nothing_of_the_server():
    code = ("import sys; sys.argv = ['bulkgen', '--help']\nfrom bulkgen_cli.cli.main import main\ntry: main()\n"
            "except SystemExit: pass\nheavy = [m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'uvicorn', 'starlette', 'pydantic') or m.startswith('bulkgen_cli.server')]\n"
            "print(heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
    assert "serve" in proc.stdout and "token" in proc.stdout


def test_serve_without_the_extra_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['bulkgen', 'serve']\n"
            "from bulkgen_cli.cli.main import main\nmain()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=base_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == INSTALL_HINT


def test_listening_beyond_loopback_needs_a_token(processes, tmp_path):
    env = base_env(tmp_path)
    refused = run_cli(["serve", "--host", "0.0.0.0", "--port", "1"], env)
    assert refused.code == 2
    assert "refusing to listen on 0.0.0.0 while no API token exists" in refused.err
    make_token(env, "alice")
    server = start_server(processes, env, "--host", "0.0.0.0")
    assert server.proc.poll() is None


def test_tokens_are_shown_once_and_stored_as_hashes(tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice", "--email", "alice@example.com")
    listed = json.loads(run_cli(["token", "list", "--json"], env).out)
    assert [(t["user"], t["admin"], t["email"], t["revoked_at"]) for t in listed] == [
        ("alice", False, "alice@example.com", None)]
    store_bytes = (tmp_path / "xdg" / "bulkgen" / "bulkgen.db").read_bytes()
    assert token.encode() not in store_bytes and token not in run_cli(["token", "list"], env).out
    assert run_cli(["token", "revoke", listed[0]["id"]], env).code == 0
    assert run_cli(["token", "revoke", listed[0]["id"]], env).code == 3
    assert json.loads(run_cli(["token", "list", "--json"], env).out)[0]["revoked_at"] is not None


def test_without_a_valid_token_every_route_answers_401(served):
    with served.client() as anonymous, served.client("bgk_" + "x" * 43) as forged:
        for client in (anonymous, forged):
            for method, path in (("GET", "/api/bulk-generate"), ("POST", "/api/bulk-generate"),
                                 ("GET", "/api/events"), ("POST", "/api/bulk-generate/abc/pause")):
                response = client.request(method, path)
                assert response.status_code == 401, (method, path)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["status"] == 401


def test_a_revoked_token_stops_working(served):
    token = make_token(served.env, "carol")
    with served.client(token) as client:
        assert client.get("/api/bulk-generate").status_code == 200
        token_id = [t for t in json.loads(run_cli(["token", "list", "--json"], served.env).out)
                    if t["user"] == "carol"][0]["id"]
        run_cli(["token", "revoke", token_id], served.env)
        assert client.get("/api/bulk-generate").status_code == 401


def test_a_user_sees_only_their_jobs_and_an_admin_sees_all(served):
    job = submit(served, served.tokens["alice"])["bulk_job_id"]
    with served.client(served.tokens["bob"]) as bob, served.client(served.tokens["admin"]) as admin:
        for method, path in (("GET", f"/api/bulk-generate/{job}"), ("POST", f"/api/bulk-generate/{job}/cancel"),
                             ("GET", f"/api/bulk-generate/{job}/events")):
            response = bob.request(method, path)
            assert response.status_code == 404 and response.json()["exit_code"] == 3, (method, path)
        assert bob.get("/api/bulk-generate").json() == []
        assert [b["id"] for b in admin.get("/api/bulk-generate").json()] == [job]
        assert admin.get(f"/api/bulk-generate/{job}").json()["bulk_job"]["userId"] == "alice"
        assert admin.post(f"/api/bulk-generate/{job}/pause").json()["bulk_job"]["status"] == "paused"


def test_submit_status_and_list_answer_in_the_story_shapes(served):
    answer = submit(served, served.tokens["alice"], articles(12))
    assert answer == {"success": True, "bulk_job_id": answer["bulk_job_id"], "total_items": 12,
                      "message": "Bulk generation queued", "status": "queued", "created": True}
    job = answer["bulk_job_id"]
    with served.client(served.tokens["alice"]) as client:
        doc = client.get(f"/api/bulk-generate/{job}").json()
        assert doc == status_of(served.env, job, "--user", "alice")  # the shape of `status --json`
        assert doc["progress"] == {"total": 12, "completed": 0, "failed": 0, "cancelled": 0, "remaining": 12,
                                   "percentage": 0}
        assert [j["topic"] for j in doc["jobs"]][:2] == ["Topic 1", "Topic 2"]
        second = submit(served, served.tokens["alice"], articles(10, "Other"))["bulk_job_id"]
        client.post(f"/api/bulk-generate/{second}/pause")
        assert [b["id"] for b in client.get("/api/bulk-generate").json()] == [second, job]
        assert [b["id"] for b in client.get("/api/bulk-generate", params={"status": "paused"}).json()] == [second]
        assert len(client.get("/api/bulk-generate", params={"limit": 1}).json()) == 1
        bad = client.get("/api/bulk-generate", params={"status": "sleeping", "limit": 0})
        assert bad.status_code == 422 and {p["field"] for p in bad.json()["problems"]} == {"status", "limit"}


def test_the_story_form_and_the_options_are_accepted(served):
    body = {"mode": "keywords", "items": [{"keywords": ["a", "b"]}] * 10, "name": "Story form",
            "priority": "high", "not_before": "+1h"}
    job = submit(served, served.tokens["alice"], body)["bulk_job_id"]
    with served.client(served.tokens["alice"]) as client:
        bulk = client.get(f"/api/bulk-generate/{job}").json()["bulk_job"]
    assert (bulk["mode"], bulk["name"], bulk["priority"]) == ("keywords", "Story form", "high")
    assert bulk["not_before"] is not None


def test_the_control_routes_follow_the_state_rules(served):
    job = submit(served, served.tokens["alice"])["bulk_job_id"]
    with served.client(served.tokens["alice"]) as client:
        def act(action: str):
            return client.post(f"/api/bulk-generate/{job}/{action}")

        paused = act("pause").json()
        assert (paused["changed"], paused["previous"], paused["bulk_job"]["status"]) == (True, "queued", "paused")
        assert paused["message"].startswith(f"Bulk job {job}: queued -> paused.")
        assert act("pause").json()["changed"] is False
        refused = act("retry-failed")
        assert refused.status_code == 409 and refused.json()["exit_code"] == 4
        assert "it is paused, not completed" in refused.json()["detail"]
        assert act("resume").json()["bulk_job"]["status"] == "queued"
        cancelled = act("cancel").json()
        assert cancelled["bulk_job"]["status"] == "cancelled" and cancelled["progress"]["cancelled"] == 10
        assert act("resume").status_code == 409
        assert client.post("/api/bulk-generate/nosuchjob/cancel").status_code == 404


def test_retry_failed_over_http(served, svc):
    body = articles(9)
    body["bulk_config"]["items"].append({"topic": "Refused [status:400]"})
    job = submit(served, served.tokens["alice"], body)["bulk_job_id"]
    assert run_cli(["run"], served.env | {"BULKGEN_API_URL": svc.url}).code == 0
    with served.client(served.tokens["alice"]) as client:
        assert client.get(f"/api/bulk-generate/{job}").json()["progress"]["failed"] == 1
        unnamed = articles(10)
        del unnamed["bulk_config"]["name"]
        other = client.post("/api/bulk-generate", json=unnamed).json()["bulk_job_id"]
        assert client.get(f"/api/bulk-generate/{other}").json()["bulk_job"]["name"] == "Untitled job"
        retried = client.post(f"/api/bulk-generate/{job}/retry-failed").json()
        assert (retried["previous"], retried["bulk_job"]["status"]) == ("completed", "queued")


def test_an_uploaded_file_with_mistakes_answers_its_located_problems(served, tmp_path):
    text = yaml.safe_dump({"items": [{"topic": f"T {i}"} for i in range(9)] + [{"topic": "x", "word_cout": 5}]},
                          sort_keys=False)
    with served.client(served.tokens["alice"]) as client:
        response = client.post("/api/bulk-generate", files={"file": ("my articles.yaml", text, "application/yaml")})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["type"], problem["exit_code"]) == ("urn:bulkgen:problem:invalid-articles", 2)
    assert problem["detail"] == "the articles file has 1 problem; nothing was stored."
    assert problem["problems"] == [{"file": "my articles.yaml", "item": 10, "line": 12, "field": "word_cout",
                                    "message": "unknown field; did you mean 'word_count'?", "row": None,
                                    "column": None}]
    cli = run_cli(["submit", str(_write(tmp_path / "my articles.yaml", text))], served.env)
    assert cli.code == 2 and "field 'word_cout': unknown field; did you mean 'word_count'?" in cli.err
    assert run_cli(["list", "--all-users", "--json"], served.env).out.strip() == "[]"


def _write(path, text):
    path.write_text(text)
    return path


def test_an_uploaded_csv_is_queued_under_its_file_name(served):
    csv = "topic,word_count\n" + "".join(f"Row {i},500\n" for i in range(10))
    with served.client(served.tokens["alice"]) as client:
        response = client.post("/api/bulk-generate", files={"file": ("weekly.csv", csv, "text/csv")},
                               data={"priority": "low"})
        assert response.status_code == 201, response.text
        bulk = client.get(f"/api/bulk-generate/{response.json()['bulk_job_id']}").json()["bulk_job"]
    assert (bulk["name"], bulk["priority"], bulk["total_items"]) == ("weekly", "low", 10)


def test_bad_bodies_are_4xx_problems_never_500(served):
    with served.client(served.tokens["alice"]) as client:
        cases = [
            (client.post("/api/bulk-generate", content=b"{not json", headers={"content-type": "application/json"}), 400),
            (client.post("/api/bulk-generate", json=[1, 2]), 400),
            (client.post("/api/bulk-generate", json={"bulk_config": {"items": []}}), 422),
            (client.post("/api/bulk-generate", json={**articles(), "priority": "top"}), 400),
            (client.post("/api/bulk-generate", json={**articles(), "priority": "urgent"}), 403),
            (client.post("/api/bulk-generate", content=b"topic\n", headers={"content-type": "text/csv"}), 415),
            (client.post("/api/bulk-generate", files={"file": ("a.exe", b"MZ", "application/octet-stream")}), 400),
            (client.post("/api/bulk-generate", content=b"--x\r\nbroken", headers={
                "content-type": "multipart/form-data; boundary=x"}), 400),
        ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert set(response.json()) == {"type", "title", "status", "detail", "exit_code", "problems"}


def test_bodies_over_1_mib_are_refused_while_being_read(served):
    big = {"bulk_config": {"items": [{"topic": "x" * 1000}] * 1100}}
    with served.client(served.tokens["alice"]) as client:
        declared = client.post("/api/bulk-generate", json=big)
        assert declared.status_code == 413 and declared.json()["exit_code"] == 2

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(300):
                yield b" " * 8192

        chunked = client.post("/api/bulk-generate", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        upload = client.post("/api/bulk-generate", files={"file": ("big.yaml", b"#" * (1024 * 1024 + 1))})
        assert upload.status_code == 413
    assert run_cli(["list", "--all-users", "--json"], served.env).out.strip() == "[]"


def test_an_idempotency_key_is_honoured(served):
    first = submit(served, served.tokens["alice"], articles(), **{"Idempotency-Key": "nightly-1"})
    again = submit(served, served.tokens["alice"], articles(11), **{"Idempotency-Key": "nightly-1"})
    assert again["bulk_job_id"] == first["bulk_job_id"] and (first["created"], again["created"]) == (True, False)
    assert again["total_items"] == 10 and "was used before" in again["message"]
    other = submit(served, served.tokens["bob"], articles(), **{"Idempotency-Key": "nightly-1"})
    assert other["bulk_job_id"] != first["bulk_job_id"]


def test_cors_is_off_unless_an_origin_is_given(served, processes):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    with served.client() as client:
        assert "access-control-allow-origin" not in client.options("/api/bulk-generate", headers=preflight).headers
    opened = start_server(processes, served.env, "--cors", "https://app.example.com")
    with opened.client() as client:
        response = client.options("/api/bulk-generate", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        evil = client.options("/api/bulk-generate", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


def test_no_token_reaches_a_log_line(served):
    token = served.tokens["alice"]
    with served.client(token) as client:
        client.get("/api/bulk-generate", params={"access_token": token, "limit": 3})
        client.get(f"/api/bulk-generate?token={token}")
        client.post("/api/bulk-generate", json=articles())
    with served.client("bgk_wrong" + token) as client:
        client.get("/api/bulk-generate")
    served.stop()
    log = "".join(served.log)
    assert '"GET /api/bulk-generate?access_token=***&limit=3 HTTP/1.1" 200' in log
    assert token not in log and token[4:20] not in log


def test_ctrl_c_stops_the_server_and_its_processor_with_the_store_consistent(processes, tmp_path, start_service):
    slow = start_service(latency=1.5)
    env = env_for(tmp_path, slow)
    token = make_token(env, "alice")
    server = start_server(processes, env, "--processor", "--grace", "10")
    job = submit(server, token)["bulk_job_id"]
    wait_for(lambda: slow.in_flight >= 1, what="an item in flight")
    assert server.stop(signal.SIGINT) == 130
    doc = status_of(env, job, "--user", "alice")
    statuses = [j["status"] for j in doc["jobs"]]
    assert "processing" not in statuses and statuses.count("completed") >= 1
    assert doc["progress"]["completed"] == statuses.count("completed")
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", "read") as store:
        assert store.processor_leases() == []
    assert "Traceback" not in "".join(server.log)


def test_one_article_and_its_retry_and_cancel_over_http(served, svc):
    body = articles(9)
    body["bulk_config"]["items"].append({"topic": "Refused [status:400]"})
    job = submit(served, served.tokens["alice"], body)["bulk_job_id"]
    assert run_cli(["run"], served.env | {"BULKGEN_API_URL": svc.url}).code == 0
    with served.client(served.tokens["alice"]) as alice, served.client(served.tokens["bob"]) as bob:
        rows = alice.get(f"/api/bulk-generate/{job}").json()["jobs"]
        done, failed = rows[0]["id"], rows[9]["id"]
        article = alice.get(f"/api/items/{done[:10]}").json()
        assert (article["id"], article["status"], article["bulk_job_id"]) == (done, "completed", job)
        assert article["text"] and article["front_matter"]["topic"] == "Topic 1"
        assert bob.get(f"/api/items/{done}").status_code == 404
        refused = alice.post(f"/api/items/{done}/retry")
        assert refused.status_code == 409 and "only a failed or cancelled item can be retried" in refused.json()["detail"]
        retried = alice.post(f"/api/items/{failed}/retry").json()
        assert (retried["changed"], retried["previous"], retried["item"]["status"]) == (True, "failed", "queued")
        assert retried["bulk_job"]["status"] == "queued"
        cancelled = alice.post(f"/api/items/{failed}/cancel").json()
        assert (cancelled["item"]["status"], cancelled["bulk_job"]["status"]) == ("cancelled", "completed")
        assert alice.get("/api/items/zz").status_code == 400


def test_saved_templates_and_a_submit_that_fills_one(served):
    from tests.cli_helpers import EXAMPLES

    template = (EXAMPLES / "city-guides.yaml").read_text()
    with served.client(served.tokens["alice"]) as alice, served.client(served.tokens["bob"]) as bob:
        saved = alice.put("/api/templates/cities", json={"text": template})
        assert saved.status_code == 201 and saved.json()["placeholders"][:2] == ["slug", "city"]
        taken = alice.put("/api/templates/cities", json={"text": template})
        assert taken.status_code == 409 and taken.json()["exit_code"] == 4
        assert alice.put("/api/templates/cities", json={"text": template, "replace": True}).status_code == 200
        assert [t["name"] for t in alice.get("/api/templates").json()] == ["cities"]
        assert alice.get("/api/templates/cities").json()["text"] == template
        assert bob.get("/api/templates/cities").status_code == 404 and bob.get("/api/templates").json() == []
        bad = alice.put("/api/templates/broken", json={"text": "item:\n  topik: '{x}'\n"})
        assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "topik"
        upload = alice.post("/api/bulk-generate", data={"template": "cities"},
                            files={"file": ("cities.csv", (EXAMPLES / "cities.csv").read_bytes(), "text/csv")})
        assert upload.status_code == 201, upload.text
        rows = [{"slug": f"c{i}", "city": f"City {i}", "landmark": "the square"} for i in range(10)]
        made = alice.post("/api/bulk-generate", json={"template": "cities", "values": rows}).json()
        doc = alice.get(f"/api/bulk-generate/{made['bulk_job_id']}").json()
        assert doc["bulk_job"]["name"] == "City guides" and doc["jobs"][0]["topic"].startswith("A weekend in City 0")
        short = alice.post("/api/bulk-generate", json={"template": "cities", "values": rows[:3]})
        assert short.status_code == 422 and "a bulk job takes 10 to 50" in short.text
        assert alice.delete("/api/templates/cities").json()["success"] is True
        assert alice.delete("/api/templates/cities").status_code == 404


def test_schedules_over_http(served):
    body = {**articles(), "schedule": "weekly", "cron": "0 6 * * MON", "zone": "Europe/Berlin", "priority": "high"}
    with served.client(served.tokens["alice"]) as alice, served.client(served.tokens["bob"]) as bob:
        made = alice.post("/api/schedules", json=body)
        assert made.status_code == 201, made.text
        assert (made.json()["name"], made.json()["status"], made.json()["job"]["priority"]) == ("weekly", "active", "high")
        taken = alice.post("/api/schedules", json=body)  # 409 as a taken template name is (it said 400 here)
        assert taken.status_code == 409 and taken.json()["detail"] == \
            "you have a schedule named 'weekly' already; nothing was stored (DELETE it first, or choose another name)."
        inward = alice.post("/api/schedules", json={**body, "schedule": "hooked",
                                                    "notify": ["webhook:http://localhost:9/h"]})
        assert inward.status_code == 422 and "only hosts with public addresses" in inward.json()["detail"]
        wrong = alice.post("/api/schedules", json={**body, "schedule": "x", "cron": "61 * * * *"})
        assert wrong.status_code == 400 and wrong.json()["exit_code"] == 2
        assert [s["name"] for s in alice.get("/api/schedules").json()] == ["weekly"]
        assert bob.get("/api/schedules/weekly").status_code == 404
        assert alice.post("/api/schedules/weekly/pause").json()["schedule"]["status"] == "paused"
        assert alice.post("/api/schedules/weekly/pause").json()["changed"] is False
        assert alice.post("/api/schedules/weekly/resume").json()["schedule"]["next_run"] is not None
        ran = alice.post("/api/schedules/weekly/run").json()
        job = alice.get(f"/api/bulk-generate/{ran['bulk_job_id']}").json()["bulk_job"]
        assert job["name"].startswith("Topic job (weekly ") and job["priority"] == "high"
        assert alice.delete("/api/schedules/weekly").json()["success"] is True
        assert alice.get("/api/schedules").json() == []
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(served.env["XDG_DATA_HOME"] + "/bulkgen/bulkgen.db", "read") as store:
        assert store.get_bulk(ran["bulk_job_id"]).notify_policy["origin"] == "http"  # its notifications: HTTP rules


def test_http_answers_speak_http_not_cli_flags(served):
    """An HTTP client has no `bulkgen list`, --all-users or --notify: the answers name routes and fields;
    the CLI's own messages are unchanged (tests/test_cli.py)."""
    token = served.tokens["alice"]
    with served.client(token) as client:
        missing = client.get("/api/bulk-generate/0123456789abcdef01234567").json()
        assert missing["detail"] == "no bulk job '0123456789abcdef01234567' for this user (job ids are whole, never prefixes)."
        item = client.get("/api/items/abcd1234").json()
        assert item["detail"] == "no item 'abcd1234' for this user (GET /api/bulk-generate/{id} lists a job's items)."
        assert client.get("/api/templates/nope").json()["detail"] == \
            "no template 'nope' for this user (GET /api/templates lists yours)."
        assert client.get("/api/schedules/nope").json()["detail"] == \
            "no schedule 'nope' for this user (GET /api/schedules lists yours)."
        notify = client.post("/api/bulk-generate", json={**articles(), "notify": ["slack:#x"]}).json()
        assert notify["detail"] == "notify 'slack:#x': use webhook:https://… or email:someone@example.com."
        body = articles()
        body["bulk_config"]["items"][0]["word_cout"] = 900
        bad = client.post("/api/bulk-generate", json=body).json()
        assert bad["detail"] == "'bulk_config' has 1 problem; nothing was stored."
        assert bad["problems"][0]["file"] == "bulk_config" and bad["problems"][0]["field"] == "word_cout"
        body = articles()
        body["bulk_config"]["priority"] = "high"
        misplaced = client.post("/api/bulk-generate", json=body)
        assert misplaced.status_code == 400
        assert misplaced.json()["detail"] == ("'priority' is an option of the submit, not of the articles: send it "
                                              "beside 'bulk_config', not inside it.")
        for answer in (missing, item, notify, bad, misplaced.json()):
            assert "--" not in answer["detail"] and "`bulkgen" not in answer["detail"], answer
    env = served.env | {"BULKGEN_USER": "alice"}
    cli = run_cli(["status", "0123456789abcdef01234567"], env)
    assert cli.code == 3 and "(see `bulkgen list`; --all-users to look wider" in cli.err
