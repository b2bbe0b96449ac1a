"""Per-user limits and the per-token write rate of `bulkgen serve` (design.md, "Quotas").

The write rate is a token bucket per bearer token, kept in this process (keyed
by the token's SHA-256, never the token): `burst` writes at once, refilled at
`rate` a second. A full bucket is the same as no bucket, so full ones are
dropped whenever the table grows: memory stays bounded whatever tokens are sent.
A small class rather than a library: no rate-limiting package is a dependency
yet, and this is the whole of what is needed (one process, one rule).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from typing import Any, Callable, Iterator

from fastapi import Request

from bulkgen_cli.core.errors import QuotaExceeded
from bulkgen_cli.core.model import ENDED_BULK, BulkJob
from bulkgen_cli.core.settings import ServeLimits
from bulkgen_cli.server.problems import HttpProblem, responses

#: The methods that write.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Past this many buckets, the full ones are dropped (they mean "never used").
PRUNE_AT = 10_000


class TokenBuckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[str, tuple[float, float]] = {}  # key: (tokens left, when counted)
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one write for `key`: 0 if allowed, else the seconds until one is."""
        if self.rate <= 0 or self.burst <= 0:
            return 0.0
        with self.lock:
            now = self.clock()
            left, then = self.buckets.get(key, (float(self.burst), now))
            left = min(float(self.burst), left + (now - then) * self.rate)
            if left < 1.0:
                self.buckets[key] = (left, now)
                return (1.0 - left) / self.rate
            self.buckets[key] = (left - 1.0, now)
            if len(self.buckets) > PRUNE_AT:
                self._prune(now)
            return 0.0

    def _prune(self, now: float) -> None:
        self.buckets = {k: (left, then) for k, (left, then) in self.buckets.items()
                        if left + (now - then) * self.rate < self.burst}


class UserLocks:
    """One lock per user, held around the steps that count a user's active jobs and add one: a submit, a
    schedule's run now, re-opening an ended job (design.md, "Quotas"). An entry lives while a thread holds or
    waits for it, so the table holds at most one lock per worker thread whatever users come."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[str, tuple[threading.Lock, list[int]]] = {}  # user: (its lock, [threads using it])

    @contextlib.contextmanager
    def hold(self, user: str) -> Iterator[None]:
        with self.guard:
            lock, users = self.locks.setdefault(user, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self.guard:
                users[0] -= 1
                if users[0] == 0:
                    del self.locks[user]


def check_reopen(store: Any, user: str, limits: ServeLimits | None, bulk: BulkJob) -> None:
    """QuotaExceeded (429, as for a submit) when re-opening the ended `bulk` (an item retry, retry-failed) would
    put `user` over the active-jobs limit; `limits` None: an admin's, unlimited. Call it under UserLocks.hold:
    the store checks a submit atomically, but a re-opening only here, in the serving process."""
    if limits is None or limits.max_active_jobs <= 0 or bulk.status not in {s.value for s in ENDED_BULK}:
        return
    have = store.usage(user).active_jobs
    if have >= limits.max_active_jobs:
        raise QuotaExceeded("active_jobs", have, limits.max_active_jobs)


async def write_rate(request: Request) -> None:
    """An app-wide dependency: a write (POST, PUT, DELETE) with a bearer token takes one from its bucket;
    an empty bucket answers 429 with Retry-After. Reads and requests without a token are not counted here
    (they get their 401 from the route)."""
    if request.method not in WRITES:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return
    buckets: TokenBuckets = request.app.state.write_buckets
    wait = buckets.take(hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest())
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise HttpProblem(429, "rate-limited", "Too many writes for this token",
                          f"this token may make {buckets.rate:g} writes (POST, PUT, DELETE) a second, "
                          f"{buckets.burst} at once; try again in {retry} s. The operator sets the rate with "
                          "`bulkgen serve --write-rate N --write-burst N` (BULKGEN_WRITE_RATE, BULKGEN_WRITE_BURST).",
                          headers={"Retry-After": str(retry)})


def document_rate_limit(document: dict[str, Any]) -> None:
    """Every write route of the OpenAPI document may answer 429 (the write rate): say so."""
    answer = {k: v for k, v in responses(429)[429].items() if k != "model"}  # the document holds no classes
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            if method.upper() in WRITES:
                operation.setdefault("responses", {}).setdefault("429", answer)
