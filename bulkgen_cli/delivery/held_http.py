"""A webhook's connections held to its send's deadline: httpcore's synchronous network backend with every
step (connect, TLS handshake, each read and write) given only what is left of a `Deadline`.

Imported by delivery/notify.py when a webhook is sent, not with it: httpx and httpcore cost about 80 ms of a
cold start, and most ends notify no webhook.
"""

from __future__ import annotations

import socket
from typing import Any

import httpcore
from httpcore._backends.sync import SyncStream

from bulkgen_cli.delivery.deadline import Deadline


class Stream(SyncStream):
    """A connection whose every read, write and TLS handshake gets only what is left of its deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        super().__init__(sock)
        self.deadline = deadline

    def _rest(self, timeout: float | None, error: type[Exception]) -> float:
        try:
            rest = self.deadline.left()
        except TimeoutError as exc:
            raise error(str(exc)) from exc
        return rest if timeout is None else min(timeout, rest)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return super().read(max_bytes, self._rest(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        while buffer:  # SyncStream's own loop gives every partial send the whole timeout
            try:
                self._sock.settimeout(self._rest(timeout, httpcore.WriteTimeout))
                sent = self._sock.send(buffer)
            except socket.timeout as exc:
                raise httpcore.WriteTimeout(str(exc)) from exc
            except OSError as exc:
                raise httpcore.WriteError(str(exc)) from exc
            buffer = buffer[sent:]

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> Any:
        tls = super().start_tls(ssl_context, server_hostname, self._rest(timeout, httpcore.ConnectTimeout))
        return Stream(tls._sock, self.deadline)


class Backend(httpcore.SyncBackend):
    """Connections made within the deadline (each address tried with the time left), as `Stream`s."""

    def __init__(self, deadline: Deadline):
        self.deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> Any:
        try:
            sock = self.deadline.connect(host, port, None if local_address is None else (local_address, 0))
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Stream(sock, self.deadline)


def within_deadline(client: Any, deadline: Deadline) -> None:
    """Make every connection `client` opens (directly or through a proxy from the environment) resolve,
    connect, shake hands, write and read within `deadline`: httpx's timeouts hold each operation only.
    httpx has no public way to give its pools a network backend; tests/test_notify_lock.py notices if
    this one stops working."""
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        if pool is not None:
            pool._network_backend = Backend(deadline)
