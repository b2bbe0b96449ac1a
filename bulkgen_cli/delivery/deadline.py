"""One send's deadline (delivery/notify.py): every step of a webhook's or an e-mail's send, name resolution
included, gets only what is left of it."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Deadline:
    """One send's whole time. Python's socket timeouts hold each operation (httpx's and smtplib's too), and
    name resolution has none: a receiver answering a byte at a time, or several addresses each slow to
    refuse, would keep a send going past its step's lock, and another processor would send it again
    meanwhile. So every step of a send gets only what is left of this deadline."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def left(self) -> float:
        """The time left, or TimeoutError when there is none."""
        rest = self.at - time.monotonic()
        if rest <= 0:
            raise TimeoutError(f"no answer within {self.seconds:g} s")
        return rest

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` (a name lookup, which has no timeout of its own), given up at the deadline:
        it then finishes alone in its thread, and nothing is sent."""
        result: list[Any] = []

        def run() -> None:
            try:
                result.append((True, function(*args)))
            except BaseException as exc:  # noqa: BLE001  raised in the caller's thread below
                result.append((False, exc))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(self.left())
        if not result:
            raise TimeoutError(f"no answer within {self.seconds:g} s")
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def connect(self, host: str, port: int, source: tuple[str, int] | None = None) -> socket.socket:
        """A TCP connection to `host`, each address tried with the time left; its timeout is what is left."""
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, address in self.call(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.left())
                if source:
                    sock.bind(source)
                sock.connect(address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    @contextmanager
    def cutting(self, current: Callable[[], socket.socket | None]) -> Iterator[None]:
        """Shut the connection `current()` down at the deadline, waking whatever read or write waits on it."""

        def cut() -> None:
            sock = current()
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the socket's own, under TLS too
                except OSError:
                    pass  # already closed

        timer = threading.Timer(max(self.at - time.monotonic(), 0.0), cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        except OSError as exc:
            if time.monotonic() >= self.at:
                raise TimeoutError(f"no answer within {self.seconds:g} s") from exc
            raise
        finally:
            timer.cancel()
