from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from bulkgen_cli.core.model import BulkJob, BulkStatus, new_id, utcnow
from bulkgen_cli.store.base import Store
from tests.cli_helpers import Processes, cli  # noqa: F401  (cli: a fixture, shared by the CLI tests)

MONGO_URI = os.environ.get("BULKGEN_TEST_MONGO_URI")


def make_store(kind: str, tmp_path) -> Iterator[Store]:
    if kind == "sqlite":
        from bulkgen_cli.store.sqlite import SqliteStore

        store = SqliteStore(tmp_path / "store.db")
        yield store
        store.close()
        return
    from bulkgen_cli.store.mongo import MongoStore

    if MONGO_URI:
        import pymongo

        client = pymongo.MongoClient(MONGO_URI, tz_aware=True, serverSelectionTimeoutMS=5000)
        name = f"bulkgen_test_{uuid.uuid4().hex[:12]}"
        yield MongoStore(client, name, MONGO_URI)
        client.drop_database(name)
        client.close()
    else:
        import mongomock

        yield MongoStore(mongomock.MongoClient(tz_aware=True), "bulkgen", "mongodb://mock")


@dataclass(frozen=True)
class Backend:
    """A store backend the shared tests run against, and what a test may ask of it beyond the contract."""

    name: str  # "sqlite" or "mongo", as make_store takes it
    threads: bool  # one store object may be used from several threads at once (mongomock's may not)


BACKENDS = [Backend("sqlite", threads=True), Backend("mongo", threads=False)]


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def store(backend, tmp_path) -> Iterator[Store]:
    yield from make_store(backend.name, tmp_path)


def articles(n: int = 10, prefix: str = "Topic") -> list[dict]:
    return [{"topic": f"{prefix} {i}", "word_count": 500} for i in range(1, n + 1)]


def submit(
    store: Store,
    n: int = 10,
    user: str = "alice",
    created_at: dt.datetime | None = None,
    key: str | None = None,
    prefix: str = "Topic",
    notify: list[str] | None = None,
    priority: str = "normal",
    not_before: dt.datetime | None = None,
) -> BulkJob:
    bulk = BulkJob(
        id=new_id(),
        userId=user,
        mode="topic",
        name=f"{prefix} job",
        status=BulkStatus.queued.value,
        total_items=n,
        created_at=created_at or utcnow(),
        idempotency_key=key,
        notify=list(notify or []),
        priority=priority,
        not_before=not_before,
    )
    stored, _ = store.create_bulk(bulk, articles(n, prefix))
    return stored


@pytest.fixture
def start_service():
    """start_service(latency=0.2) -> a ReferenceService on a real socket; every one is stopped after the test."""
    from bulkgen_cli.content.reference import ReferenceService

    started = []

    def start(**options):
        started.append(ReferenceService(**options).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def service(start_service):
    """The reference service asking for a token (s3cret-token), for in-process `cli(...)` tests."""
    return start_service(token="s3cret-token")


@pytest.fixture
def svc(start_service):
    """The reference service as it starts by default (no token), for real `bulkgen` processes."""
    return start_service()


@pytest.fixture
def processes(start_service):  # asks for start_service so that every service outlives the processes
    """processes.spawn(args, env): bulkgen subprocesses, none left running (or stopped) after the test."""
    with Processes() as procs:
        yield procs


def submit_articles(store: Store, arts: list[dict], user: str = "alice",
                    created_at: dt.datetime | None = None, mode: str = "topic") -> BulkJob:
    bulk = BulkJob(
        id=new_id(), userId=user, mode=mode, name="job", status=BulkStatus.queued.value,
        total_items=len(arts), created_at=created_at or utcnow(),
    )
    store.create_bulk(bulk, arts)
    return bulk


def claim(store: Store, owner: str, lease: float, now: dt.datetime, max_in_flight: int = 1):
    """Take (or renew) a processor slot for `owner`, as a processor does, then claim the next item."""
    store.acquire_processor_lease(owner, lease, now, "test-host", 0, slots=max_in_flight)
    return store.claim_next(owner, lease, now, max_in_flight)


def at_once(workers: list, timeout: float = 60.0) -> list:
    """Run each worker in its own thread, all acting together: a worker is called with `ready`, which it calls
    once set up (a client or store opened) and which returns when every worker has called it. Returns what the
    workers returned (in no particular order), one each."""
    import threading

    gate, results, lock = threading.Barrier(len(workers)), [], threading.Lock()

    def run(worker) -> None:
        result = worker(lambda: gate.wait(timeout=timeout / 3))
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; fail the test with `what` after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Hypothesis: bounded in CI; `--hypothesis-profile=long` for a soak.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=40, stateful_step_count=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=2000, stateful_step_count=100, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass
