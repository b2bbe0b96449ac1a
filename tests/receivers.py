"""Real receivers on 127.0.0.1 for notification tests: a webhook endpoint and an SMTP server."""

from __future__ import annotations

import base64
import json
import socketserver
import threading
import time
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records every POST; answers `fail_first` of them with 500. The first `hold_first` are recorded, then
    held unanswered until `release` is set (a sender killed meanwhile has delivered but not recorded it)."""

    def __init__(self, fail_first: int = 0, port: int = 0, hold_first: int = 0):
        self.fail_first = fail_first
        self.hold_first = hold_first
        self.release = threading.Event()
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.posts.append({"body": body, "headers": dict(self.headers), "at": time.time()})
                    fail = len(receiver.posts) <= receiver.fail_first
                    hold = len(receiver.posts) <= receiver.hold_first
                if hold:
                    receiver.release.wait(60)
                try:
                    self.send_response(500 if fail else 204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # a held sender may be gone

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p["body"] for p in self.posts]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class SmtpReceiver:
    """A small SMTP server: EHLO, optional AUTH PLAIN (no STARTTLS), MAIL, RCPT, DATA."""

    def __init__(self, offer_auth: bool = False, tls: Any = None, implicit_tls: bool = False):
        """`tls`: an ssl.SSLContext for the server side; then STARTTLS is offered and AUTH only after it.
        `implicit_tls`: TLS from the first byte (smtps)."""
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.messages: list[Any] = []
        self.logins: list[tuple[str, str]] = []
        self.offer_auth = offer_auth
        self.tls_used = False
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def finish(self) -> None:
                super().finish()
                if self.connection is not self.request:  # the TLS socket STARTTLS made
                    self.connection.close()

            def handle(self) -> None:
                if receiver.implicit_tls:
                    self.connection = receiver.tls.wrap_socket(self.connection, server_side=True)
                    self.rfile = self.connection.makefile("rb")
                    self.wfile = self.connection.makefile("wb", buffering=0)
                    receiver.tls_used = True
                self.reply("220 localhost test SMTP")
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    verb = raw.decode().strip().split(" ", 1)
                    cmd = verb[0].upper()
                    if cmd == "EHLO":
                        secure = isinstance(self.connection, __import__("ssl").SSLSocket)
                        self.reply("250-localhost")
                        if receiver.tls is not None and not secure:
                            self.reply("250-STARTTLS")
                        if receiver.offer_auth and (receiver.tls is None or secure):
                            self.reply("250-AUTH PLAIN")
                        self.reply("250 SIZE 1000000")
                    elif cmd == "STARTTLS" and receiver.tls is not None:
                        self.reply("220 go ahead")
                        self.wfile.flush()
                        self.connection = receiver.tls.wrap_socket(self.connection, server_side=True)
                        self.rfile = self.connection.makefile("rb")
                        self.wfile = self.connection.makefile("wb", buffering=0)
                        receiver.tls_used = True
                    elif cmd == "AUTH":
                        _, user, password = base64.b64decode(verb[1].split()[1]).decode().split("\0")
                        receiver.logins.append((user, password))
                        self.reply("235 ok")
                    elif cmd == "DATA":
                        self.reply("354 go ahead")
                        data = b""
                        while not data.endswith(b"\r\n.\r\n"):
                            chunk = self.rfile.readline()
                            if not chunk:
                                return
                            data += chunk
                        receiver.messages.append(message_from_bytes(data[:-5], policy=policy.default))
                        self.reply("250 queued")
                    elif cmd == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
