"""A kill after each store call of a job's last item, on both stores: the job is never stuck (issue 17).

SQLite: `bulkgen run` in a subprocess kills itself with SIGKILL after the k-th
store call once it has claimed the job's last item (tests/crashpoint_run.py,
a test harness; the product has no hook), for every k up to the end's
notification being recorded, with offline drafts and with the content service
(where the check before the send, which marks the try sent, is a point too).
A new `bulkgen run` then finishes the job. After
each: every item completed once, the counters equal the items, exactly one
end recorded (the store's change log has one `completed` for the job), and
the receiver on 127.0.0.1 got the end's notification once.

Kills fall only after store calls. A kill between a webhook's send and its
record (no store call lies there) would send it again after the lock, with
the same Idempotency-Key (at least once): so the receiver's count is checked
as distinct keys (one per end) and, separately, that no point here sent twice.

MongoDB (mongomock): the same in-process, with the interleaving approach of
tests/test_fencing.py: the processor dies before the k-th collection operation
after its claim of the last item (every later operation fails, as after a
kill), then a fresh processor on the same client, its clock past the lease,
finishes the job.
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
from typing import Any

import pytest

from bulkgen_cli.core.model import ItemStatus, utcnow
from tests.cli_helpers import ROOT, env_for
from tests.conftest import submit
from tests.receivers import WebhookReceiver

ITEMS = 2
#: The store calls of the last item's path (measured first, and checked), by generator: each one is a kill
#: point. Offline drafts (the claim is the send) and the content service (a check before the send that marks
#: it sent, renewals while it is in flight).
POINTS = {"offline": 12, "service": 13}
#: Where the path is cut: the end's notification recorded; nothing after it can leave the job stuck.
PATH_END = "finish_step"


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def service():
    from bulkgen_cli.content.reference import ReferenceService

    svc = ReferenceService().start()
    yield svc
    svc.stop()


def harness(tmp_path, hook: str, kill_after: int, api_url: str | None = None
            ) -> tuple[dict[str, str], str, subprocess.CompletedProcess, list[str]]:
    """Submit a job of ITEMS items notifying `hook`, run the harness (against `api_url`, else offline); its
    calls on the last item's path."""
    from bulkgen_cli.store.sqlite import SqliteStore

    path = tmp_path / "store.db"
    with SqliteStore(path) as db:
        bulk = submit(db, ITEMS, user="tester", notify=[f"webhook:{hook}"])
    env = env_for(tmp_path, BULKGEN_STORE=f"sqlite:///{path}", BULKGEN_LEASE_SECONDS="1")
    if api_url is not None:
        env["BULKGEN_API_URL"] = api_url
    calls = tmp_path / "calls"
    proc = subprocess.run([sys.executable, "-m", "tests.crashpoint_run", "--last", str(ITEMS), "--kill-after",
                           str(kill_after), "--calls", str(calls), "--", "run", "-q"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return env, bulk.id, proc, calls.read_text().split() if calls.exists() else []


@pytest.fixture(scope="module")
def last_paths(tmp_path_factory, service) -> dict[str, list[str]]:
    """The store calls of the last item's path, from its claim to its end's notification recorded, by generator."""
    hook = WebhookReceiver()
    paths = {}
    try:
        for kind, url in (("offline", None), ("service", service.url)):
            _, _, proc, calls = harness(tmp_path_factory.mktemp("count"), hook.url, 0, url)
            assert proc.returncode == 0, proc.stderr
            paths[kind] = calls[:calls.index(PATH_END) + 1]
    finally:
        hook.stop()
    return paths


@pytest.mark.parametrize("kind", POINTS)
def test_the_last_items_path_holds_its_end_and_notification(kind, last_paths):
    # In this order: the claim, the item's end with its job's counters and end (one step), the notification.
    order = ["claim_next", "finish_item", "set_event", "claim_step", "finish_step"]
    assert [c for c in last_paths[kind] if c in order] == order, last_paths[kind]
    if kind == "service":  # the check before the send, which marks the try sent, is a kill point too
        assert last_paths[kind].index("heartbeat") < last_paths[kind].index("finish_item"), last_paths[kind]
    # Every call of the path is a kill point below: a path that grew or shrank must be looked at again.
    assert len(last_paths[kind]) == POINTS[kind], f"the path has {len(last_paths[kind])} store calls now"


@pytest.mark.parametrize(("kind", "k"), [(kind, k) for kind, n in POINTS.items() for k in range(1, n + 1)])
def test_a_kill_after_each_store_call_of_the_last_item_leaves_a_job_that_a_new_run_finishes(
        kind, k, tmp_path, receiver, service, last_paths):
    api_url = service.url if kind == "service" else None
    env, bulk_id, killed, calls = harness(tmp_path, receiver.url, k, api_url)
    assert killed.returncode == -signal.SIGKILL, (k, killed.stderr)
    assert calls == last_paths[kind][:k]  # killed right after `calls[-1]`
    again = subprocess.run([sys.executable, "-m", "bulkgen_cli", "run", "-q"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    where = f"{kind}: killed after {calls[-1]} (#{k})"
    check_finished(env["BULKGEN_STORE"].removeprefix("sqlite:///"), bulk_id, where)
    keys = [p["headers"]["Idempotency-Key"] for p in receiver.posts]
    assert len(set(keys)) == 1, f"{where}: {len(set(keys))} ends notified"
    assert len(keys) == 1, f"{where}: the end was sent {len(keys)} times"


def check_finished(path: str, bulk_id: str, where: str) -> None:
    db = sqlite3.connect(path)
    try:
        job = db.execute("SELECT status, completed_items, failed_items, cancelled_items, completed_at, notify_pending"
                         " FROM bulk_jobs WHERE id = ?", (bulk_id,)).fetchone()
        items = [r[0] for r in db.execute("SELECT status FROM generation_jobs WHERE bulk_job_id = ?", (bulk_id,))]
        ends = db.execute("SELECT count(*) FROM changes WHERE kind = 'bulk' AND record_id = ? AND status = ?",
                          (bulk_id, "completed")).fetchone()[0]
    finally:
        db.close()
    assert items == [ItemStatus.completed.value] * ITEMS, where
    assert job[:4] == ("completed", ITEMS, 0, 0) and job[4] is not None, (where, job)
    assert ends == 1, f"{where}: {ends} ends recorded"
    assert job[5] == 0, f"{where}: its notification is still pending"


# -- MongoDB: the same points, in-process --------------------------------------------------------------------


class Died(Exception):
    """The processor is dead from here on (as after SIGKILL): nothing it does reaches the store."""


class Crash:
    """A MongoStore whose collection operations count once the last item is claimed, each labelled with the
    verb it is part of; the `at`-th and every one after it fail."""

    def __init__(self, store: Any, at: int | None) -> None:
        from tests.crashpoint_run import verbs

        self.at, self.armed, self.dead = at, False, False
        self.calls: list[str] = []
        self.verb: str | None = None
        for name in ("items", "bulks", "leases", "meta", "keys"):
            setattr(store, name, Operations(getattr(store, name), self, name))
        for name in verbs():
            setattr(store, name, self._labelled(name, getattr(store, name)))

    def _labelled(self, name: str, method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            outer = self.verb is None
            if outer:
                self.verb = name
            try:
                result = method(*args, **kwargs)
            finally:
                if outer:
                    self.verb = None
            if name == "claim_next" and result is not None and result.queue_position == ITEMS:
                self.armed = True
            return result

        return call

    def before(self, operation: str) -> None:
        if self.dead:
            raise Died(operation)
        if not self.armed:
            return
        self.calls.append(f"{self.verb}:{operation}")
        if len(self.calls) == self.at:
            self.dead = True
            raise Died(operation)


class Operations:
    """A collection whose every operation is first announced to its Crash."""

    def __init__(self, collection: Any, crash: Crash, name: str) -> None:
        self._collection, self._crash, self._name = collection, crash, name

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._collection, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self._crash.before(f"{self._name}.{name}")
            return target(*args, **kwargs)

        return call


def mongo_run(at: int | None, hook: str) -> tuple[Any, str, list[str]]:
    """A processor on a fresh job that dies before the `at`-th operation after its claim of the last item,
    then (if it died) a fresh processor on the same client, its clock past the lease, finishing the job."""
    import mongomock

    from bulkgen_cli.content.offline import OfflineGenerator
    from bulkgen_cli.delivery.notify import Notifier
    from bulkgen_cli.engine.processor import Processor
    from bulkgen_cli.core.settings import RunSettings
    from bulkgen_cli.store.mongo import MongoStore

    client = mongomock.MongoClient(tz_aware=True)
    settings = RunSettings(delay=0.0, timeout=5.0, max_retries=3, backoff=0.01, lease=1.0, give_up=5.0)
    first = MongoStore(client, "bulkgen", "mongodb://mock")
    bulk = submit(first, ITEMS, notify=[f"webhook:{hook}"])
    crash = Crash(first, at)
    processor = Processor(first, OfflineGenerator(), settings, owner="A")
    processor.notifier = Notifier(first, "A")
    try:
        processor.run(until_idle=True)
    except Died:
        pass
    if crash.dead:
        later = utcnow() + dt.timedelta(minutes=5)  # past every lease and send lock the dead one left
        fresh = MongoStore(client, "bulkgen", "mongodb://mock")
        second = Processor(fresh, OfflineGenerator(), settings, owner="B", clock=lambda: later)
        second.notifier = Notifier(fresh, "B", clock=lambda: later)
        second.run(until_idle=True)
    return MongoStore(client, "bulkgen", "mongodb://mock"), bulk.id, crash.calls


def test_mongo_a_crash_before_each_operation_of_the_last_item_leaves_a_job_a_new_processor_finishes():
    receiver = WebhookReceiver()
    try:
        _, _, whole = mongo_run(None, f"{receiver.url}/count")
        path = whole[:max(n for n, op in enumerate(whole) if op.startswith(PATH_END + ":")) + 1]
        assert any(op.startswith("finish_item:items.") for op in path), path
        for k in range(1, len(path) + 1):
            before = len(receiver.posts)
            store, bulk_id, calls = mongo_run(k, f"{receiver.url}/k{k}")
            where = f"died before operation #{k} ({calls[-1]})"
            assert calls == path[:k], where
            items = store.list_items(bulk_id)
            job = store.get_bulk(bulk_id)
            assert [i.status for i in items] == [ItemStatus.completed.value] * ITEMS, where
            assert (job.status, job.completed_items, job.failed_items) == ("completed", ITEMS, 0), where
            ends = [c for c in store.changes_since(0, 10_000) if c.record_id == bulk_id and c.status == "completed"]
            assert len(ends) == 1, f"{where}: {len(ends)} ends recorded"
            assert not store.open_outboxes(), f"{where}: its notification is still pending"
            keys = [p["headers"]["Idempotency-Key"] for p in receiver.posts[before:]]
            assert len(set(keys)) == 1, f"{where}: {len(set(keys))} ends notified"
            # Died after the send and before its record: sent again, with the same key (at least once).
            sent_before = calls[-1].startswith(PATH_END + ":") and f"{PATH_END}:bulks.update_one" not in calls[:-1]
            assert len(keys) == (2 if sent_before else 1), f"{where}: the end was sent {len(keys)} times"
    finally:
        receiver.stop()
