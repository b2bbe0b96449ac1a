"""Slow and idle clients held off (design.md, "Slow and idle clients").

uvicorn parses HTTP (h11) and closes a connection idle *between* requests
(`timeout_keep_alive`), but it has no deadline for a request's head or body: a
client sending one header byte every few seconds keeps its connection, and its
file descriptor, forever. Its `limit_concurrency` answers 503 only once a
request has been read, so it caps nothing of that. This module adds what is
missing around uvicorn's own protocol class (passed as `uvicorn.Config(http=...)`);
uvicorn still reads and writes every byte:

- a request's head must arrive within `head` seconds of the connection (or of
  the first byte of the next request on a kept-alive one), its body within
  `body` seconds of the head; else the connection is closed;
- an answer the client does not take (uvicorn's writing paused: the buffer is
  above its high-water mark; or a closing connection with bytes still to send)
  may wait `write` seconds with no byte taken, then the connection is aborted;
  any progress starts the deadline again, so a slow event-stream reader stays;
- each accepted socket's kernel send buffer is bounded (`SEND_BUFFER`): on
  loopback Linux grows it to megabytes, thousands of small answers, so a client
  pipelining small requests and reading nothing never made uvicorn's writing
  pause; bounded, its answers back up into uvicorn's buffer, writing pauses,
  the app's send waits, no further pipelined request is handled, and the write
  deadline and the cap apply to it;
- at most `max_connections` connections are open: one more closes the oldest
  connection that has not sent a complete request head (an idle or slow one),
  else, of those whose answer waits on their client (stalled, or busy with
  bytes it has not taken), the one whose client took least over the
  connection's life (a client that reads nothing takes no more than its
  receive window; a slow event-stream reader keeps taking); when every
  connection is busy with a request and its client has taken its answers, the
  new one is closed;
- closed connections are counted and reported in one log line per 10 s at
  most, never one line per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import struct
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from bulkgen_cli.core.settings import ConnectionLimits

#: uvicorn's own error log (its handler and format).
logger = logging.getLogger("uvicorn.error")

#: Seconds between two log lines about closed connections.
REPORT_SECONDS = 10.0
#: Offset of `tcpi_bytes_acked` in Linux's `struct tcp_info` (since Linux 4.1).
TCPI_BYTES_ACKED = 120
#: Bytes asked for each accepted socket's kernel send buffer (SO_SNDBUF; Linux doubles it for its bookkeeping):
#: room for a few hundred small answers or a good part of a large one, so a client that reads nothing stalls
#: after that much. It bounds one connection's throughput to about this much per round trip (some 1-2 MB/s at
#: 100 ms), plenty for JSON answers and event streams; loopback and LAN clients are not slowed.
SEND_BUFFER = 128 * 1024
#: Linux's ioctl for the bytes in a socket's send queue, sent or not, that its peer has not acknowledged.
SIOCOUTQ = 0x5411
#: File descriptors kept for everything else of the process (store, log, processor, service calls).
RESERVED_FILES = 256


class Guard:
    """Shared by one server's connections: who waits for a request head (oldest first), whose writing is
    stalled (longest first) and what was closed."""

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        #: connections with no request in progress (slow heads, idle keep-alives), in the order they began waiting
        self.waiting: dict[H11Protocol, None] = {}
        #: connections whose client takes none of their answer, in the order they stalled
        self.stalled: dict[H11Protocol, None] = {}
        self.counts = {"slow": 0, "stalled": 0, "evicted": 0, "refused": 0}
        self._report: asyncio.TimerHandle | None = None

    def admit(self, conn: H11Protocol) -> bool:
        """True when `conn` may stay; at the cap another makes room (`victim`), else `conn` is closed."""
        if len(conn.connections) <= self.limits.max_connections:
            return True
        victim = self.victim(conn)
        if victim is not None:
            self.waiting.pop(victim, None)
            self.stalled.pop(victim, None)
            shut(victim.transport)
            self.closed("evicted")
            return True
        conn.transport.close()
        self.closed("refused")
        return False

    def victim(self, conn: H11Protocol) -> H11Protocol | None:
        """Who makes room for `conn`: the oldest waiting connection; else, of those whose answer waits on their
        client (stalled, or busy with bytes the client has not taken), the one whose client took least over the
        connection's life, and of equals the one with most untaken bytes, then the one
        stalled longest: an event stream read slowly stays before a client that reads nothing (which takes no
        more than its receive window). None: every connection is busy and its client takes its answer."""
        waiting = next(iter(self.waiting), None)
        if waiting is not None:
            return waiting
        best: tuple[int, int] | None = None
        chosen = None
        for other in [*self.stalled, *(c for c in list(conn.connections) if c not in self.stalled)]:
            transport = other.transport
            if other is conn or transport is None or transport.is_closing():
                continue
            untaken = not_taken(transport)
            if other in self.stalled or untaken > 0:
                key = (progress(transport)[0], -untaken)
                if best is None or key < best:
                    best, chosen = key, other
        return chosen

    def closed(self, why: str) -> None:
        self.counts[why] += 1
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(REPORT_SECONDS, self.report)

    def report(self) -> None:
        """One line for every connection closed since the last one (and once more as the server stops)."""
        if self._report is not None:
            self._report.cancel()
        self._report = None
        counts, limits = self.counts, self.limits
        self.counts = dict.fromkeys(self.counts, 0)
        if sum(counts.values()):
            logger.warning(
                "closed %d connection(s) that sent no complete request within %g s (head) / %g s (body), "
                "%d whose client took no byte of its answer for %g s (write), %d idle or stalled one(s) to make "
                "room and refused %d at the cap of %d connections", counts["slow"], limits.head, limits.body,
                counts["stalled"], limits.write, counts["evicted"], counts["refused"], limits.max_connections)


def shut(transport: asyncio.Transport) -> None:
    """Close `transport`; at once (reset) when it holds bytes the client has not taken (in uvicorn's buffer or the
    kernel's): a plain close would wait for them, and keep the connection, for as long as the client does not read."""
    if not_taken(transport):
        reset(transport)
    else:
        transport.close()


def reset(transport: asyncio.Transport) -> None:
    """Drop the connection and what it still had to send, the kernel's send queue too: with no linger the close
    is a TCP reset, where a FIN would queue behind bytes a client that does not read never takes."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def progress(transport: asyncio.Transport) -> tuple[int, int]:
    """How far the client has taken what was written, growing as it reads: the bytes its end acknowledged
    (Linux's TCP_INFO; 0 elsewhere) and the bytes still to send, negated. The write buffer alone moves in
    steps as large as the kernel's send buffer (megabytes), which a slow reader takes seconds to empty."""
    left = -transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return 0, left
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_BYTES_ACKED + 8)
    except OSError:
        return 0, left
    return (struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0] if len(info) >= TCPI_BYTES_ACKED + 8 else 0), left


def not_taken(transport: asyncio.Transport) -> int:
    """Bytes written to `transport` its client has not acknowledged: uvicorn's buffer and the kernel's send queue
    (Linux's SIOCOUTQ; the buffer alone elsewhere)."""
    left = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    try:
        import fcntl
    except ImportError:  # not on this system (Windows)
        return left
    if sock is None:
        return left
    try:
        queued = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return left
    return left + struct.unpack("i", queued)[0]


def bound_send_buffer(transport: asyncio.Transport) -> None:
    """A modest kernel send buffer for this connection (SEND_BUFFER: why that size)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class Guarded(H11Protocol):
    """uvicorn's h11 protocol with the deadlines and the connection cap of its `guard`."""

    guard: Guard
    _deadline: asyncio.TimerHandle | None = None
    _phase: str | None = None
    #: the write deadline, and how far the client had taken the answer when it was armed
    _stall: asyncio.TimerHandle | None = None
    _stall_mark = (0, 0)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        bound_send_buffer(transport)
        super().connection_made(transport)
        if self.guard.admit(self):
            self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._watch_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None, 0.0)
        self.guard.waiting.pop(self, None)
        self._unstall()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline of the phase the request is in: its head, its body, or none."""
        state, limits = self.conn.their_state, self.guard.limits
        if self.transport.is_closing():
            self._arm(None, 0.0)
            self.guard.waiting.pop(self, None)
        elif state is h11.IDLE:
            self.guard.waiting.setdefault(self, None)
            # Idle after a response: uvicorn's keep-alive timer runs; bytes of a new head: ours.
            self._arm(None if self.timeout_keep_alive_task is not None else "head", limits.head)
        else:
            self.guard.waiting.pop(self, None)
            self._arm("body" if state is h11.SEND_BODY else None, limits.body)
        self._watch_writing()

    def _arm(self, phase: str | None, seconds: float) -> None:
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._phase, self._deadline = phase, None
        if phase is not None:
            self._deadline = self.loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.guard.closed("slow")
            shut(self.transport)
            self._follow()

    def _watch_writing(self) -> None:
        """The write deadline runs while the client takes none of what is written: uvicorn's writing is paused
        (the buffer above its high-water mark), or the connection is closing with bytes still to send."""
        if self.transport is None:
            return
        left = self.transport.get_write_buffer_size()
        if not (self.flow.write_paused or (self.transport.is_closing() and left)):
            self._unstall()
        elif self._stall is None:
            self._stall_mark = progress(self.transport)
            self._stall = self.loop.call_later(self.guard.limits.write, self._write_expired)
            self.guard.stalled.setdefault(self, None)

    def _write_expired(self) -> None:
        self._stall = None
        if any(now > then for now, then in zip(progress(self.transport), self._stall_mark)):
            self._unstall()  # the client took some: a new deadline from now, and it stalled last
            self._watch_writing()
            return
        self.guard.stalled.pop(self, None)
        self.guard.closed("stalled")
        reset(self.transport)

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
        self._stall = None
        self.guard.stalled.pop(self, None)


def guarded_protocol(limits: ConnectionLimits) -> type[Guarded]:
    """uvicorn's h11 protocol with head, body and write deadlines and the connection cap of `limits`."""
    return type("Guarded", (Guarded,), {"guard": Guard(limits)})


def raise_file_limit(limits: ConnectionLimits) -> tuple[ConnectionLimits, str | None]:
    """Let the process open the files `limits` needs (up to the hard limit); where it may not, the cap shrinks
    to what it may and the second value says so."""
    try:
        import resource
    except ImportError:  # not on this system (Windows): the operating system's own limits stand
        return limits, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft - RESERVED_FILES >= limits.max_connections:
        return limits, None
    allowed = max(16, soft - RESERVED_FILES)
    return (dataclasses.replace(limits, max_connections=allowed),
            f"at most {allowed} connections (not {limits.max_connections}): this process may open only {soft} "
            "files (ulimit -n)")


def settings(limits: ConnectionLimits) -> dict[str, Any]:
    """The uvicorn.Config arguments for `limits`."""
    return {"http": guarded_protocol(limits), "timeout_keep_alive": limits.keep_alive,
            "h11_max_incomplete_event_size": 16 * 1024}
