"""A real `bulkgen serve` on 127.0.0.1 for the tests, and an SSE reader."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.cli_helpers import run_cli, spawn

ARTICLES = Path(__file__).resolve().parent.parent / "examples" / "articles.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_token(env: dict[str, str], user: str, *args: str) -> str:
    result = run_cli(["token", "create", "--user", user, *args], env)
    assert result.code == 0, result.err
    return result.out.strip()


def articles(n: int = 10, prefix: str = "Topic", **fields: object) -> dict:
    return {"bulk_config": {"mode": "topic", "name": f"{prefix} job",
                            "items": [{"topic": f"{prefix} {i}", **fields} for i in range(1, n + 1)]}}


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def stop(self, signum: int | None = None) -> int:
        if self.proc.poll() is None:
            if signum is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=60)
        finally:
            for reader in self._readers:
                reader.join(timeout=5)

    def start_reading(self) -> None:
        """Both streams into `log` (uvicorn's access log goes to stdout, the rest to stderr)."""
        def read(stream) -> None:
            for line in stream:
                self.log.append(line)

        self._readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (self.proc.stdout, self.proc.stderr)]
        for reader in self._readers:
            reader.start()


def start_server(procs, env: dict[str, str], *args: str, port: int | None = None) -> Server:
    """`bulkgen serve ARGS` as a subprocess; returns once it answers."""
    port = port or free_port()
    proc = procs.spawn(["serve", "--port", str(port), *args], env)
    server = Server(proc, f"http://127.0.0.1:{port}", env)
    server.start_reading()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {''.join(server.log)}")
        try:
            if httpx.get(server.url + "/openapi.json", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not answer within 30 s")


@dataclass
class Sse:
    """One event of a stream, and when it arrived (time.monotonic)."""

    id: int
    event: str
    data: dict
    arrived: float


class EventReader:
    """Follows an SSE stream in a thread; `events` grows as they arrive, `comments` counts heartbeats."""

    def __init__(self, url: str, token: str, last_id: int | None = None):
        self.events: list[Sse] = []
        self.comments: list[str] = []
        self.headers: dict[str, str] = {}
        self.status: int | None = None
        self.error: Exception | None = None
        self._stop = threading.Event()
        headers = {"Authorization": f"Bearer {token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            self._follow(url, headers)
        except httpx.HTTPError as exc:  # the server went away (the test stopped it): the stream just ends
            self.error = exc

    def _follow(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=60)) as response:
            self.status, self.headers = response.status_code, dict(response.headers)
            fields: dict[str, str] = {}
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "" and "data" in fields:
                    self.events.append(Sse(int(fields["id"]), fields["event"], json.loads(fields["data"]),
                                           time.monotonic()))
                    fields = {}
                elif ":" in line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value

    @property
    def ended(self) -> bool:
        """The server ended the stream (or the reader was closed)."""
        return not self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()


class RawStream:
    """An event stream over a plain socket: opened without waiting, read as bytes, dropped abruptly at will
    (a client that hangs up, as hundreds of browser tabs closing do)."""

    def __init__(self, server: Server, token: str, path: str = "/api/events", last_id: int | None = None):
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        resume = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                          f"Accept: text/event-stream\r\n{resume}\r\n".encode())
        self.received = b""

    def read(self, until: bytes, limit: int = 1 << 20, deadline: float | None = None) -> bytes:
        """Read until `until` is among what arrived (or `limit` bytes came); what arrived so far. Past
        `deadline` (time.monotonic()) without it, the test fails."""
        while until not in self.received and len(self.received) < limit:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{until!r} did not arrive in time")
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"{until!r} did not arrive in time") from None
            if not chunk:
                break
            self.received += chunk
        return self.received

    def status(self) -> int:
        return int(self.read(b"\r\n\r\n").split(b" ", 2)[1])

    def drop(self, reset: bool = True) -> None:
        """Hang up: with `reset`, at once (RST, as a killed client), else with an orderly close."""
        if reset:
            import struct

            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
