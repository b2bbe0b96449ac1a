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
- at most `max_connections` connections are open: one more closes the oldest
  connection that has not sent a complete request head (an idle or slow one);
  when every connection is busy with a request, the new one is closed;
- closed connections are counted and reported in one log line per 10 s at
  most, never one line per connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: uvicorn's own error log (its handler and format).
logger = logging.getLogger("uvicorn.error")

#: Seconds between two log lines about closed connections.
REPORT_SECONDS = 10.0
#: File descriptors kept for everything else of the process (store, log, processor, service calls).
RESERVED_FILES = 256


@dataclass(frozen=True)
class Limits:
    """`bulkgen serve`'s connection settings (README, "Slow clients and TLS")."""

    #: seconds for a request's head to arrive
    head: float = 10.0
    #: seconds for a request's body to arrive after its head
    body: float = 30.0
    #: seconds an idle kept-alive connection stays open
    keep_alive: int = 5
    max_connections: int = 2048


class Guard:
    """Shared by one server's connections: who waits for a request head (oldest first) and what was closed."""

    def __init__(self, limits: Limits):
        self.limits = limits
        #: connections with no request in progress (slow heads, idle keep-alives), in the order they began waiting
        self.waiting: dict[H11Protocol, None] = {}
        self.counts = {"slow": 0, "evicted": 0, "refused": 0}
        self._report: asyncio.TimerHandle | None = None

    def admit(self, conn: H11Protocol) -> bool:
        """True when `conn` may stay; at the cap the oldest waiting connection makes room, else `conn` is closed."""
        if len(conn.connections) <= self.limits.max_connections:
            return True
        victim = next(iter(self.waiting), None)
        if victim is not None:
            self.waiting.pop(victim)
            victim.transport.close()
            self.closed("evicted")
            return True
        conn.transport.close()
        self.closed("refused")
        return False

    def closed(self, why: str) -> None:
        self.counts[why] += 1
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(REPORT_SECONDS, self.report)

    def report(self) -> None:
        """One line for every connection closed since the last one (and once more as the server stops)."""
        if self._report is not None:
            self._report.cancel()
        self._report = None
        slow, evicted, refused = self.counts["slow"], self.counts["evicted"], self.counts["refused"]
        self.counts = dict.fromkeys(self.counts, 0)
        if slow + evicted + refused:
            logger.warning(
                "closed %d connection(s) that sent no complete request within %g s (head) / %g s (body), "
                "%d idle one(s) to make room and refused %d at the cap of %d connections",
                slow, self.limits.head, self.limits.body, evicted, refused, self.limits.max_connections)


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with head and body deadlines and the connection cap of `limits`."""
    guard = Guard(limits)

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _phase: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if guard.admit(self):
                self._follow()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None, 0.0)
            guard.waiting.pop(self, None)
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Arm the deadline of the phase the request is in: its head, its body, or none."""
            state = self.conn.their_state
            if self.transport.is_closing():
                self._arm(None, 0.0)
                guard.waiting.pop(self, None)
            elif state is h11.IDLE:
                guard.waiting.setdefault(self, None)
                # Idle after a response: uvicorn's keep-alive timer runs; bytes of a new head: ours.
                self._arm(None if self.timeout_keep_alive_task is not None else "head", limits.head)
            else:
                guard.waiting.pop(self, None)
                self._arm("body" if state is h11.SEND_BODY else None, limits.body)

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
                guard.closed("slow")
                self.transport.close()

    Guarded.guard = guard  # type: ignore[attr-defined]
    return Guarded


def raise_file_limit(limits: Limits) -> tuple[Limits, str | None]:
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
    return (Limits(limits.head, limits.body, limits.keep_alive, allowed),
            f"at most {allowed} connections (not {limits.max_connections}): this process may open only {soft} "
            "files (ulimit -n)")


def settings(limits: Limits) -> dict[str, Any]:
    """The uvicorn.Config arguments for `limits`."""
    return {"http": guarded_protocol(limits), "timeout_keep_alive": limits.keep_alive,
            "h11_max_incomplete_event_size": 16 * 1024}
