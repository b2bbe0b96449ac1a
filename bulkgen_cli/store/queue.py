"""The queue's verbs, written once over a few primitives that each backend supplies.

design.md, "The store contract": rules.py decides what a record becomes; this
module decides which records, in which order of conditional writes; a backend
(`sqlite.SqliteStore`, `mongo.MongoStore`) only supplies the primitives below:
an atomic block, find, insert / insert-if-absent, conditional update (a count,
or the document), delete, a tally of a job's items by status (`_tally`), and a
user's lock for a count and its insert (`_user_lock`). Records are named by their kind ("bulks",
"items", "leases", "templates", "schedules", "occurrences", "tokens") and read
back as plain values (ids as text, times as aware datetimes, JSON decoded).

Every verb is written so that it is right under both atomic blocks: SQLite's
`BEGIN IMMEDIATE` makes the block one transaction; MongoDB has no
multi-document transaction, so each write is one single-document (or
per-document) conditional update, ordered so that a crash or a racing writer
between two writes leaves nothing a processor could wrongly start, and each
write carries in its own condition what the decision read
(design.md, "Every MongoDB decision in one conditional write").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from abc import abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Iterable

from bulkgen_cli.core.errors import StoreUnavailable
from bulkgen_cli.core.model import (
    ApiToken, BulkJob, BulkStatus, Counts, EventKind, Item, ItemStatus, Occurrence, OccurrenceState, SavedTemplate,
    SaveOutcome, Schedule, ScheduleStatus, later, outbox_open, utcnow,
)
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import COOLDOWN, PROCESSOR_LEASE, Lease, Store, slot_names
from bulkgen_cli.store.rules import Change, Cmp, Where, record

#: Each kind of record: the model it reads as, and its stored fields.
MODELS: dict[str, tuple[Any, tuple[rules.Field, ...]]] = {
    "bulks": (BulkJob, rules.BULK_FIELDS),
    "items": (Item, rules.ITEM_FIELDS),
    "leases": (Lease, rules.LEASE_FIELDS),
    "templates": (SavedTemplate, rules.TEMPLATE_FIELDS),
    "schedules": (Schedule, rules.SCHEDULE_FIELDS),
    "occurrences": (Occurrence, rules.OCCURRENCE_FIELDS),
    "tokens": (ApiToken, rules.TOKEN_FIELDS),
}
#: Not a processor slot: the record of the shared 429 cooldown.
SLOTS: Where = {"name": Cmp("ne", COOLDOWN)}


def _same(value: Any) -> Any:
    return value


def read(kind: str, values: dict[str, Any]) -> Any:
    """The model of one record read back by a primitive."""
    cls, fields = MODELS[kind]
    return record(cls, fields, values, _same, _same)


def step_field(index: int) -> str:
    """The prefix of one outbox step's fields."""
    return f"outbox.steps.{index}."


class Queue(Store):
    """`Store`'s verbs over the primitives; a backend subclasses it and supplies them."""

    # -- the primitives ---------------------------------------------------------------------------------

    @abstractmethod
    def _atomic(self) -> AbstractContextManager[Any]:
        """A block whose reads and writes no other writer interleaves with (SQLite), or a plain block in which
        every write is one single-document conditional update (MongoDB)."""

    @abstractmethod
    def _find(self, kind: str, where: Where, order: Iterable[str] = (), limit: int | None = None,
              fields: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The records that match, in `order` (names; `-name`: descending), at most `limit`, only `fields`."""

    @abstractmethod
    def _insert(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Store new records."""

    @abstractmethod
    def _insert_new(self, kind: str, row: dict[str, Any]) -> bool:
        """Store one new record unless one of its unique key is there already; whether it was stored."""

    @abstractmethod
    def _update(self, kind: str, where: Where, change: Change | dict[str, Any],
                now: dt.datetime | None = None) -> int:
        """Write `change` on every matching record, each in one conditional write; how many matched.

        `now`: when a status is written, the time of its change in the change log (MongoDB's).
        """

    @abstractmethod
    def _delete(self, kind: str, where: Where) -> int:
        """Delete the matching records; how many."""

    @abstractmethod
    def _tally(self, bulk_id: str) -> dict[str, tuple[int, float | None]]:
        """A job's items by status: how many, and the mean seconds from `started_at` to `completed_at`."""

    @abstractmethod
    def _user_lock(self, user: str, now: dt.datetime) -> AbstractContextManager[Any]:
        """Inside `_atomic`: what makes a count of the user's records and the insert it admits one step (SQLite:
        the transaction already; MongoDB: the user's quota lock, design.md "Quotas")."""

    def _first(self, kind: str, where: Where, order: Iterable[str] = (),
               fields: Iterable[str] | None = None) -> dict[str, Any] | None:
        found = self._find(kind, where, order, 1, fields)
        return found[0] if found else None

    def _get(self, kind: str, where: Where, order: Iterable[str] = ()) -> Any:
        found = self._first(kind, where, order)
        return None if found is None else read(kind, found)

    def _all(self, kind: str, where: Where, order: Iterable[str] = (), limit: int | None = None) -> list[Any]:
        return [read(kind, r) for r in self._find(kind, where, order, limit)]

    # -- submit (design.md, "Quotas") ----------------------------------------------------------------------

    def create_bulk(self, bulk: BulkJob, articles: list[dict[str, Any]],
                    limits: rules.Quota | None = None) -> tuple[BulkJob, bool]:
        # One transaction (SQLite): the key's lookup, the usage read and the insert are one step for every
        # writer. MongoDB overrides it: no transaction, so it reserves the key and writes items first.
        with self._atomic():
            if bulk.idempotency_key is not None:
                existing = self._get("bulks", {"userId": bulk.userId, "idempotency_key": bulk.idempotency_key})
                if existing is not None:
                    return existing, False
            with nullcontext() if limits is None else self._user_lock(bulk.userId, bulk.created_at):
                self._admit(bulk, limits)
                self._insert("bulks", [rules.new_bulk(bulk)])
                self._insert("items", [rules.new_item(bulk, article, n) for n, article in enumerate(articles, 1)])
        return bulk, True

    def _admit(self, bulk: BulkJob, limits: rules.Quota | None) -> None:
        """Raise QuotaExceeded when the user's usage refuses `bulk` (`rules.over_quota`); under `_user_lock`."""
        if limits is not None:
            usage = self.usage(bulk.userId)
            refused = rules.over_quota(limits, usage.active_jobs, usage.stored_bytes, bulk.stored_bytes)
            if refused is not None:
                raise refused

    # -- reads ------------------------------------------------------------------------------------------

    def get_bulk(self, bulk_id: str) -> BulkJob | None:
        return self._get("bulks", {"id": bulk_id})  # type: ignore[no-any-return]

    def list_bulks(self, user: str | None = None, limit: int = 50, statuses: Iterable[BulkStatus] | None = None,
                   group_id: str | None = None) -> list[BulkJob]:
        where: dict[str, Any] = {}
        if group_id is not None:
            where["group_id"] = group_id
        if user is not None:
            where["userId"] = user
        if statuses is not None:
            where["status"] = tuple(BulkStatus(s).value for s in statuses)
        return self._all("bulks", where, ["-" + name for name in rules.NEWEST_FIRST], limit)

    def list_items(self, bulk_id: str) -> list[Item]:
        return self._all("items", {"bulk_job_id": bulk_id}, [rules.ITEM_ORDER])

    def get_item(self, item_id: str) -> Item | None:
        return self._get("items", {"id": item_id})  # type: ignore[no-any-return]

    def find_items(self, prefix: str, user: str | None, limit: int) -> list[Item]:
        low, high = rules.prefix_bounds(prefix)  # one range of the id's index, never a scan
        where: dict[str, Any] = {"id": [Cmp("gte", low)] + ([] if high is None else [Cmp("lt", high)])}
        if user is not None:
            where["userId"] = user
        return self._all("items", where, ["id"], limit)

    def item_neighbours(self, item_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        out = {}
        for item_id in item_ids:  # two lookups on the id's index each
            below = self._first("items", {"id": Cmp("lt", item_id)}, ["-id"], ["id"])
            above = self._first("items", {"id": Cmp("gt", item_id)}, ["id"], ["id"])
            out[item_id] = (None if below is None else below["id"], None if above is None else above["id"])
        return out

    def completed_contents(self, bulk_id: str) -> list[tuple[str, int, Any]]:
        rows = self._find("items", {"bulk_job_id": bulk_id, "status": ItemStatus.completed.value},
                          [rules.ITEM_ORDER], fields=["id", "queue_position", "result"])
        return [(r["id"], r["queue_position"], (r.get("result") or {}).get("content")) for r in rows]

    def item_counts(self, bulk_id: str) -> Counts:
        return rules.tally(self._tally(bulk_id))[0]

    def is_held(self, item_id: str, owner: str) -> bool:
        return self._first("items", {"id": item_id, **rules.held(owner)}, fields=["id"]) is not None

    def in_flight(self) -> list[Item]:
        return self._all("items", {"status": ItemStatus.processing.value})

    def next_start(self, now: dt.datetime) -> dt.datetime | None:
        claimable = tuple(s.value for s in rules.CLAIMABLE)
        found = self._first("bulks", {"status": claimable, "not_before": Cmp("gt", now)}, ["not_before"],
                            ["not_before"])
        return None if found is None else found["not_before"]  # type: ignore[no-any-return]

    def next_lease_expiry(self) -> dt.datetime | None:
        found = self._first("items", {"status": ItemStatus.processing.value}, ["lease_expires_at"],
                            ["lease_expires_at"])
        return None if found is None else found.get("lease_expires_at")

    # -- the processor's verbs --------------------------------------------------------------------------

    def _write_where(self, item_id: str, condition: dict[str, Any], change: Change,
                     now: dt.datetime | None = None) -> bool:
        return self._update("items", {"id": item_id, **condition}, change, now) == 1

    def finish_item(self, item_id: str, owner: str, outcome: Any, now: dt.datetime,
                    seconds_between_items: float = 0.0, fence: int | None = None) -> Any:
        # SQLite: one transaction, the item's end, the counters and the job's end (design.md, "Counters").
        with self._atomic():
            return super().finish_item(item_id, owner, outcome, now, seconds_between_items, fence)

    def heartbeat(self, item_id: str, owner: str, lease_seconds: float, now: dt.datetime,
                  sent: bool = False) -> bool:
        # Slot first: the item's lease is extended only while the slot is still `owner`'s (design.md, "Fencing").
        expires = later(now, lease_seconds)
        with self._atomic():
            if not self._update("leases", {"owner": owner, **SLOTS}, {"expires_at": expires}):
                return False
            return self._write_where(item_id, rules.held(owner), rules.renewed(expires, now, sent))

    def requeue_expired(self, now: dt.datetime, max_attempts: int) -> list[str]:
        touched: set[str] = set()
        expired = {"status": ItemStatus.processing.value, "lease_expires_at": Cmp("lt", now)}
        with self._atomic():
            for doc in self._find("items", expired, fields=["id", "bulk_job_id", "attempts", "fence", "sent_at"]):
                bulk = self._first("bulks", {"id": doc["bulk_job_id"]}, fields=["status"])
                change = rules.expired(None if bulk is None else bulk["status"], doc.get("attempts") or 0,
                                       max_attempts, now, sent=doc.get("sent_at") is not None)
                # Conditional on everything the decision read from the item: its lease still expired (a late
                # heartbeat wins), the same claim, try and send
                # (design.md, "Every MongoDB decision in one conditional write").
                as_read = {"id": doc["id"], **expired, "fence": doc.get("fence"),
                           "attempts": doc.get("attempts") or 0, "sent_at": doc.get("sent_at")}
                if self._update("items", as_read, change, now):
                    touched.add(doc["bulk_job_id"])
                    self._cancelled_since(doc, now)
        return sorted(touched)

    def _cancelled_since(self, doc: dict[str, Any], now: dt.datetime) -> None:
        """The job of an item just queued again, read after the write: cancelled meanwhile, the item is swept
        as the cancel's own sweep would have (it may have swept before the item was queued)."""
        bulk = self._first("bulks", {"id": doc["bulk_job_id"]}, fields=["status"])
        if bulk is None or bulk["status"] != BulkStatus.cancelled.value:
            return
        status, change = rules.cancel_sweeps(now)[0]  # the queued sweep; a new claim would carry a new fence
        self._update("items", {"id": doc["id"], "status": status.value, "fence": doc.get("fence")}, change, now)

    def _claim_blocked(self, owner: str, max_in_flight: int) -> bool:
        """Whether a claim stops before it looks: `owner` holds an item already (one per owner, even one whose
        slot it gave up), or `max_in_flight` items are in flight."""
        processing = ItemStatus.processing.value
        if self._first("items", {"status": processing, "lease_owner": owner}, fields=["id"]) is not None:
            return True
        return len(self._find("items", {"status": processing}, limit=max_in_flight, fields=["id"])) >= max_in_flight

    def _start_job(self, bulk_id: str, now: dt.datetime) -> None:
        """A claim starts its job (`rules.job_started`): each step one conditional write."""
        for condition, fields in rules.job_started(now):
            self._update("bulks", {"id": bulk_id, **condition}, fields, now)

    # -- counters (design.md, "Counters") --------------------------------------------------------------

    def _derived(self, bulk_id: str, now: dt.datetime, seconds_between_items: float) -> tuple[Counts, dict[str, Any]]:
        """A job's counts and derived fields, from its items as they are now (`rules.counters`)."""
        counts, mean = rules.tally(self._tally(bulk_id))
        failed = [] if not counts.failed else self._all(
            "items", {"bulk_job_id": bulk_id, "status": ItemStatus.failed.value}, [rules.ITEM_ORDER])
        status, verdict = rules.FLAGGED_ITEM
        flagged = [] if not counts.completed else [(r["queue_position"], r["verdict"]) for r in self._find(
            "items", {"bulk_job_id": bulk_id, "status": status.value, "verdict.status": verdict.value},
            [rules.ITEM_ORDER], fields=["queue_position", "verdict"])]
        return counts, rules.counters(counts, failed, mean, now, seconds_between_items, flagged)

    def refresh_counters(self, bulk_id: str, now: dt.datetime, seconds_between_items: float = 0.0) -> Counts:
        # One transaction (SQLite): the count, the counters and the end. MongoDB overrides it: without one, its
        # write is a compare-and-set on `refresh_seq` (design.md, "Counters").
        with self._atomic():
            counts, fields = self._derived(bulk_id, now, seconds_between_items)
            self._update("bulks", {"id": bulk_id}, fields, now)
            ended = counts.pending == 0 and self._end(bulk_id, EventKind.completed, now)
        return dataclasses.replace(counts, ended_now=ended)

    # -- single items (design.md, "Item state rules") -----------------------------------------------------

    def cancel_item(self, item_id: str, from_status: ItemStatus, now: dt.datetime) -> Counts | None:
        with self._atomic():
            item = self._first("items", {"id": item_id, "status": from_status.value}, fields=["bulk_job_id"])
            if item is None or not self._update("items", {"id": item_id, "status": from_status.value},
                                                rules.item_cancelled(from_status, now), now):
                return None
            # Item first, then the job derived from its items (SQLite: in the same transaction). A crash between
            # (MongoDB) leaves the counters behind, which the same command repeated, or any later refresh, sets right.
            return self.refresh_counters(item["bulk_job_id"], now)

    def retry_item(self, item_id: str, from_status: ItemStatus, now: dt.datetime) -> Counts | None:
        with self._atomic():
            before = self._first("items", {"id": item_id, "status": from_status.value})
            bulk = None if before is None else self._first("bulks", {"id": before["bulk_job_id"]},
                                                           fields=["status", "outbox"])
            if before is None or bulk is None or not rules.retry_item_allowed(bulk["status"], bulk.get("outbox")):
                return None
            # Item first: a completed job's queued item is not claimable, so nothing starts before the job is queued.
            if from_status is not ItemStatus.queued and not self._update(
                    "items", {"id": item_id, "status": from_status.value}, rules.RETRIED_ITEM, now):
                return None
            return self._reopen(before, now)

    def _reopen(self, before: dict[str, Any], now: dt.datetime) -> Counts | None:
        """The job of an item just queued again: queued again if it has ended (design.md, "Item state rules").

        The first refresh (MongoDB: its compare-and-set on `refresh_seq`) fences off any refresh that counted
        before the item was queued: such a one can no longer record an end. An end that it did record before
        is seen in the second round: the job is queued again, or, while that end's notification is open, the
        retry is undone (None). So is one whose job was cancelled (and its items swept) after the retry's
        check: cancel is final. (SQLite: one transaction, so the second round finds what the first left.)
        """
        bulk_id, counts = before["bulk_job_id"], None
        for _ in range(2):
            bulk = self._first("bulks", {"id": bulk_id}, fields=["status", "outbox"])
            queued = self._first("items", {"id": before["id"], "status": ItemStatus.queued.value}, fields=["id"])
            if bulk is not None and queued is not None and not rules.retry_item_allowed(bulk["status"],
                                                                                       bulk.get("outbox")):
                self._undo_retry(before, bulk_id, now)
                return None
            if bulk is not None and bulk["status"] == rules.RETRY_FROM.value and queued is not None:
                event_id = (bulk.get("outbox") or {}).get("event_id")
                self._update("bulks", {"id": bulk_id, "status": rules.RETRY_FROM.value, "outbox.event_id": event_id},
                             rules.RETRIED_JOB, now)
            counts = self.refresh_counters(bulk_id, now)
        return counts

    def _undo_retry(self, before: dict[str, Any], bulk_id: str, now: dt.datetime) -> None:
        """Put an item that item retry queued back as it was (`before`), unless it has been claimed since."""
        if before["status"] != ItemStatus.queued.value:
            self._update("items", {"id": before["id"], "status": ItemStatus.queued.value, "attempts": 0},
                         rules.retry_undone(before), now)
        self.refresh_counters(bulk_id, now)

    # -- a job's state ----------------------------------------------------------------------------------

    def set_bulk_state(self, bulk_id: str, allowed_from: Iterable[BulkStatus], to: BulkStatus,
                       now: dt.datetime) -> bool:
        allowed = tuple(BulkStatus(s).value for s in allowed_from)
        return self._update("bulks", {"id": bulk_id, "status": allowed}, {"status": BulkStatus(to).value}, now) == 1

    def cancel_bulk(self, bulk_id: str, now: dt.datetime) -> bool:
        with self._atomic():
            changed = self._end(bulk_id, EventKind.cancelled, now)
            bulk = self._first("bulks", {"id": bulk_id}, fields=["status"])
            if bulk is not None and bulk["status"] == BulkStatus.cancelled.value:
                # The job is cancelled first, so no claim can start meanwhile; the sweeps are idempotent, and a
                # repeated cancel finishes them.
                for status, change in rules.cancel_sweeps(now):
                    self._update("items", {"bulk_job_id": bulk_id, "status": status.value}, change, now)
        return changed

    def _end(self, bulk_id: str, kind: EventKind, now: dt.datetime, where: dict[str, Any] | None = None) -> bool:
        """Record the job's end and its outbox in one conditional write (also meeting `where`); True if this
        call did."""
        bulk = self._first("bulks", {"id": bulk_id}, fields=["notify"])
        if bulk is None:
            return False
        ends_from = tuple(s.value for s in rules.ENDS_FROM)
        fields = rules.end_fields(kind, list(bulk.get("notify") or []), now)
        return self._update("bulks", {"id": bulk_id, "status": ends_from, **(where or {})}, fields, now) == 1

    def retry_failed(self, bulk_id: str, now: dt.datetime) -> int:
        with self._atomic():
            bulk = self._first("bulks", {"id": bulk_id}, fields=["status", "outbox"])
            if bulk is None or not rules.retry_failed_allowed(bulk["status"], bulk.get("outbox")):
                return 0
            # Items first: a completed job's queued items are not claimable, so nothing starts before the job
            # itself is queued again.
            requeued = self._update("items", {"bulk_job_id": bulk_id, "status": rules.RETRIED.value},
                                    rules.RETRIED_ITEM, now)
            # None queued by this call: items left queued in the completed job are a retry that died half-way
            # (MongoDB), finished here and counted.
            if not requeued:
                requeued = len(self._find("items", {"bulk_job_id": bulk_id, "status": ItemStatus.queued.value},
                                          fields=["id"]))
            if not requeued:
                return 0
            # The decision's condition, in the job's own write: still the end that was read
            # (design.md, "Every MongoDB decision in one conditional write"). A round that started and ended
            # meanwhile has a new end, maybe with its notification still open: then these items stay queued in a
            # completed job, never claimed, until the repair queues the job once that end is delivered
            # (design.md, "Repair").
            event_id = (bulk.get("outbox") or {}).get("event_id")
            if self._update("bulks", {"id": bulk_id, "status": rules.RETRY_FROM.value, "outbox.event_id": event_id},
                            rules.RETRIED_JOB, now):
                return requeued
            current = self._first("bulks", {"id": bulk_id}, fields=["status"]) or {}
            return requeued if current.get("status") in [s.value for s in rules.ENDS_FROM] else 0  # a round under way

    # -- the notification outbox (design.md, "The outbox and at-least-once delivery") -----------------

    def set_event(self, bulk_id: str, event_id: str, event: dict[str, Any]) -> bool:
        with self._atomic():
            return self._update("bulks", {"id": bulk_id, "outbox.event_id": event_id, "outbox.event": None},
                                {"outbox.event": event}) == 1

    def claim_step(self, bulk_id: str, event_id: str, index: int, owner: str, now: dt.datetime,
                   lock_seconds: float) -> bool:
        step = step_field(index)
        where = [{"id": bulk_id, "outbox.event_id": event_id, **alt}
                 for alt in rules.alternatives(rules.step_claim_conditions(now), step)]
        fields = {step + k: v for k, v in rules.step_taken(owner, now, lock_seconds).items()}
        with self._atomic():
            return self._update("bulks", where, fields) == 1

    def finish_step(self, bulk_id: str, event_id: str, index: int, owner: str, now: dt.datetime,
                    error: str | None, retry_at: dt.datetime | None) -> bool:
        step = step_field(index)
        with self._atomic():
            bulk = self._first("bulks", {"id": bulk_id, "outbox.event_id": event_id}, fields=["outbox"])
            if bulk is None:
                return False
            fields = rules.step_result(bulk["outbox"]["steps"][index], now, error, retry_at)
            where = [{"id": bulk_id, "outbox.event_id": event_id, **alt}
                     for alt in rules.alternatives(rules.step_held_conditions(owner), step)]
            if not self._update("bulks", where, {step + k: v for k, v in fields.items()}):
                return False
            # Whether anything is left to deliver, read after the write: two deliverers finishing at once both
            # see the final steps (open_outboxes heals the rest).
            outbox = (self._first("bulks", {"id": bulk_id}, fields=["outbox"]) or {}).get("outbox")
            self._update("bulks", {"id": bulk_id, "outbox.event_id": event_id}, rules.delivery_flags(outbox, now))
            return True

    def open_outboxes(self) -> list[BulkJob]:
        jobs: list[BulkJob] = self._all("bulks", {"notify_pending": True})
        for job in jobs:
            if not outbox_open(job.outbox):  # a flag left behind by two finishing deliverers
                event = {"outbox.event_id": job.outbox["event_id"]} if job.outbox else {}
                self._update("bulks", {"id": job.id, **event}, {"notify_pending": False})
        return [j for j in jobs if outbox_open(j.outbox)]

    def claim_hook(self, bulk_id: str, event_id: str) -> bool:
        return self._update("bulks", {"id": bulk_id, "outbox.event_id": event_id, "hook_pending": True},
                            {"hook_pending": False}) == 1

    def pending_hooks(self, since: dt.datetime) -> list[BulkJob]:
        return self._all("bulks", {"hook_pending": True, "completed_at": Cmp("gte", since)})

    # -- the processor lease ----------------------------------------------------------------------------

    def acquire_processor_lease(self, owner: str, seconds: float, now: dt.datetime, host: str, pid: int,
                                slots: int = 1) -> bool:
        expires = later(now, seconds)
        with self._atomic():
            if self._update("leases", {"owner": owner, **SLOTS}, {"expires_at": expires}):
                return True
            slot = rules.new_slot(owner, expires, now, host, pid)
            for name in slot_names(slots):
                # An expired slot is taken by a conditional write; a missing one by an insert of its unique name.
                if self._update("leases", {"name": name, "expires_at": Cmp("lt", now)}, slot) or \
                        self._insert_new("leases", {"name": name, **slot}):
                    return True
            return False

    def release_processor_lease(self, owner: str) -> None:
        # MongoDB overrides it: a slot whose item is still in flight keeps saying so ("The fenced MongoDB claim").
        self._delete("leases", {"owner": owner})

    def cooldown_until(self) -> dt.datetime | None:
        found = self._first("leases", {"name": COOLDOWN}, fields=["expires_at"])
        return None if found is None else found["expires_at"]  # type: ignore[no-any-return]

    def processor_leases(self) -> list[Lease]:
        return self._all("leases", SLOTS)

    def processor_lease(self) -> Lease | None:
        return self._get("leases", {"name": PROCESSOR_LEASE})  # type: ignore[no-any-return]

    # -- saved templates (design.md, "Saved templates") -------------------------------------------------

    def save_template(self, template: SavedTemplate, replace: bool = False, max_count: int = 0) -> SaveOutcome:
        key = {"userId": template.userId, "name": template.name}
        with self._atomic(), self._user_lock(template.userId, template.updated_at) if max_count else nullcontext():
            if max_count and self._first("templates", key, fields=["name"]) is None:
                have = len(self._find("templates", {"userId": template.userId}, fields=["name"]))
                refused = rules.over_count("templates", have, max_count)
                if refused is not None:
                    raise refused
            for _ in range(2):  # a new name; else the one stored, replaced (each one conditional write)
                if self._insert_new("templates", rules.template_fields(template)):
                    return SaveOutcome.created
                if not replace:
                    return SaveOutcome.exists
                if self._update("templates", key, rules.template_replacement(template)):
                    return SaveOutcome.replaced
        raise StoreUnavailable(f"could not save template {template.name!r}; try again.")

    def get_template(self, user: str, name: str) -> SavedTemplate | None:
        return self._get("templates", {"userId": user, "name": name})  # type: ignore[no-any-return]

    def list_templates(self, user: str) -> list[SavedTemplate]:
        return self._all("templates", {"userId": user}, ["name"])

    def remove_template(self, user: str, name: str) -> bool:
        with self._atomic():
            return self._delete("templates", {"userId": user, "name": name}) == 1

    # -- recurring schedules (design.md, "Recurring schedules") -----------------------------------------
    #
    # A schedule is one record; an occurrence is one record whose unique key is (schedule id, time in UTC):
    # the insert that claims it is the one write that can succeed once (design.md, "Exactly once per occurrence").

    def add_schedule(self, schedule: Schedule, max_count: int = 0) -> bool:
        with self._atomic(), self._user_lock(schedule.userId, schedule.created_at) if max_count else nullcontext():
            if max_count:
                have = len(self._find("schedules", {"userId": schedule.userId}, fields=["id"]))
                refused = rules.over_count("schedules", have, max_count)
                if refused is not None:
                    raise refused
            # False (nothing stored) when the user has a schedule of that name (a unique index).
            return self._insert_new("schedules", rules.new_schedule(schedule))

    def get_schedule(self, user: str, name: str) -> Schedule | None:
        return self._get("schedules", {"userId": user, "name": name})  # type: ignore[no-any-return]

    def list_schedules(self, user: str | None = None) -> list[Schedule]:
        return self._all("schedules", {} if user is None else {"userId": user}, rules.SCHEDULE_ORDER)

    def set_schedule_state(self, schedule_id: str, allowed_from: ScheduleStatus, to: ScheduleStatus,
                           fields: dict[str, Any]) -> bool:
        with self._atomic():
            return self._update("schedules", {"id": schedule_id, "status": allowed_from.value},
                                {**fields, "status": to.value}) == 1

    def remove_schedule(self, schedule_id: str) -> bool:
        with self._atomic():
            # The schedule first: once it is gone no processor finds it due; then its history.
            removed = self._delete("schedules", {"id": schedule_id}) == 1
            self._delete("occurrences", {"schedule_id": schedule_id})
            return removed

    def due_schedules(self, now: dt.datetime) -> list[Schedule]:
        return self._all("schedules", {"status": ScheduleStatus.active.value, "next_at": Cmp("lte", now)},
                         ["next_at"])

    def next_schedule_at(self) -> dt.datetime | None:
        found = self._first("schedules", {"status": ScheduleStatus.active.value, "next_at": Cmp("ne", None)},
                            ["next_at"], ["next_at"])
        return None if found is None else found["next_at"]  # type: ignore[no-any-return]

    def claim_occurrence(self, schedule: Schedule, at: dt.datetime, owner: str, now: dt.datetime,
                         stale_before: dt.datetime, skipped: int = 0) -> tuple[Occurrence, bool]:
        key = {"schedule_id": schedule.id, "at": at}
        fields = rules.claimed_occurrence(schedule, at, owner, now, skipped)
        with self._atomic():
            # The unique key lets one insert win; a stale claim (its processor died or stalled) is taken over
            # by one conditional write.
            if self._insert_new("occurrences", fields):
                return read("occurrences", fields), True
            mine = self._update("occurrences", {**key, "state": OccurrenceState.claimed.value,
                                                "claimed_at": Cmp("lt", stale_before)},
                                rules.taken_over(owner, now)) == 1
            current = self._first("occurrences", key)
        return read("occurrences", current if current is not None else fields), mine

    def get_occurrence(self, schedule_id: str, at: dt.datetime) -> Occurrence | None:
        return self._get("occurrences", {"schedule_id": schedule_id, "at": at})  # type: ignore[no-any-return]

    def finish_occurrence(self, held: Occurrence, fields: dict[str, Any]) -> bool:
        with self._atomic():
            return self._update("occurrences", {"schedule_id": held.schedule_id, "at": held.at,
                                                "state": OccurrenceState.claimed.value, "owner": held.owner,
                                                "claim": held.claim}, fields) == 1

    def drop_undecided(self, schedule_id: str, before: dt.datetime, fields: dict[str, Any]) -> int:
        # Each record's write is conditional on its own state: no transaction is needed.
        with self._atomic():
            return self._update("occurrences", {"schedule_id": schedule_id, "at": Cmp("lt", before),
                                                "state": OccurrenceState.claimed.value}, fields)

    def advance_schedule(self, schedule_id: str, expected_next: dt.datetime, expected_last: dt.datetime | None,
                         fields: dict[str, Any]) -> bool:
        with self._atomic():
            return self._update("schedules", {"id": schedule_id, "status": ScheduleStatus.active.value,
                                              "next_at": expected_next, "last_at": expected_last}, fields) == 1

    def set_last_run(self, schedule_id: str, at: dt.datetime, fields: dict[str, Any]) -> bool:
        with self._atomic():
            return self._update("schedules", {"id": schedule_id, "last_at": at}, fields) == 1

    def list_occurrences(self, schedule_id: str, limit: int = 20) -> list[Occurrence]:
        return self._all("occurrences", {"schedule_id": schedule_id}, ["-at"], limit)

    # -- API tokens (design.md, "Live progress") --------------------------------------------------------

    def add_token(self, token: ApiToken) -> None:
        with self._atomic():
            self._insert("tokens", [{f.name: getattr(token, f.name) for f in rules.TOKEN_FIELDS}])

    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        return self._get("tokens", {"token_hash": token_hash, "revoked_at": None})  # type: ignore[no-any-return]

    def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        return self._all("tokens", {} if user is None else {"userId": user}, ["created_at", "id"])

    def revoke_token(self, token_id: str, now: dt.datetime) -> bool:
        with self._atomic():
            return self._update("tokens", {"id": token_id, "revoked_at": None}, {"revoked_at": now}) == 1

    def changes_since(self, after: int, limit: int = 500, user: str | None = None, bulk_id: str | None = None,
                      now: dt.datetime | None = None) -> list[Any]:
        # `now`: where the re-read window ends (`change_lag`); a caller without a clock of its own gets the wall's.
        return self._changes_since(after, limit, user, bulk_id, utcnow() if now is None else now)

    @abstractmethod
    def _changes_since(self, after: int, limit: int, user: str | None, bulk_id: str | None,
                       now: dt.datetime) -> list[Any]:
        """`changes_since`: reading the change log is the backend's (SQLite's is a table its triggers write in
        commit order; MongoDB's is each record's own short history, numbered before the write)."""
