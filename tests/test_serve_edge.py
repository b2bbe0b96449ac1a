"""`bulkgen serve`'s smaller defences (issue 18, item 8): the access log (masked, naming the user), the
headers of every answer, no redirect naming the Host header, 413 for every over-cap body, no file path or
resolved address in an answer, the store file private. A real server on 127.0.0.1 and a real SQLite file."""

from __future__ import annotations

import os
import stat
from urllib.parse import quote

import httpx
import pytest

from bulkgen_cli.delivery import netpolicy
from bulkgen_cli.core.errors import NoStore, StoreUnavailable
from bulkgen_cli.server.edge import scrub
from bulkgen_cli.server.problems import from_error
from tests.cli_helpers import base_env
from tests.serve_helpers import articles, make_token, start_server

TOKEN = "bgk_Zq3xYwVu7TsRpOnMlKjIhGfEdCbA9876"


def five_times(text: str) -> str:
    for _ in range(5):
        text = quote(text, safe="")
    return text


@pytest.fixture
def served(processes, tmp_path):
    env = base_env(tmp_path)
    server = start_server(processes, env)
    server.token = make_token(env, "alice")  # type: ignore[attr-defined]
    return server


@pytest.mark.parametrize("logged", [
    f"/x?q={TOKEN}", f"/x?q=bgk%5F{TOKEN[4:]}", f"/x?q=%62gk_{TOKEN[4:]}", f"/x?q=%62%67%6B%5f{TOKEN[4:]}",
    f"/x/bgk%255F{TOKEN[4:]}", f"/x?q=a+{TOKEN}+b",
    f"/x?pwd={TOKEN[4:]}", f"/x?pass={TOKEN[4:]}", f"/x?passwd={TOKEN[4:]}", f"/x?password={TOKEN[4:]}",
    f"/x?secret={TOKEN[4:]}", f"/x?token={TOKEN[4:]}", f"/x?key={TOKEN[4:]}", f"/x?auth={TOKEN[4:]}",
    f"/x?api_key={TOKEN[4:]}", f"/x?access_token={TOKEN[4:]}", f"/x?signature={TOKEN[4:]}",
    f"/x?a=1&client_secret={TOKEN[4:]}&b=2", f"/x?p%61ss={TOKEN[4:]}", f"/x?PASSWORD={TOKEN[4:]}",
    f"Authorization: Bearer {TOKEN[4:]}",
    # review of issue 18, finding 9: `pw`, and a password inside a URL carried in a value or in the path
    f"/x?pw={TOKEN[4:]}", f"/x?next=https://bob:{TOKEN[4:]}@example.com/",
    f"/x?next=https%3A%2F%2Fbob%3A{TOKEN[4:]}%40example.com%2F", f"/x/https://bob:{TOKEN[4:]}@example.com/",
    # second review of issue 18: a query nested in a value, an encoded `/` in a URL's password, a value
    # encoded five times, JSON in a value
    f"/x?next=/login?password={TOKEN[4:]}", f"/x?next=%2Flogin%3Fpassword%3D{TOKEN[4:]}", f"/x?a=1?pw={TOKEN[4:]}",
    f"/x?next=%2Flogin%3Fa%3D1%26pwd%3D{TOKEN[4:]}", f"/x?next=https%3A%2F%2Fu%3Aab%252F{TOKEN[4:]}%40h",
    f"/x?next=https://u:ab%2F{TOKEN[4:]}@h", "/x?u=" + five_times(f"https://u:{TOKEN[4:]}@h"),
    f"/x?data=%7B%22password%22%3A%22{TOKEN[4:]}%22%7D", f"/x?data=%7B%27api_key%27%3A%20%27{TOKEN[4:]}%27%7D",
])
def test_no_secret_survives_the_mask_however_it_is_encoded(logged):
    masked = scrub(logged)
    assert TOKEN[4:20] not in masked and "***" in masked


def test_the_mask_leaves_plain_values_alone():
    line = '127.0.0.1:5 - alice - "GET /api/bulk-generate?status=queued&limit=3&name=a%20b HTTP/1.1" 200'
    assert scrub(line) == line


def test_each_access_line_names_the_user_and_no_secret(served):
    token = served.token
    with served.client(token) as client:
        client.get("/api/bulk-generate", params={"limit": 3, "pwd": "hunter2"})
        client.get(f"/api/bulk-generate?q=%62gk_{token[4:]}&pass=hunter3")
    httpx.get(f"{served.url}/api/bulk-generate?passwd=hunter4")
    served.stop()
    access = [line for line in served.log if '"GET /api/bulk-generate' in line]
    assert len(access) == 3, "".join(served.log)
    assert " - alice - " in access[0] and " - alice - " in access[1] and " - - - " in access[2]
    assert '?limit=3&pwd=*** HTTP/1.1" 200' in access[0]
    log = "".join(served.log)
    assert token[4:20] not in log and not any(f"hunter{n}" in log for n in (2, 3, 4))


def test_api_answers_are_not_sniffed_nor_stored(served):
    with served.client(served.token) as client:
        answers = [client.get("/api/me"), client.get("/api/bulk-generate/nope"), client.get("/openapi.json"),
                   httpx.get(f"{served.url}/api/me")]
        page = client.get("/")
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url
        assert answer.headers["cache-control"] == "no-store", answer.request.url
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-cache"


def test_no_answer_redirects_to_the_host_the_client_named(served):
    with served.client(served.token) as client:
        for path in ("/api/bulk-generate/", "/api/templates/", "/api/me/", "/static/app.js/"):
            answer = client.get(path, headers={"Host": "evil.example"})
            assert "location" not in answer.headers and answer.status_code == 404, path
            assert "evil.example" not in answer.text


def chunks(size: int):
    for _ in range(size // 8192 + 1):
        yield b"x" * 8192


@pytest.mark.parametrize("method, path", [("PUT", "/api/templates/big"), ("POST", "/api/schedules"),
                                          ("POST", "/api/bulk-generate")])
def test_every_chunked_body_over_the_cap_is_413(served, method, path):
    with served.client(served.token) as client:
        answer = client.request(method, path, content=chunks(2 * 1024 * 1024),
                                headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert answer.json()["type"] == "urn:bulkgen:problem:too-large"


def test_a_503_names_no_file_and_the_log_keeps_the_reason(caplog):
    for error in (StoreUnavailable("cannot open the SQLite store /srv/secret/bulkgen.db: disk I/O error."),
                  NoStore("no store at /srv/secret/bulkgen.db; `bulkgen submit FILE` creates one.")):
        problem = from_error(error)
        assert problem.status == 503 and "/srv/secret" not in problem.detail and "log" in problem.detail
    assert "/srv/secret/bulkgen.db" in caplog.text


def test_a_refused_webhook_names_the_rule_not_the_address(served):
    with served.client(served.token) as client:
        answer = client.post("/api/bulk-generate", json={**articles(), "notify": ["webhook:http://localhost:9/h"]})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "is not allowed: a webhook reaches only hosts with public addresses" in detail
    assert "--webhook-allow" in detail and "loopback" not in detail
    assert "127.0.0.1" not in detail and "::1" not in detail


def test_an_unresolvable_webhook_says_so_without_the_resolver_s_words(monkeypatch):
    def fails(host: str, port: int) -> list[str]:
        raise OSError("[Errno -3] Temporary failure in name resolution via 10.1.2.3")

    monkeypatch.setattr(netpolicy, "resolve", fails)
    with pytest.raises(netpolicy.Refused) as refused:
        netpolicy.check_webhook("http://internal.example/hook", netpolicy.Policy())
    assert refused.value.why == "cannot be resolved" and "10.1.2.3" not in str(refused.value)


def test_a_missing_name_and_an_inward_name_are_refused_in_the_same_words(monkeypatch):
    """Otherwise a remote user could probe which internal names exist (review of issue 18, finding 8)."""
    def resolver(host: str, port: int) -> list[str]:
        if host == "db.internal":
            return ["10.0.0.7"]
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(netpolicy, "resolve", resolver)
    said = {}
    for host in ("db.internal", "nothing.internal"):
        with pytest.raises(netpolicy.Refused) as refused:
            netpolicy.check_webhook(f"http://{host}/hook", netpolicy.Policy())
        said[host] = (str(refused.value).replace(host, "HOST"), refused.value.why)
    assert said["db.internal"][0] == said["nothing.internal"][0]
    assert (said["db.internal"][1], said["nothing.internal"][1]) == ("private", "cannot be resolved")


def test_the_store_and_its_wal_files_are_created_for_the_owner_only(processes, tmp_path):
    env = base_env(tmp_path)
    old = os.umask(0o022)  # the usual umask, inherited by the server, which creates the store
    try:
        server = start_server(processes, env)
    finally:
        os.umask(old)
    db = tmp_path / "xdg" / "bulkgen" / "bulkgen.db"
    with server.client(make_token(env, "alice")) as client:
        assert client.post("/api/bulk-generate", json=articles()).status_code == 201
    files = [db, db.with_name("bulkgen.db-wal"), db.with_name("bulkgen.db-shm")]
    assert all(path.exists() for path in files), files  # the server holds the store open: WAL files exist
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
