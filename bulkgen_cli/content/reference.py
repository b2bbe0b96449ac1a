"""A reference content service on 127.0.0.1 that speaks design.md, "The service contract", for tests and demos.

    python -m bulkgen_cli.content.reference --port 8000 --latency 2 --fail-rate 0.1

Behaviour can be set for the whole service (latency, failure rate, token) and
per article, by directives in its text fields, so tests are deterministic:

    [fail:N] or [fail:N:CODE]  the first N tries answer 500 (or CODE), then success
    [status:CODE]              every try answers CODE
    [429:N]                    the first N tries answer 429 with Retry-After ([retry-after:S], default 1)
    [malformed]                200 with a body that is not JSON
    [badshape]                 200 with JSON that lacks "success"
    [refuse]                   {"success": false, "error": ...}
    [text]                     content is a plain string instead of {title, body}
    [echo-auth]                400 whose body repeats the Authorization header (a leaky service)
    [slow:S]                   answer after S seconds
    [hang] or [hang:N]         never answer (the first N tries); the time the client closes is recorded
    [drop]                     close the connection without answering

Articles the quality gate should flag (design.md, "The quality gate"), each a
normal 200 reply; with N, only the first N tries, then the article as asked:

    [words:W] or [words:W:N]   the article has W words of prose instead of its word_count
    [offtopic] or [offtopic:N] the article is about something else: its topic, trend and keywords are absent
    [empty] or [empty:N]       the article has a title and an empty body
    [untitled] or [untitled:N] the article has no title, neither in the content nor as a heading
    [copy:KEY]                 the article of an imagined item whose topic is KEY, under its own title
                               and first sentence: items with the same KEY get near-duplicates

Fencing. A client may send, on every request, two headers:

    Idempotency-Key: <item id>            the same string as the body's job_id
    Bulkgen-Fencing-Token: <integer>      one per claim of the item, from a counter
                                          that only grows; every try within one
                                          claim carries the same token

Per job_id the service remembers the highest token seen. A request whose token
is lower is refused at once with 409 and {"success": false, "error": "stale
fencing token T: a newer claim (token H) holds this item"} (outcome "stale");
an equal token is accepted (a retry within one claim). Before answering success
(after its latency) a request checks again, as a real service would before
committing paid work: if a higher token arrived for its job_id meanwhile, it
answers the same 409 (outcome "stale", no article generated). A request without
the header is served as before, unfenced (old clients, strict services); a token
that is not an integer answers 400 and is not recorded. A request that repeats
an Idempotency-Key whose article was made already gets the kept article at
once (outcome "replayed", nothing generated), as a service that keeps its
answers by key would. Started with `honour_headers=False` (`--ignore-headers`)
it does neither, as a service that ignores both headers: every request is
served and generates (the headers are still logged).

GET /_stats gives every request seen (job_id, mode, try, start, end, outcome,
auth, token, idempotency_key), the requests in flight now and the most ever in
flight at once, and per job_id: the most of its requests in flight at once
(max_in_flight_per_job), the requests that produced an article, outcome "ok",
the plain-text variant included (generated_per_job), and the highest fencing
token seen (highest_token_per_job). POST /_reset clears them. A request counts
as in flight from its arrival until just before its reply's first byte is
written, or until it ends without a reply (closed by the client, dropped, hang
timeout); its record's `end` is set at that moment. A request refused as stale
at arrival is not counted as a try of the directives above (its `try` is null).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Any

from bulkgen_cli.content.offline import draft
from bulkgen_cli.core.model import Item, Mode

FENCING_HEADER = "Bulkgen-Fencing-Token"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: The outcome of a request that produced an article ({title, body} or plain text).
GENERATED = "ok"
#: The outcome of a repeated Idempotency-Key answered with the kept article.
REPLAYED = "replayed"
DIRECTIVE = re.compile(r"\[([a-z0-9-]+)(?::([\w.]+))?(?::(\d+))?\]")
TEXT_FIELDS = ("topic", "trend", "keywords", "source_text", "title", "instructions")


class ReferenceService:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        fail_rate: float = 0.0,
        token: str | None = None,
        seed: int = 0,
        honour_headers: bool = True,
    ):
        self.latency = latency
        #: False: a service that ignores the fencing token and the Idempotency-Key
        self.honour_headers = honour_headers
        self.fail_rate = fail_rate
        self.token = token
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.tries: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_by_job: dict[str, int] = {}
        self.max_in_flight_by_job: dict[str, int] = {}
        self.generated: dict[str, int] = {}
        self.fence: dict[str, int] = {}  # job_id -> the highest fencing token seen
        self.kept: dict[str, Any] = {}  # Idempotency-Key -> the article made for it
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ReferenceService:
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": [dict(r) for r in self.requests],
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "max_in_flight_per_job": dict(self.max_in_flight_by_job),
                "generated_per_job": dict(self.generated),
                "highest_token_per_job": dict(self.fence),
            }

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.tries.clear()
            self.generated.clear()
            self.fence.clear()
            self.kept.clear()
            self.max_in_flight = self.in_flight
            self.max_in_flight_by_job = {j: n for j, n in self.in_flight_by_job.items() if n}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return type("BoundHandler", (Handler,), {"service": self})

    def _serve(self, handler: Handler, mode: str, body: dict[str, Any]) -> None:
        call = self._admit(handler, mode, body)
        if call is None:
            return
        outcome = "error"  # an exception before any reply
        try:
            outcome = self._respond(call) or outcome
        finally:
            with self.lock:
                self._end(call.record, outcome)  # a request that ended without a reply

    def _admit(self, handler: Handler, mode: str, body: dict[str, Any]) -> Call | None:
        """Read the fencing token and the directives, and log the request; None when refused as malformed."""
        raw_token = handler.headers.get(FENCING_HEADER) if self.honour_headers else None
        token: int | None = None
        if raw_token is not None:
            try:
                token = int(raw_token.strip())
            except ValueError:
                handler._send(400, {"success": False, "error": f"{FENCING_HEADER} is not an integer: {raw_token!r}"})
                return None
        text = " ".join(" ".join(v) if isinstance(v, list) else str(v)
                        for k, v in body.items() if k in TEXT_FIELDS and v)
        directives = {m.group(1): (m.group(2), m.group(3)) for m in DIRECTIVE.finditer(text)}
        job_id = str(body.get("job_id", ""))
        with self.lock:
            highest = self.fence.get(job_id)
            stale = token is not None and highest is not None and token < highest
            tries = None
            if not stale:
                self.tries[job_id] = tries = self.tries.get(job_id, 0) + 1
                if token is not None:
                    self.fence[job_id] = token
            record = self._start(job_id, mode, tries, token, handler)
        return Call(handler, mode, body, record, directives, token, highest if stale else None, tries or 0)

    def _start(self, job_id: str, mode: str, tries: int | None, token: int | None, handler: Handler) -> dict[str, Any]:
        """Count the request in flight and log it. The caller holds the lock."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.in_flight_by_job[job_id] = here = self.in_flight_by_job.get(job_id, 0) + 1
        self.max_in_flight_by_job[job_id] = max(self.max_in_flight_by_job.get(job_id, 0), here)
        record = {"job_id": job_id, "mode": mode, "try": tries, "start": time.time(),
                  "end": None, "outcome": None, "auth": handler.headers.get("Authorization"),
                  "token": token, "idempotency_key": handler.headers.get(IDEMPOTENCY_HEADER)}
        self.requests.append(record)
        return record

    def _respond(self, call: Call) -> str | None:
        """Answer the request; the outcome when it ended without a reply (a reply records its own)."""
        if call.stale_for is not None:
            assert call.token is not None
            self._refuse_stale(call.handler, call.record, call.token, call.stale_for)
            return None
        key = call.record["idempotency_key"] if self.honour_headers else None
        with self.lock:
            kept = self.kept.get(key) if key is not None else None
        if kept is not None:
            # A repeated Idempotency-Key whose article is made: the kept answer, nothing generated.
            self._answer(call.handler, call.record, REPLAYED, 200, {"success": True, "content": kept})
            return None
        directives = call.directives
        hang = directives.get("hang")
        if hang is not None and (hang[0] is None or call.tries <= int(hang[0])):
            return "closed-by-client" if call.handler.wait_for_close(3600) else "hang-timeout"
        delay = float(directives["slow"][0] or self.latency) if "slow" in directives else self.latency
        if delay and call.handler.wait_for_close(delay):
            return "closed-by-client"
        if not self._scripted(call):
            self._generate(call)
        return None

    def _scripted(self, call: Call) -> bool:
        """Answer as a directive (or the random failure rate) says; False when none applies."""
        d, handler, record = call.directives, call.handler, call.record
        n, code = d.get("fail", (None, None))
        if n is not None and call.tries <= int(n):
            self._answer(handler, record, f"http-{code or 500}", int(code or 500),
                         {"success": False, "error": f"scripted failure {call.tries}/{n}"})
        elif "status" in d:
            self._answer(handler, record, f"http-{d['status'][0]}", int(d["status"][0] or 500),
                         {"success": False, "error": "scripted status"})
        elif "429" in d and call.tries <= int(d["429"][0] or 1):
            wait = (d.get("retry-after") or ("1", None))[0] or "1"
            self._answer(handler, record, "http-429", 429, {"success": False, "error": "slow down"},
                         {"Retry-After": wait})
        elif "drop" in d:
            with self.lock:
                self._end(record, "dropped")
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
        elif "echo-auth" in d:
            self._answer(handler, record, "echo-auth", 400,
                         {"success": False, "error": f"bad auth {handler.headers.get('Authorization')}"})
        elif "malformed" in d:
            self._answer(handler, record, "malformed", 200, None, raw=b"<html>Internal proxy page</html>")
        elif "badshape" in d:
            self._answer(handler, record, "badshape", 200, {"article": "no success field"})
        elif "refuse" in d:
            self._answer(handler, record, "refused", 200, {"success": False, "error": "refused by the reference service"})
        elif self.fail_rate and self.random.random() < self.fail_rate:
            self._answer(handler, record, "http-500", 500, {"success": False, "error": "random failure"})
        else:
            return False
        return True

    def _generate(self, call: Call) -> None:
        """Make the article, unless a newer claim arrived meanwhile (checked again, as before paid work)."""
        with self.lock:
            highest = self.fence.get(call.record["job_id"])
            stale = call.token is not None and highest is not None and highest > call.token
            if not stale:
                self._end(call.record, GENERATED)
        if stale:
            assert call.token is not None and highest is not None
            self._refuse_stale(call.handler, call.record, call.token, highest)
            return
        content = self._content(call.mode, call.body, "text" in call.directives, _flaws(call))
        if call.record["idempotency_key"] is not None:
            with self.lock:
                self.kept[call.record["idempotency_key"]] = content
        call.handler._send(200, {"success": True, "content": content})

    def _end(self, record: dict[str, Any], outcome: str) -> None:
        """The request leaves flight: once, just before its reply is written or when it ends without one.
        The caller holds the lock."""
        if record["end"] is not None:
            return
        job_id = record["job_id"]
        record["end"] = time.time()
        record["outcome"] = outcome
        self.in_flight -= 1
        self.in_flight_by_job[job_id] -= 1
        if not self.in_flight_by_job[job_id]:
            del self.in_flight_by_job[job_id]
        if outcome == GENERATED:
            self.generated[job_id] = self.generated.get(job_id, 0) + 1

    def _answer(self, handler: Any, record: dict[str, Any], outcome: str, code: int, payload: Any,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        with self.lock:
            self._end(record, outcome)
        handler._send(code, payload, headers, raw)

    def _refuse_stale(self, handler: Any, record: dict[str, Any], token: int, highest: int) -> None:
        self._answer(handler, record, "stale", 409, {
            "success": False, "error": f"stale fencing token {token}: a newer claim (token {highest}) holds this item"})

    @staticmethod
    def _content(mode: str, body: dict[str, Any], as_text: bool, flaws: dict[str, str] | None = None) -> Any:
        try:
            Mode(mode)
        except ValueError:
            mode = Mode.topic.value
        article = {k: v for k, v in body.items() if k not in ("mode", "job_id", "user_id", "bulk_job_id")}
        item = Item(id=str(body.get("job_id")), bulk_job_id="", userId="", mode=mode,
                    article=article, status="processing", queue_position=0)
        written = _flawed(item, flaws or {})
        if as_text:
            return written["body"]
        return {"title": written["title"], "body": written["body"], "meta": {"generator": "reference"}}


#: The directives that make an article the quality gate should flag; their argument and try count.
FLAWS = ("words", "offtopic", "empty", "untitled", "copy")


def _flaws(call: Call) -> dict[str, str]:
    """The flaw directives that apply to this try: {name: argument}."""
    out = {}
    for name in FLAWS:
        if name not in call.directives:
            continue
        first, second = call.directives[name]
        argument, limit = (first or "", second) if name in ("words", "copy") else ("", first)
        if limit is None or call.tries <= int(limit):
            out[name] = argument
    return out


def _flawed(item: Item, flaws: dict[str, str]) -> dict[str, str]:
    """The offline draft of the item, with the flaws asked for."""
    article = dict(item.article)
    if "words" in flaws:
        article["word_count"] = int(flaws["words"])
    if "offtopic" in flaws or "copy" in flaws:
        subject = flaws.get("copy") or "an unrelated subject"
        other = Item(id=item.id, bulk_job_id="", userId="", mode=Mode.topic.value, status="processing",
                     queue_position=0, article={"topic": subject, "word_count": article.get("word_count", 1000)})
        written = draft(other)
        if "copy" in flaws:  # its own title and first sentence, the rest copied
            own = draft(dataclasses.replace(item, article=article))
            lead = own["body"].split("\n\n")[:2]
            written = {"title": own["title"], "body": "\n\n".join(lead + written["body"].split("\n\n")[2:])}
    else:
        written = draft(dataclasses.replace(item, article=article))
    if "empty" in flaws:
        written = {"title": written["title"], "body": ""}
    if "untitled" in flaws:
        written = {"title": "", "body": written["body"].split("\n\n", 1)[-1]}
    return written


@dataclass
class Call:
    """One generation request as the service sees it."""

    handler: Handler
    mode: str
    body: dict[str, Any]
    record: dict[str, Any]
    directives: dict[str, tuple[str | None, str | None]]
    token: int | None
    #: the higher token already seen, when this one is stale at arrival
    stale_for: int | None
    tries: int


class Handler(BaseHTTPRequestHandler):
    """The reference service's HTTP side; `service` is set on the bound subclass."""

    service: ReferenceService
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms ACK stall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, self.service.stats())
        else:
            self._send(404, {"success": False, "error": "not found"})

    def do_POST(self) -> None:
        if self.path == "/_reset":
            self.service.reset()
            self._send(200, {"success": True})
            return
        match = re.fullmatch(r"/api/content/generate/(\w+)", self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not match:
            self._send(404, {"success": False, "error": "not found"})
            return
        if self.service.token and self.headers.get("Authorization") != f"Bearer {self.service.token}":
            self._send(401, {"success": False, "error": "missing or wrong bearer token"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"success": False, "error": "body is not JSON"})
            return
        self.service._serve(self, match.group(1), body)

    def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def wait_for_close(self, limit: float) -> bool:
        """Hold the request until the client closes (True) or `limit` passes."""
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            # Never past the deadline: the latency is what the service promises.
            ready, _, _ = select.select([self.connection], [], [], min(left, 0.02))
            if ready:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bulkgen's reference content service (127.0.0.1 only).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of tries that answer 500")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ignore-headers", action="store_true",
                        help="ignore the fencing token and the Idempotency-Key (a service that honours neither)")
    args = parser.parse_args(argv)
    service = ReferenceService("127.0.0.1", args.port, args.latency, args.fail_rate, args.token, args.seed,
                               honour_headers=not args.ignore_headers)
    print(f"reference content service on {service.url} (Ctrl-C to stop)", flush=True)
    try:
        service.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.server.server_close()


if __name__ == "__main__":
    main()
