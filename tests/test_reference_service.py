"""The reference content service itself: fencing tokens and true in-flight counts, over real HTTP."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from bulkgen_cli.content.reference import ReferenceService

MODE = "topic"


@pytest.fixture
def service():
    svc = ReferenceService().start()
    yield svc
    svc.stop()


def post(client: httpx.Client, url: str, job_id: str, token: int | str | None = None, topic: str = "an article",
         key: bool = True) -> httpx.Response:
    headers = {}
    if key:
        headers["Idempotency-Key"] = job_id
    if token is not None:
        headers["Bulkgen-Fencing-Token"] = str(token)
    return client.post(f"{url}/api/content/generate/{MODE}", headers=headers,
                       json={"mode": MODE, "job_id": job_id, "topic": topic})


def stale_error(token: int, highest: int) -> dict:
    return {"success": False, "error": f"stale fencing token {token}: a newer claim (token {highest}) holds this item"}


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- fencing --------------------------------------------------------------------


def test_a_lower_token_is_refused_at_once_with_409():
    svc = ReferenceService(latency=0.5).start()
    try:
        with httpx.Client() as client:
            assert post(client, svc.url, "item-1", token=5).json()["success"] is True
            started = time.monotonic()
            reply = post(client, svc.url, "item-1", token=4)
            took = time.monotonic() - started
        stats = svc.stats()
    finally:
        svc.stop()
    assert reply.status_code == 409
    assert reply.json() == stale_error(4, 5)
    assert took < 0.4  # refused at arrival, not after the latency
    assert [r["outcome"] for r in stats["requests"]] == ["ok", "stale"]
    assert stats["generated_per_job"] == {"item-1": 1}
    assert stats["highest_token_per_job"] == {"item-1": 5}
    assert stats["requests"][1]["try"] is None  # a stale request is not a try of the directives
    assert stats["in_flight"] == 0


def test_a_higher_token_arriving_during_a_slow_request_makes_it_stale_at_reply_time(service):
    replies: dict[str, httpx.Response] = {}
    took: dict[str, float] = {}

    def send(name: str, token: int) -> None:
        started = time.monotonic()
        with httpx.Client() as client:
            replies[name] = post(client, service.url, "item-1", token=token, topic="a slow one [slow:0.8]")
        took[name] = time.monotonic() - started

    old = threading.Thread(target=send, args=("old", 1))
    old.start()
    wait_for(lambda: service.stats()["in_flight"] == 1)
    new = threading.Thread(target=send, args=("new", 2))
    new.start()
    old.join(10)
    new.join(10)
    stats = service.stats()
    assert replies["old"].status_code == 409
    assert replies["old"].json() == stale_error(1, 2)
    assert took["old"] >= 0.8  # accepted at arrival, refused only when about to answer success
    assert replies["new"].status_code == 200 and replies["new"].json()["success"] is True
    assert sorted((r["token"], r["outcome"]) for r in stats["requests"]) == [(1, "stale"), (2, "ok")]
    assert stats["generated_per_job"] == {"item-1": 1}
    assert stats["max_in_flight_per_job"] == {"item-1": 2}
    assert stats["in_flight"] == 0


def test_equal_tokens_are_accepted_as_retries_within_one_claim(service):
    with httpx.Client() as client:
        first = post(client, service.url, "item-1", token=3, topic="flaky once [fail:1]")
        second = post(client, service.url, "item-1", token=3, topic="flaky once [fail:1]")
    assert first.status_code == 500
    assert second.status_code == 200 and second.json()["success"] is True
    stats = service.stats()
    assert [(r["try"], r["token"], r["outcome"]) for r in stats["requests"]] == [(1, 3, "http-500"), (2, 3, "ok")]
    assert stats["generated_per_job"] == {"item-1": 1}


def test_a_higher_token_is_accepted_and_tokens_are_per_job(service):
    with httpx.Client() as client:
        assert post(client, service.url, "item-1", token=7).status_code == 200
        assert post(client, service.url, "item-1", token=9).status_code == 200
        assert post(client, service.url, "item-2", token=1).status_code == 200  # another item: its own fence
        assert post(client, service.url, "item-1", token=8).status_code == 409
    stats = service.stats()
    assert stats["highest_token_per_job"] == {"item-1": 9, "item-2": 1}
    # The second request for item-1 repeats its Idempotency-Key: the kept article, nothing generated.
    assert stats["generated_per_job"] == {"item-1": 1, "item-2": 1}
    assert [r["outcome"] for r in stats["requests"] if r["job_id"] == "item-1"] == ["ok", "replayed", "stale"]


def test_a_service_that_ignores_the_headers_generates_every_time(start_service):
    service = start_service(honour_headers=False)
    with httpx.Client() as client:
        replies = [post(client, service.url, "item-1", token=t) for t in (9, 8, 9)]
    assert [r.status_code for r in replies] == [200, 200, 200]
    stats = service.stats()
    assert [(r["token"], r["outcome"]) for r in stats["requests"]] == [(None, "ok")] * 3
    assert stats["generated_per_job"] == {"item-1": 3} and stats["highest_token_per_job"] == {}


def test_requests_without_the_header_are_served_unfenced(service):
    with httpx.Client() as client:
        assert post(client, service.url, "item-1", token=None, key=False).status_code == 200
        assert post(client, service.url, "item-2", token=4).status_code == 200
        # An old client after a fenced one: served as before, and the fence is unchanged.
        plain = post(client, service.url, "item-2", token=None, key=False)
    assert plain.status_code == 200 and plain.json()["success"] is True
    stats = service.stats()
    assert [r["outcome"] for r in stats["requests"]] == ["ok", "ok", "ok"]
    assert stats["highest_token_per_job"] == {"item-2": 4}


def test_records_carry_token_and_idempotency_key(service):
    with httpx.Client() as client:
        post(client, service.url, "item-1", token=12)
        post(client, service.url, "item-1", token=11)
        post(client, service.url, "item-2", token=None, key=False)
        post(client, service.url, "item-3", token=None, key=True)
    records = [(r["job_id"], r["token"], r["idempotency_key"], r["outcome"]) for r in service.stats()["requests"]]
    assert records == [("item-1", 12, "item-1", "ok"), ("item-1", 11, "item-1", "stale"),
                       ("item-2", None, None, "ok"), ("item-3", None, "item-3", "ok")]


def test_a_token_that_is_not_an_integer_is_a_400(service):
    with httpx.Client() as client:
        reply = post(client, service.url, "item-1", token="soon")
    assert reply.status_code == 400 and reply.json()["success"] is False
    assert "Bulkgen-Fencing-Token" in reply.json()["error"]
    assert service.stats()["requests"] == []


# -- counting requests in flight ------------------------------------------------------


@pytest.mark.parametrize("keep_alive, count", [(True, 300), (False, 1000)], ids=["keep-alive", "new-connections"])
def test_a_sequential_client_is_never_counted_as_two_in_flight(service, keep_alive, count):
    """Back to back, as fast as possible: the next request may arrive the moment the reply is read.

    Counted down after the reply was written (the old way), about 1 in 100 new-connection requests
    overlapped its predecessor: 1000 of them made max_in_flight 2 every time."""
    limits = httpx.Limits() if keep_alive else httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(limits=limits) as client:
        for n in range(count):
            assert post(client, service.url, f"item-{n}", token=n).status_code == 200
    stats = service.stats()
    records = stats["requests"]
    assert len(records) == count
    assert stats["max_in_flight"] == 1
    assert set(stats["max_in_flight_per_job"].values()) == {1}
    assert all(later["start"] >= earlier["end"] for earlier, later in zip(records, records[1:]))
    assert stats["in_flight"] == 0
    assert sum(stats["generated_per_job"].values()) == count


def test_every_way_a_request_ends_leaves_flight_exactly_once(service):
    topics = {
        "fail": "[fail:1]", "status": "[status:400]", "429": "[429:1]", "drop": "[drop]", "malformed": "[malformed]",
        "badshape": "[badshape]", "refuse": "[refuse]", "echo": "[echo-auth]", "text": "[text]", "plain": "x",
        "hang": "[hang]", "slow": "[slow:5]",
    }
    with httpx.Client(timeout=0.3) as client:
        for job, topic in topics.items():
            try:
                post(client, service.url, job, token=1, topic=topic)
            except httpx.TransportError:
                assert job in ("drop", "hang", "slow")
                # The client gave up; the service sees the close a moment later, and only then ends it.
                wait_for(lambda: service.stats()["in_flight"] == 0)
    wait_for(lambda: service.stats()["in_flight"] == 0)
    stats = service.stats()
    outcomes = {r["job_id"]: r["outcome"] for r in stats["requests"]}
    assert outcomes == {
        "fail": "http-500", "status": "http-400", "429": "http-429", "drop": "dropped", "malformed": "malformed",
        "badshape": "badshape", "refuse": "refused", "echo": "echo-auth", "text": "ok", "plain": "ok",
        "hang": "closed-by-client", "slow": "closed-by-client",
    }
    assert all(r["end"] is not None and r["end"] >= r["start"] for r in stats["requests"])
    assert stats["max_in_flight"] == 1
    # Only the requests that produced an article count, the plain-text variant included.
    assert stats["generated_per_job"] == {"text": 1, "plain": 1}
    time.sleep(0.1)  # nothing decrements twice after the fact
    assert service.stats()["in_flight"] == 0


def test_reset_clears_the_per_job_figures(service):
    with httpx.Client() as client:
        post(client, service.url, "item-1", token=5)
    service.reset()
    stats = service.stats()
    assert stats["requests"] == [] and stats["generated_per_job"] == {} and stats["highest_token_per_job"] == {}
    assert stats["max_in_flight_per_job"] == {} and stats["max_in_flight"] == 0
    with httpx.Client() as client:
        assert post(client, service.url, "item-1", token=1).status_code == 200  # a fresh fence
