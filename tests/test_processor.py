"""The processor against the reference service over real sockets, on both stores."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from bulkgen_cli.content.http import HttpGenerator
from bulkgen_cli.content.offline import OfflineGenerator
from bulkgen_cli.core.errors import ServiceUnavailable
from bulkgen_cli.core.model import ItemStatus, utcnow
from bulkgen_cli.engine.processor import BulkEnded, ItemFinished, ItemRetrying, Processor
from bulkgen_cli.core.settings import RunSettings
from tests.conftest import claim, submit_articles

TOKEN = "s3cret-token"


def settings(**kw):
    base = dict(delay=0.0, timeout=5.0, max_retries=2, backoff=0.01, lease=5.0, give_up=0.5)
    base.update(kw)
    return RunSettings(**base)


def topics(*names):
    return [{"topic": n, "word_count": 300} for n in names]


def fill(names, n=10):
    """`names` first, then plain topics up to n items."""
    return topics(*names, *[f"Plain {i}" for i in range(n - len(names))])


def run(store, generator, events=None, **kw):
    processor = Processor(store, generator, settings(**kw), on_event=(events.append if events is not None else None))
    try:
        processor.run(until_idle=True)
    finally:
        generator.close()
    return processor


def http(service, **kw):
    return HttpGenerator(service.url, TOKEN, kw.get("timeout", 5.0))


def check_counters(store, bulk_id):
    bulk = store.get_bulk(bulk_id)
    items = store.list_items(bulk_id)
    by = {s.value: sum(1 for i in items if i.status == s.value) for s in ItemStatus}
    assert (bulk.completed_items, bulk.failed_items, bulk.cancelled_items) == (
        by["completed"], by["failed"], by["cancelled"]
    )
    return bulk, items


def test_offline_run_completes_everything(store):
    bulk = submit_articles(store, fill([], 12))
    events = []
    run(store, OfflineGenerator(), events)
    got, items = check_counters(store, bulk.id)
    assert got.status == "completed" and got.completed_items == 12
    assert all(i.result["generator"] == "offline" and i.result["words"] == 300 for i in items)
    assert [e.bulk.id for e in events if isinstance(e, BulkEnded)] == [bulk.id]
    assert store.processor_lease() is None  # released at the end


def test_request_body_and_token(store, service):
    arts = fill([], 10)
    arts[0] = {"topic": "First", "word_count": 1500, "tone": "calm", "id": "first", "extra": {"seo": {"x": 1}}}
    bulk = submit_articles(store, arts, user="carol")
    run(store, http(service))
    stats = service.stats()["requests"]
    assert len(stats) == 10 and all(r["auth"] == f"Bearer {TOKEN}" for r in stats)
    items = store.list_items(bulk.id)
    assert stats[0]["job_id"] == items[0].id and stats[0]["mode"] == "topic"
    first = items[0].result
    assert first["generator"] == "http" and first["content"]["title"] == "First"
    assert first["words"] == 1500


def test_body_fields_reach_the_service(store):
    """The exact JSON the service receives (design.md, "The service contract")."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            bodies.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            data = json.dumps({"success": True, "content": "text"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        arts = [{"keywords": ["a", "b"], "word_count": 700, "id": f"k{i}", "extra": {"seo": True}} for i in range(10)]
        bulk = submit_articles(store, arts, user="dan", mode="keywords")
        run(store, HttpGenerator(f"http://127.0.0.1:{server.server_address[1]}/", None, 5))
    finally:
        server.shutdown()
        server.server_close()
    item = store.list_items(bulk.id)[0]
    assert bodies[0] == ("/api/content/generate/keywords", {
        "keywords": ["a", "b"], "word_count": 700, "extra": {"seo": True}, "item_id": "k0",
        "mode": "keywords", "job_id": item.id, "user_id": "dan", "bulk_job_id": bulk.id,
    })
    assert item.result["content"] == "text"


def test_transient_failures_are_retried_in_place(store, service):
    bulk = submit_articles(store, fill(["Flaky [fail:2]"]))
    events = []
    run(store, http(service), events)
    first = store.list_items(bulk.id)[0]
    assert first.status == "completed" and first.attempts == 3 and first.retry_count == 2
    tries = [r for r in service.stats()["requests"] if r["job_id"] == first.id]
    assert [r["outcome"] for r in tries] == ["http-500", "http-500", "ok"]
    # In place: the retries happened before item 2 was requested (FIFO holds).
    order = [r["job_id"] for r in service.stats()["requests"]]
    assert order[:3] == [first.id] * 3
    assert sum(isinstance(e, ItemRetrying) and e.charged for e in events) == 2


def test_retries_are_bounded_and_failure_does_not_stop_the_job(store, service):
    bulk = submit_articles(store, fill(["Broken [fail:9]"]))
    run(store, http(service))
    got, items = check_counters(store, bulk.id)
    assert items[0].status == "failed" and items[0].attempts == 3
    assert "HTTP 500" in items[0].error and "gave up after 3 tries" in items[0].error
    assert got.status == "completed" and got.completed_items == 9 and got.failed_items == 1
    assert got.error_summary[0].startswith("#1 Broken [fail:9]: HTTP 500")
    assert len([r for r in service.stats()["requests"] if r["job_id"] == items[0].id]) == 3


def test_max_retries_setting(store, service):
    bulk = submit_articles(store, fill(["Broken [fail:9]"]))
    run(store, http(service), max_retries=0)
    assert store.list_items(bulk.id)[0].attempts == 1


@pytest.mark.parametrize(
    "directive, message",
    [
        ("[status:400]", "HTTP 400"),
        ("[status:404]", "HTTP 404"),
        ("[malformed]", "reply is not JSON: <html>Internal proxy page</html>"),
        ("[badshape]", "lacks a boolean 'success'"),
        ("[refuse]", "the service refused it: refused by the reference service"),
        # A 409 while the store still says the item is this processor's: not a stale claim, so a failure.
        ("[fail:1:409]", "HTTP 409 (a newer claim holds this item)"),
    ],
)
def test_permanent_errors_fail_at_once(store, service, directive, message):
    bulk = submit_articles(store, fill([f"Bad {directive}"]))
    run(store, http(service))
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed" and first.attempts == 1 and message in first.error
    assert len([r for r in service.stats()["requests"] if r["job_id"] == first.id]) == 1


def test_requests_carry_the_item_id_and_a_growing_fencing_token(store, service):
    bulk = submit_articles(store, fill(["Flaky [fail:1]"]))
    run(store, http(service))
    items = store.list_items(bulk.id)
    requests = service.stats()["requests"]
    assert all(r["idempotency_key"] == r["job_id"] for r in requests)
    tokens = [r["token"] for r in requests]
    first = [r["token"] for r in requests if r["job_id"] == items[0].id]
    assert first == [items[0].fence] * 2  # a retry within one claim keeps its token
    assert tokens[1:] == sorted(set(tokens[1:])) and tokens[1] < tokens[2]  # each claim a higher one
    assert [i.fence for i in items] == sorted({i.fence for i in items})


def test_rate_limits_wait_and_are_not_charged(store, service):
    bulk = submit_articles(store, fill(["Busy [429:3] [retry-after:0]"]))
    events = []
    run(store, http(service), events)
    first = store.list_items(bulk.id)[0]
    assert first.status == "completed" and first.attempts == 1
    assert len([r for r in service.stats()["requests"] if r["job_id"] == first.id]) == 4
    assert [e.charged for e in events if isinstance(e, ItemRetrying)] == [False] * 3


def test_endless_rate_limit_gives_up_without_charging(store, service):
    bulk = submit_articles(store, fill(["Busy [429:99] [retry-after:0.2]"]))
    with pytest.raises(ServiceUnavailable, match="kept answering 429"):
        run(store, http(service), give_up=0.5)
    first = store.list_items(bulk.id)[0]
    assert first.status == "queued" and first.attempts == 0


def test_retry_after_is_honoured(store, service):
    bulk = submit_articles(store, fill(["Busy [429:1] [retry-after:1]"]))
    run(store, http(service), give_up=10)
    first = store.list_items(bulk.id)[0]
    tries = [r for r in service.stats()["requests"] if r["job_id"] == first.id]
    assert tries[1]["start"] - tries[0]["end"] >= 0.95


def test_timeout_is_transient(store, service):
    bulk = submit_articles(store, fill(["Slow [slow:3]"]))
    run(store, http(service, timeout=0.3), timeout=0.3)
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed" and first.attempts == 3
    assert "no reply within the 0.3 s timeout" in first.error


def test_dropped_connection_is_transient(store, service):
    bulk = submit_articles(store, fill(["Drop [drop]"]))
    run(store, http(service))
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed" and first.attempts == 3 and "connection failed" in first.error


def test_unreachable_service_charges_nothing_and_gives_up(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    bulk = submit_articles(store, fill([]))
    with pytest.raises(ServiceUnavailable, match="could not be reached for 0.2 s"):
        run(store, HttpGenerator(f"http://127.0.0.1:{port}", TOKEN, 5), give_up=0.2, backoff=0.05)
    items = store.list_items(bulk.id)
    assert all(i.status == "queued" and i.attempts == 0 for i in items)
    assert store.processor_lease() is None


def test_fifo_across_bulk_jobs(store, service):
    t0 = utcnow()
    second = submit_articles(store, fill([], 10), created_at=t0 + dt.timedelta(seconds=1))
    first = submit_articles(store, fill([], 10), created_at=t0)
    run(store, http(service))
    expected = [i.id for i in store.list_items(first.id)] + [i.id for i in store.list_items(second.id)]
    assert [r["job_id"] for r in service.stats()["requests"]] == expected


def test_delay_between_requests(store, service):
    submit_articles(store, fill([], 10))
    run(store, http(service), delay=0.2)
    reqs = service.stats()["requests"]
    gaps = [b["start"] - a["end"] for a, b in zip(reqs, reqs[1:])]
    assert min(gaps) >= 0.19


def test_offline_generator_needs_no_delay(store):
    submit_articles(store, fill([], 10))
    events = []
    processor = Processor(store, OfflineGenerator(), settings(delay=3600), on_event=events.append)
    processor.run(until_idle=True)  # would take hours if the delay applied
    assert sum(isinstance(e, ItemFinished) for e in events) == 10


@pytest.mark.parametrize("sent", [True, False])
def test_dead_processors_item_is_taken_back_after_its_lease(store, service, sent):
    """Its try counts only if its request went out (design.md, "When a try counts")."""
    bulk = submit_articles(store, fill([]))
    store.acquire_processor_lease("dead", 0.3, utcnow(), "h", 1)
    stuck = claim(store, "dead", 0.3, utcnow())
    assert store.heartbeat(stuck.id, "dead", 0.3, utcnow(), sent=sent)
    run(store, http(service), lease=1.0)
    got, items = check_counters(store, bulk.id)
    assert got.status == "completed" and got.completed_items == 10
    again = next(i for i in items if i.id == stuck.id)
    assert (again.attempts, again.retry_count) == ((2, 1) if sent else (1, 0))
    assert [r["job_id"] for r in service.stats()["requests"]].count(stuck.id) == 1


def test_token_is_scrubbed_from_errors(store, service):
    gen = HttpGenerator(service.url, "wrong-token-value", 5)
    bulk = submit_articles(store, fill([]))
    run(store, gen)
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed" and "HTTP 401" in first.error
    # A service that echoes the token back: the client masks it.
    reply = gen._sort(__import__("httpx").Response(400, text="bad token wrong-token-value"), {})
    assert "wrong-token-value" not in reply.error and "***" in reply.error


def test_string_content_is_stored_as_is(store, service):
    bulk = submit_articles(store, fill(["Plain text [text]"]))
    run(store, http(service))
    first = store.list_items(bulk.id)[0]
    assert isinstance(first.result["content"], str) and first.result["content"].startswith("# Plain text")


def test_an_item_reports_its_request_time_apart_from_the_pacing_delay(store):
    """With --delay, an item's time is its request's; the wait before it is reported apart."""
    from bulkgen_cli.content.reference import ReferenceService

    service = ReferenceService(latency=0.2).start()
    try:
        submit_articles(store, topics("First", "Second"))
        events = []
        run(store, HttpGenerator(service.url), events, delay=2.0)
    finally:
        service.stop()
    first, second = [e for e in events if isinstance(e, ItemFinished)]
    assert second.waited >= 1.0  # it waited out most of the 2 s delay after the first reply...
    assert second.seconds < second.waited  # ...and its own time is the request's, not the wait's
    assert first.waited < 0.5
    result = store.list_items(second.item.bulk_job_id)[1].result
    assert result["seconds"] == pytest.approx(second.seconds, abs=0.01) and result["waited"] >= 1.0
