"""Stateful property tests of the store contract (design.md, "Invariants" 1-9), on both stores.

Hypothesis drives random sequences of submit, claim, heartbeat, finish, lease
expiry on a controllable clock, release, pause, resume, cancel, retry-failed and
the processor lease held by two owners, and checks every invariant after every
step. CI runs a bounded number of examples; for a long run:

    python -m pytest tests/test_stateful.py --hypothesis-profile=long
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bulkgen_cli.ops import control
from bulkgen_cli.core.errors import InvalidTransition
from bulkgen_cli.core.model import BulkJob, BulkStatus, ItemStatus, Outcome, new_id

LEASE = 30.0
MAX_ATTEMPTS = 3
OWNERS = ("A", "B", "C", "D")
USERS = ("u1", "u2", "u3")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class StoreMachine(RuleBasedStateMachine):
    #: items in flight at most (`run --concurrency`)
    slots = 1

    def __init__(self) -> None:
        super().__init__()
        self.store = self.open_store()
        self.now = T0
        self.bulks: dict[str, list[str]] = {}  # bulk id -> its item ids, as submitted
        self.held: dict[str, str] = {}  # item id -> owner, as the claims said
        self.ends: dict[str, int] = {}  # bulk id -> ends recorded (ended_now or cancel)
        self.rounds: dict[str, int] = {}  # bulk id -> rounds started (1 + retry-failed)
        self.lease_owner: str | None = None
        self.lease_until = T0
        self.last_fence = 0
        self.last_turn: str | None = None  # the user whose turn the last claim took (design.md, "Fair turns")

    def open_store(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.close()

    # -- helpers ----------------------------------------------------------------

    def ordered(self, item_ids) -> list[str]:
        """Item ids in submission order (job, then position): a draw must not depend on the ids' values, which
        hold the wall clock's second (hypothesis replays a case and must draw the same)."""
        place = {item: (n, k) for n, items in enumerate(self.bulks.values()) for k, item in enumerate(items)}
        return sorted(item_ids, key=place.__getitem__)

    def refresh(self, bulk_id: str) -> None:
        if self.store.refresh_counters(bulk_id, self.now).ended_now:
            self.ends[bulk_id] += 1

    def expected_next(self) -> tuple[str, str | None] | None:
        """Fair turns (design.md, "Fair turns"): the item the next claim must take, and whose turn it takes.

        The first queued item of the oldest due claimable urgent job (no turn); else of the first user
        after the last turn's user that has such a job (wrapping around), that user's jobs by priority
        then oldest first.
        """
        rank = {"urgent": -1, "high": 0, "normal": 1, "low": 2}
        jobs = [self.store.get_bulk(b) for b in self.bulks]
        jobs = [j for j in jobs if j.status in ("queued", "processing")
                and (j.not_before is None or j.not_before <= self.now)]
        firsts = {}
        for job in jobs:
            queued = [i for i in self.store.list_items(job.id) if i.status == "queued"]
            if queued:
                firsts[job.id] = min(queued, key=lambda i: i.queue_position).id
        ready = [j for j in jobs if j.id in firsts]
        urgent = sorted((j for j in ready if j.priority == "urgent"), key=lambda j: (j.created_at, j.id))
        if urgent:
            return firsts[urgent[0].id], None
        users = sorted({j.userId for j in ready})
        if not users:
            return None
        after = [u for u in users if self.last_turn is not None and u > self.last_turn]
        user = (after or users)[0]
        job = min((j for j in ready if j.userId == user), key=lambda j: (rank[j.priority], j.created_at, j.id))
        return firsts[job.id], user

    # -- rules ------------------------------------------------------------------

    @precondition(lambda self: len(self.bulks) < 4)
    @rule(n=st.integers(min_value=1, max_value=4),  # small jobs reach their end within a run
          priority=st.sampled_from(["urgent", "high", "normal", "normal", "low"]),
          wait=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
          user=st.sampled_from(USERS))
    def submit(self, n: int, priority: str, wait: int | None, user: str) -> None:
        self.now += dt.timedelta(milliseconds=1)
        bulk = BulkJob(id=new_id(), userId=user, mode="topic", name="j", status="queued", total_items=n,
                       created_at=self.now, notify=["webhook:http://127.0.0.1:9/h"], priority=priority,
                       not_before=None if wait is None else self.now + dt.timedelta(seconds=wait))
        self.store.create_bulk(bulk, [{"topic": f"T{i}", "word_count": 500} for i in range(n)])
        self.bulks[bulk.id] = [i.id for i in self.store.list_items(bulk.id)]
        self.ends[bulk.id] = 0
        self.rounds[bulk.id] = 1

    @rule(owner=st.sampled_from(OWNERS))
    def claim(self, owner: str) -> None:
        """A processor's step: take (or renew) a slot, then claim; the slot is the fence."""
        first_free = self.lease_owner in (None, owner) or self.lease_until < self.now
        has_slot = self.store.acquire_processor_lease(owner, LEASE, self.now, "h", 1, self.slots)
        lease = self.store.processor_lease()
        if has_slot and lease is not None and lease.owner == owner and lease.expires_at >= self.now:
            assert first_free or self.lease_owner == owner, "the first slot went to a second live owner"
            self.lease_owner, self.lease_until = owner, lease.expires_at
        busy = owner in self.held.values()
        full = len(self.held) >= self.slots
        expected = self.expected_next()
        in_flight = self.store.in_flight()
        item = self.store.claim_next(owner, LEASE, self.now, self.slots)
        if item is None:
            # Nothing claimed must have a reason: no slot, an item already held, the
            # bound reached, or (MongoDB) the slot waits for its former holder's item.
            assert expected is None or not has_slot or busy or full or in_flight, \
                "a live slot with nothing in flight could not claim a queued item"
            return
        assert has_slot and not busy and not full, \
            "an item was claimed without a slot, beside the owner's own item, or beyond the concurrency bound"
        assert expected is not None and item.id == expected[0], \
            "claim broke the turns, priority/FIFO within a user or urgent first, took a paused or cancelled " \
            "job's item, or started one before its time"
        if expected[1] is not None:
            self.last_turn = expected[1]
        assert item.fence is not None and item.fence > self.last_fence, "fencing tokens must only grow"
        self.last_fence = item.fence
        self.held[item.id] = owner

    @rule(data=st.data(), status=st.sampled_from([ItemStatus.completed, ItemStatus.failed]))
    def finish(self, data, status: ItemStatus) -> None:
        if not self.held:
            return
        item_id = data.draw(st.sampled_from(self.ordered(self.held)))
        owner = self.held.pop(item_id)
        bulk_id = next(b for b, items in self.bulks.items() if item_id in items)
        outcome = Outcome(status, {"content": "x"} if status is ItemStatus.completed else None,
                          None if status is ItemStatus.completed else "bad")
        counts = self.store.finish_item(item_id, owner, outcome, self.now)
        # The item's end and its job's counters (and end) are one step: no refresh follows, and the
        # invariants (counters equal the items, an active job has something pending) must hold at once.
        if counts is not None and counts.ended_now:
            self.ends[bulk_id] += 1

    @rule(data=st.data())
    def heartbeat(self, data) -> None:
        if self.held:
            item_id = data.draw(st.sampled_from(self.ordered(self.held)))
            owner = self.held[item_id]
            holds_first_slot = owner == self.lease_owner
            renewed = self.store.heartbeat(item_id, owner, LEASE, self.now)
            if holds_first_slot:  # a heartbeat renews the owner's slot, even when its item is gone
                self.lease_until = self.now + dt.timedelta(seconds=LEASE)
            if not renewed:
                # No longer its own (cancelled, taken back, or its slot passed on):
                # as the processor does, hand it back if the store still says it is.
                self.store.release_item(item_id, owner)
                del self.held[item_id]

    @rule(data=st.data())
    def release(self, data) -> None:
        if self.held:
            item_id = data.draw(st.sampled_from(self.ordered(self.held)))
            self.store.release_item(item_id, self.held.pop(item_id))

    @rule(seconds=st.integers(min_value=1, max_value=45))
    def tick_and_take_back_expired(self, seconds: int) -> None:
        self.now += dt.timedelta(seconds=seconds)
        for bulk_id in self.store.requeue_expired(self.now, MAX_ATTEMPTS):
            self.refresh(bulk_id)
        self.held = {i: o for i, o in self.held.items() if self.store.is_held(i, o)}

    def deliver(self, bulk_id: str) -> None:
        box = self.store.get_bulk(bulk_id).outbox
        if box:
            for index, _ in enumerate(box["steps"]):
                if self.store.claim_step(bulk_id, box["event_id"], index, "notifier", self.now, 60):
                    self.store.finish_step(bulk_id, box["event_id"], index, "notifier", self.now, None, None)

    @rule(data=st.data())
    def refresh_any(self, data) -> None:
        """Deliverers and commands refresh counters too: that never records a second end."""
        if self.bulks:
            self.refresh(data.draw(st.sampled_from(list(self.bulks))))

    @rule(data=st.data(), action=st.sampled_from(list(control.Action)))
    def control(self, data, action: control.Action) -> None:
        if not self.bulks:
            return
        bulk_id = data.draw(st.sampled_from(list(self.bulks)))
        if action is control.Action.retry_failed and data.draw(st.booleans()):
            self.deliver(bulk_id)  # else retry-failed must wait for the last end's notification
        before = self.store.get_bulk(bulk_id).status
        try:
            result = control.apply(self.store, action, bulk_id, self.now)
        except InvalidTransition:
            assert self.store.get_bulk(bulk_id).status == before, "a refused action changed the job"
            return
        if result.ended_now:
            self.ends[bulk_id] += 1
        if action is control.Action.retry_failed and result.changed:
            self.rounds[bulk_id] += 1
        if action is control.Action.cancel:
            self.held = {i: o for i, o in self.held.items() if self.store.is_held(i, o)}

    @rule(owner=st.sampled_from(OWNERS), seconds=st.integers(min_value=5, max_value=40))
    def processor_lease(self, owner: str, seconds: int) -> None:
        # A slot `owner` holds already (a wider one, taken by a claim) is renewed instead.
        owns = any(lease.owner == owner for lease in self.store.processor_leases())
        free = self.lease_owner is None or self.lease_owner == owner or self.lease_until < self.now
        got = self.store.acquire_processor_lease(owner, seconds, self.now, "h", 1)
        assert got == (free or owns), "the processor lease went to a second live owner"
        first = self.store.processor_lease()
        if got and first is not None and first.owner == owner:
            self.lease_owner, self.lease_until = owner, first.expires_at
        if got and self.slots == 1:  # slots beyond the first, taken and given back, never touch the first
            assert self.store.acquire_processor_lease(f"{owner}-wide", seconds, self.now, "h", 1, 3)
            self.store.release_processor_lease(f"{owner}-wide")

    @rule(owner=st.sampled_from(OWNERS))
    def release_processor_lease(self, owner: str) -> None:
        self.store.release_processor_lease(owner)
        if self.lease_owner == owner:
            self.lease_owner = None

    # -- invariants -------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        processing = 0
        for bulk_id, submitted in self.bulks.items():
            bulk = self.store.get_bulk(bulk_id)
            items = self.store.list_items(bulk_id)
            # 7 and "nothing lost or duplicated": the same items, every one accounted for.
            assert [i.id for i in items] == submitted
            by = {s.value: sum(1 for i in items if i.status == s.value) for s in ItemStatus}
            # 1: counters equal the items.
            assert (bulk.completed_items, bulk.failed_items, bulk.cancelled_items) == (
                by["completed"], by["failed"], by["cancelled"])
            pending = by["queued"] + by["processing"]
            processing += by["processing"]
            # Terminal iff nothing is pending.
            if bulk.status in ("completed", "cancelled"):
                assert pending == 0, f"{bulk.status} job with pending items"
            else:
                assert pending > 0, f"{bulk.status} job with nothing pending"
            # Items of paused and cancelled jobs do not start: none is in flight
            # unless it already was (a pause lets it finish).
            if bulk.status == BulkStatus.cancelled.value:
                assert by["processing"] == 0
            # 6: the end is recorded once per round.
            assert self.ends[bulk_id] <= self.rounds[bulk_id]
            if bulk.status in ("completed", "cancelled"):
                assert self.ends[bulk_id] == self.rounds[bulk_id]
                assert bulk.outbox is not None and len(bulk.outbox["steps"]) == 1
            assert all(i.attempts <= MAX_ATTEMPTS for i in items)
        # 2: at most `slots` items in flight in the whole store (one by default).
        assert processing <= self.slots
        lease = self.store.processor_lease()
        if lease is not None and lease.expires_at >= self.now:
            assert lease.owner == self.lease_owner


class SqliteMachine(StoreMachine):
    def open_store(self):
        from bulkgen_cli.store.sqlite import SqliteStore

        self._dir = tempfile.TemporaryDirectory()
        return SqliteStore(Path(self._dir.name) / "s.db")

    def teardown(self) -> None:
        super().teardown()
        self._dir.cleanup()


class MongoMachine(StoreMachine):
    def open_store(self):
        import mongomock

        from bulkgen_cli.store.mongo import MongoStore

        return MongoStore(mongomock.MongoClient(tz_aware=True), "bulkgen")


class SqliteMachine3(SqliteMachine):
    slots = 3


class MongoMachine3(MongoMachine):
    slots = 3


TestSqliteStore = SqliteMachine.TestCase
TestMongoStore = MongoMachine.TestCase
TestSqliteStoreConcurrency3 = SqliteMachine3.TestCase
TestMongoStoreConcurrency3 = MongoMachine3.TestCase
