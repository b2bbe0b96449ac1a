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

GET /_stats gives every request seen (job_id, start, end, outcome) and the
most requests ever in flight at once; POST /_reset clears them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bulkgen_cli.content.offline import draft
from bulkgen_cli.model import Item, Mode

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
    ):
        self.latency = latency
        self.fail_rate = fail_rate
        self.token = token
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.tries: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
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
            }

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.tries.clear()
            self.max_in_flight = self.in_flight

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/_stats":
                    self._send(200, service.stats())
                else:
                    self._send(404, {"success": False, "error": "not found"})

            def do_POST(self) -> None:
                if self.path == "/_reset":
                    service.reset()
                    self._send(200, {"success": True})
                    return
                match = re.fullmatch(r"/api/content/generate/(\w+)", self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not match:
                    self._send(404, {"success": False, "error": "not found"})
                    return
                if service.token and self.headers.get("Authorization") != f"Bearer {service.token}":
                    self._send(401, {"success": False, "error": "missing or wrong bearer token"})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"success": False, "error": "body is not JSON"})
                    return
                service._serve(self, match.group(1), body)

            def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None,
                      raw: bytes | None = None) -> None:
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
                while time.monotonic() < deadline:
                    ready, _, _ = select.select([self.connection], [], [], 0.02)
                    if ready:
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                return True
                        except OSError:
                            return True
                return False

        return Handler

    def _serve(self, handler: Any, mode: str, body: dict[str, Any]) -> None:
        job_id = str(body.get("job_id", ""))
        text = " ".join(
            " ".join(v) if isinstance(v, list) else str(v)
            for k, v in body.items()
            if k in TEXT_FIELDS and v
        )
        directives = {m.group(1): (m.group(2), m.group(3)) for m in DIRECTIVE.finditer(text)}
        with self.lock:
            self.tries[job_id] = tries = self.tries.get(job_id, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            record = {"job_id": job_id, "mode": mode, "try": tries, "start": time.time(),
                      "end": None, "outcome": None, "auth": handler.headers.get("Authorization")}
            self.requests.append(record)
        outcome = "ok"
        try:
            delay = float(directives["slow"][0]) if "slow" in directives else self.latency
            hang = directives.get("hang")
            if hang is not None and (hang[0] is None or tries <= int(hang[0])):
                outcome = "closed-by-client" if handler.wait_for_close(3600) else "hang-timeout"
                return
            if delay and handler.wait_for_close(delay):
                outcome = "closed-by-client"
                return
            n, code = directives.get("fail", (None, None))
            if n is not None and tries <= int(n):
                outcome = f"http-{code or 500}"
                handler._send(int(code or 500), {"success": False, "error": f"scripted failure {tries}/{n}"})
            elif "status" in directives:
                outcome = f"http-{directives['status'][0]}"
                handler._send(int(directives["status"][0]), {"success": False, "error": "scripted status"})
            elif "429" in directives and tries <= int(directives["429"][0] or 1):
                outcome = "http-429"
                wait = (directives.get("retry-after") or ("1", None))[0]
                handler._send(429, {"success": False, "error": "slow down"}, {"Retry-After": wait})
            elif "drop" in directives:
                outcome = "dropped"
                handler.connection.shutdown(socket.SHUT_RDWR)
                handler.close_connection = True
            elif "echo-auth" in directives:
                outcome = "echo-auth"
                handler._send(400, {"success": False, "error": f"bad auth {handler.headers.get('Authorization')}"})
            elif "malformed" in directives:
                outcome = "malformed"
                handler._send(200, None, raw=b"<html>Internal proxy page</html>")
            elif "badshape" in directives:
                outcome = "badshape"
                handler._send(200, {"article": "no success field"})
            elif "refuse" in directives:
                outcome = "refused"
                handler._send(200, {"success": False, "error": "refused by the reference service"})
            elif self.fail_rate and self.random.random() < self.fail_rate:
                outcome = "http-500"
                handler._send(500, {"success": False, "error": "random failure"})
            else:
                handler._send(200, {"success": True, "content": self._content(mode, body, "text" in directives)})
        finally:
            with self.lock:
                self.in_flight -= 1
                record["end"] = time.time()
                record["outcome"] = outcome

    @staticmethod
    def _content(mode: str, body: dict[str, Any], as_text: bool) -> Any:
        try:
            Mode(mode)
        except ValueError:
            mode = Mode.topic.value
        article = {k: v for k, v in body.items() if k not in ("mode", "job_id", "user_id", "bulk_job_id")}
        item = Item(id=str(body.get("job_id")), bulk_job_id="", userId="", mode=mode,
                    article=article, status="processing", queue_position=0)
        written = draft(item)
        if as_text:
            return written["body"]
        return {"title": written["title"], "body": written["body"], "meta": {"generator": "reference"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bulkgen's reference content service (127.0.0.1 only).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of tries that answer 500")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    service = ReferenceService("127.0.0.1", args.port, args.latency, args.fail_rate, args.token, args.seed)
    print(f"reference content service on {service.url} (Ctrl-C to stop)", flush=True)
    try:
        service.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        service.server.server_close()


if __name__ == "__main__":
    main()
