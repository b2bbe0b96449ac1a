"""`bulkgen serve` against hostile input: a real server on 127.0.0.1, every answer a 4xx problem, never a 500
and never a traceback in the server's log."""

from __future__ import annotations

import socket
import time

import pytest

from tests.cli_helpers import base_env
from tests.serve_helpers import articles, make_token, start_server


@pytest.fixture
def served(processes, tmp_path):
    env = base_env(tmp_path)
    token = make_token(env, "alice")
    server = start_server(processes, env)
    server.token = token  # type: ignore[attr-defined]
    return server


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def no_traceback(server) -> None:
    time.sleep(0.3)  # the log line of the last request
    assert not any("Traceback" in line for line in server.log), "".join(server.log)


def test_numbers_with_too_many_digits_are_located_problems(served):
    digits = "9" * 5000
    yaml_text = "mode: topic\nitems:\n" + "".join(f"  - topic: t{i}\n    word_count: {digits}\n" for i in range(10))
    csv_text = "topic,word_count\n" + "".join(f"t{i},{digits}\n" for i in range(10))
    with served.client(served.token) as client:
        for name, text in [("long.yaml", yaml_text), ("long.csv", csv_text)]:
            body = problem(client.post("/api/bulk-generate", files={"file": (name, text.encode())}), 422)
            first = body["problems"][0]
            assert (first["item"], first["field"]) == (1, "word_count") and "too many digits" in first["message"]
    no_traceback(served)


def test_a_csv_extra_cell_nested_too_deep_is_a_located_problem(served):
    deep = "[" * 5000 + "]" * 5000
    csv_text = 'topic,extra\n' + "".join(f't{i},"{{""a"":{deep}}}"\n' for i in range(10))
    with served.client(served.token) as client:
        body = problem(client.post("/api/bulk-generate", files={"file": ("deep.csv", csv_text.encode())}), 422)
    assert (body["problems"][0]["item"], body["problems"][0]["field"]) == (1, "extra")
    no_traceback(served)


def test_json_text_that_is_not_unicode_is_a_bad_request(served):
    """A lone surrogate (\\ud800) is valid JSON but no UTF-8 can hold it."""
    items = b",".join(b'{"topic":"t%d"}' % i for i in range(10))
    bodies = [("/api/bulk-generate", b'{"bulk_config":{"mode":"topic","items":[{"topic":"\\ud800"},' + items + b"]}}"),
              ("/api/bulk-generate", b'{"name":"\\udfff","bulk_config":{"mode":"topic","items":[' + items + b"]}}"),
              ("/api/schedules", b'{"schedule":"s","cron":"0 9 * * *","zone":"UTC","name":"\\ud800",'
                                 b'"bulk_config":{"mode":"topic","items":[' + items + b"]}}")]
    with served.client(served.token) as client:
        for path, body in bodies:
            answer = problem(client.post(path, content=body, headers={"content-type": "application/json"}), 400)
            assert "surrogate" in answer["detail"]
    no_traceback(served)


@pytest.mark.parametrize("when", ["+999999999h", "+" + "9" * 400 + "s", "9999-12-31T23:59:59-23:59"])
def test_a_not_before_past_the_calendar_is_a_bad_request(served, when):
    with served.client(served.token) as client:
        body = problem(client.post("/api/bulk-generate", json={**articles(), "not_before": when}), 400)
    assert "past the year 9999" in body["detail"]
    no_traceback(served)


@pytest.mark.parametrize("url", ["http://[::1/", "http://[x]/", "http://]/"])
def test_a_webhook_url_that_cannot_be_read_is_a_bad_request(served, url):
    with served.client(served.token) as client:
        body = problem(client.post("/api/bulk-generate", json={**articles(), "notify": [f"webhook:{url}"]}), 400)
    assert "cannot be read" in body["detail"]
    no_traceback(served)


@pytest.mark.parametrize("path", ["/api/bulk-generate", "/api/schedules"])
def test_a_client_that_leaves_in_the_middle_of_its_body_leaves_no_traceback(served, path):
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {served.token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"bulk".encode())
        time.sleep(0.3)  # the route is reading the body
    time.sleep(0.5)
    no_traceback(served)
    with served.client(served.token) as client:  # and the server goes on
        assert client.get("/api/bulk-generate").status_code == 200


def test_a_token_pasted_into_a_path_or_any_query_value_stays_out_of_the_log(served):
    token = served.token
    with served.client(token) as client:
        assert client.get(f"/api/bulk-generate/{token}").status_code == 404
        assert client.get(f"/api/items/{token}").status_code == 400
        client.get(f"/{token}")
        client.get("/api/bulk-generate", params={"q": token})
    served.stop()
    log = "".join(served.log)
    assert "/api/bulk-generate/bgk_*** HTTP/1.1" in log
    assert token not in log and token[4:20] not in log
