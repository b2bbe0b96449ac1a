"""The shared store: MongoDB, with the collections and field names of design.md, "Data".

Races resolve in the database: claims are `find_one_and_update` on an indexed
filter and sort, state changes are conditional updates. No multi-document
transaction is used (a single mongod has none): `create_bulk` writes the items
before the bulk job that makes them claimable, and counters are rewritten
under a compare-and-set sequence number so a slow writer never leaves stale
counts behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from bulkgen_cli.core.errors import NoStore, QuotaExceeded, StoreFull, StoreReadOnly, StoreUnavailable
from bulkgen_cli.core.model import (
    ARTICLE_FIELDS, CLAIMABLE_BULK, BulkJob, BulkStatus, ChangeKind, Counts, EventKind, Item, ItemStatus, Outcome,
    PENDING_ITEM, StateChange, later,
)
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import COOLDOWN, OpenMode, Usage
from bulkgen_cli.store.queue import Queue, _same, read
from bulkgen_cli.store.rules import CHANGE_FIELDS, Change, Cmp, Where, record

BULK_JOBS = "bulk_jobs"
GENERATION_JOBS = "generation_jobs"
LEASES = "processor_leases"
IDEMPOTENCY = "bulk_idempotency_keys"
#: One document per user while a submit with limits checks and stores (design.md, "Quotas").
QUOTA_LOCKS = "bulk_quota_locks"
#: A quota lock older than this is a dead submitter's: taken over.
QUOTA_LEASE = dt.timedelta(seconds=60)
TOKENS = "api_tokens"
#: The counter document of the change sequence, in META (design.md, "Live progress").
CHANGES = "changes"
#: The highest change number pruning may have dropped (Store.changes_floor).
CHANGES_FLOOR = "changes_floor"
#: A change's number is taken before its write: a write may land this many seconds after (a re-read window).
CHANGE_LAG = 10.0
META = "bulkgen_meta"
TEMPLATES = "templates"
SCHEDULES = "schedules"
OCCURRENCES = "schedule_occurrences"
#: The data model's version (rules.SCHEMA_VERSION): below it, `_ensure_indexes` runs again (it is idempotent).
SCHEMA_VERSION = rules.SCHEMA_VERSION
#: The counter document of the fencing tokens, in META.
FENCE = "fence"
#: How many candidates one claim tries before it reports nothing claimable.
CLAIM_TRIES = 5
#: An idempotency claim whose bulk job never appeared is taken over after this.
STALE_CLAIM = dt.timedelta(minutes=2)
#: The file's own item id is stored as `item_id`: `id` reads too much like `_id`.
ITEM_ID_FIELD = "item_id"
#: MongoDB's error codes for a user who may not do that, and for a full disk.
UNAUTHORIZED = 13
OUT_OF_DISK_SPACE = 14031

T = TypeVar("T")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _oid(value: str) -> ObjectId | None:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


def _below(fence: int) -> dict[str, Any]:
    """A filter: the document's fence is lower than `fence`, or it has none."""
    return {"$or": [{"fence": None}, {"fence": {"$lt": fence}}]}


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """pymongo hands back aware datetimes with tz_aware=True; be sure of it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.timezone.utc)


# -- the rules' records and changes, as MongoDB stores them ------------------------------------------


#: Each kind of record (queue.MODELS, and the store's attribute holding its collection): the field stored as
#: `_id`, and the fields held as ObjectIds.
KINDS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "bulks": ("id", ("id",)),
    "items": ("id", ("id", "bulk_job_id")),
    "leases": ("name", ()),
    "templates": (None, ()),
    "schedules": ("id", ("id",)),
    "occurrences": (None, ("schedule_id",)),
    "tokens": ("id", ()),
}
#: A value no record holds: a filter on an id that is no ObjectId matches nothing.
_NONE = object()


def _decode(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A document's values as the queue reads them: `_id` under its field's name, ids as text, aware times,
    an item's article gathered from its top-level fields."""
    key, oids = KINDS[kind]
    values = {k: _aware(v) if isinstance(v, dt.datetime) else v for k, v in doc.items()}
    oid = values.pop("_id", None)
    if key is not None:
        values[key] = oid
    for name in oids:
        if values.get(name) is not None:
            values[name] = str(values[name])
    if kind == "items":
        article = {k: doc[k] for k in ARTICLE_FIELDS if k in doc and k != "id"}
        if ITEM_ID_FIELD in doc:
            article["id"] = doc[ITEM_ID_FIELD]
        values["article"] = article
    return values


def _doc(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A new record's document: its key as `_id`, ids as ObjectIds, an item's article as top-level fields, an
    occurrence under its unique key (design.md, "Exactly once per occurrence")."""
    key, oids = KINDS[kind]
    doc = {k: ObjectId(v) if k in oids and v is not None else v for k, v in fields.items()}
    if key is not None:
        doc["_id"] = doc.pop(key)
    if kind == "occurrences":
        doc["_id"] = rules.occurrence_id(fields["schedule_id"], fields["at"])
    article = doc.pop("article", None)
    if article is not None:
        doc = {**{k: v for k, v in article.items() if k != "id"}, **doc}
        if "id" in article:
            doc[ITEM_ID_FIELD] = article["id"]
    return doc


def _value(value: Any, oid: bool) -> Any:
    if not oid or value is None or isinstance(value, ObjectId):
        return value
    return _oid(value) or _NONE


def _condition(wanted: Any, oid: bool) -> Any:
    """One field's filter from a `rules.Where` value (_NONE: nothing can match)."""
    if isinstance(wanted, list):
        parts = {f"${c.op}": _value(c.value, oid) for c in wanted}
        return _NONE if _NONE in parts.values() else parts
    if isinstance(wanted, Cmp):
        value = _value(wanted.value, oid)
        return _NONE if value is _NONE else {f"${wanted.op}": value}
    if isinstance(wanted, tuple):
        return {"$in": [v for v in (_value(x, oid) for x in wanted) if v is not _NONE]}
    return _value(wanted, oid)


def _filter(kind: str, where: Where) -> dict[str, Any] | None:
    """A filter from a `rules.Where`, or None when nothing can match (an id that is no ObjectId)."""
    if isinstance(where, list):
        alternatives = [f for f in (_filter(kind, alt) for alt in where) if f is not None]
        return None if not alternatives else alternatives[0] if len(alternatives) == 1 else {"$or": alternatives}
    key, oids = KINDS[kind]
    out = {}
    for name, wanted in where.items():
        condition = _condition(wanted, name in oids)
        if condition is _NONE:
            return None
        out["_id" if name == key else name] = condition
    return out


def _update(change: Change | dict[str, Any]) -> dict[str, Any]:
    """An update document: `$set` and `$inc`."""
    if not isinstance(change, Change):
        change = Change(change)
    update = {"$set": dict(change.set), "$inc": dict(change.add)}
    return {op: fields for op, fields in update.items() if fields}


def _order(names: Iterable[str], direction: int = ASCENDING, key: str | None = "id") -> list[tuple[str, int]]:
    """A sort: each name ascending (`-name`: the other way), the key field as `_id`."""
    out = []
    for name in names:
        way = -direction if name.startswith("-") else direction
        name = name.lstrip("-")
        out.append(("_id" if name == key else name, way))
    return out


def _unavailable(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: MongoStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except PyMongoError as exc:
            raise self._error(exc, f"MongoDB store {self.display_url}") from exc

    return wrapper


class MongoStore(Queue):
    def __init__(self, client: Any, db_name: str = "bulkgen", display_url: str = "mongodb://",
                 mode: OpenMode = "create"):
        self.client = client
        self.display_url = mask_url(display_url)
        self.mode = mode
        self._password = urlsplit(display_url).password
        self.db = db = client[db_name]
        self.bulks = db[BULK_JOBS]
        self.items = db[GENERATION_JOBS]
        self.leases = db[LEASES]
        self.keys = db[IDEMPOTENCY]
        self.quota_locks = db[QUOTA_LOCKS]
        #: how long a submit with limits waits for another of the same user's to end (seconds)
        self.quota_wait = 10.0
        self.meta = db[META]
        self.templates = db[TEMPLATES]
        self.schedules = db[SCHEDULES]
        self.occurrences = db[OCCURRENCES]
        self.tokens = db[TOKENS]
        try:
            marker = self.meta.find_one({"_id": "schema"})
            if mode != "create" and marker is None and BULK_JOBS not in db.list_collection_names():
                client.close()
                raise NoStore(f"no store at {self.display_url}: the database holds no bulk jobs",
                              cli="; `bulkgen submit FILE` creates one (or check --store / BULKGEN_STORE).", http=".")
            if mode != "read":  # a reading command never creates indexes or writes the marker
                self._ensure_indexes(marker)
        except PyMongoError as exc:
            client.close()
            raise self._error(exc, f"cannot reach the MongoDB store {self.display_url}") from exc

    @classmethod
    def from_url(cls, url: str, timeout_ms: int = 5000, mode: OpenMode = "create") -> MongoStore:
        try:
            # A serverSelectionTimeoutMS in the URL wins over the default.
            options: dict[str, Any] = {} if "serverselectiontimeoutms" in url.lower() else {
                "serverSelectionTimeoutMS": timeout_ms}
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                url, tz_aware=True, appname="bulkgen", **options
            )
            db_name = client.get_default_database("bulkgen").name
        except (PyMongoError, ValueError) as exc:
            raise StoreUnavailable(f"bad MongoDB store URL {mask_url(url)}: {exc}") from exc
        return cls(client, db_name, url, mode)

    def _error(self, exc: PyMongoError, context: str) -> StoreUnavailable:
        """The StoreUnavailable for a driver error: refused writes and a full disk said plainly."""
        code = exc.code if isinstance(exc, OperationFailure) else None
        if isinstance(exc, (ServerSelectionTimeoutError, ConnectionFailure)) and not isinstance(exc, OperationFailure):
            return StoreUnavailable(self._unreachable())
        detail = self._scrub(str(exc))
        if code == UNAUTHORIZED and self.mode != "read":
            return StoreReadOnly(f"the store at {self.display_url} is read-only for this user "
                                 f"(MongoDB refused: {detail}).")
        if code == OUT_OF_DISK_SPACE:
            return StoreFull(f"the disk holding the store at {self.display_url} is full (MongoDB: {detail}).")
        return StoreUnavailable(f"{context}: {detail}")

    def _unreachable(self) -> str:
        """One sentence for a server that does not answer: which host, how long, what to check."""
        try:
            hosts = ", ".join(f"{h}:{p}" for h, p in sorted(self.client.topology_description.server_descriptions()))
            timeout = float(self.client.options.server_selection_timeout)
        except (AttributeError, TypeError):  # a client without pymongo's topology (a test double)
            hosts, timeout = "", 0.0
        within = f" within {timeout:g} s" if timeout else ""
        return (f"the MongoDB store {self.display_url} cannot be reached: no server answered at "
                f"{hosts or 'its hosts'}{within}; check that mongod runs there and that the host, port and "
                "network let this machine reach it.")

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _ensure_indexes(self, marker: dict[str, Any] | None) -> None:
        """Create the indexes once per database, idempotently (`marker`: the schema document)."""
        if marker and marker.get("version", 0) >= SCHEMA_VERSION:
            return
        self.bulks.create_index([("status", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)])
        self.bulks.create_index([("userId", ASCENDING), ("created_at", DESCENDING)])
        self.bulks.create_index([("created_at", DESCENDING)])
        self.bulks.create_index([("userId", ASCENDING), ("idempotency_key", ASCENDING)])
        self.bulks.create_index([("userId", ASCENDING), ("status", ASCENDING), ("stored_bytes", ASCENDING)])
        self.items.create_index(
            [("bulk_job_id", ASCENDING), ("status", ASCENDING), ("queue_position", ASCENDING)]
        )
        self.items.create_index([("status", ASCENDING), ("lease_expires_at", ASCENDING)])
        self.bulks.create_index([("notify_pending", ASCENDING)])
        self.bulks.create_index([("group_id", ASCENDING)])
        # The claim's lookups (design.md, "Fair turns"): urgent jobs oldest first; each user's jobs in turn.
        self.bulks.create_index(
            [("status", ASCENDING), ("priority_rank", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
        )
        self.bulks.create_index([("status", ASCENDING), *_order(rules.TURN_ORDER)])
        self.bulks.create_index([("hook_pending", ASCENDING), ("completed_at", ASCENDING)])
        # One template per user and name: the unique index is what makes a save of a new name atomic.
        self.templates.create_index([("userId", ASCENDING), ("name", ASCENDING)], unique=True)
        self.schedules.create_index([("userId", ASCENDING), ("name", ASCENDING)], unique=True)
        self.schedules.create_index([("status", ASCENDING), ("next_at", ASCENDING)])
        self.occurrences.create_index([("schedule_id", ASCENDING), ("at", DESCENDING)])
        self._ensure_serve_indexes()
        self.meta.update_one(
            {"_id": "schema"}, {"$set": {"version": SCHEMA_VERSION}}, upsert=True
        )

    def close(self) -> None:
        self.client.close()


    # -- the primitives (queue.Queue) ---------------------------------------------------------------------

    def _atomic(self) -> AbstractContextManager[Any]:
        """No multi-document transaction: each write of the block is one conditional write on its own, and the
        queue orders them so that what lies between two is safe (design.md, "The store contract")."""
        return nullcontext()

    def _collection(self, kind: str) -> Any:
        return getattr(self, kind)

    @_unavailable
    def _find(self, kind: str, where: Where, order: Iterable[str] = (), limit: int | None = None,
              fields: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query, key = _filter(kind, where), KINDS[kind][0]
        if query is None:
            return []
        projection = None if fields is None else {"_id" if f == key else f: 1 for f in fields}
        cursor = self._collection(kind).find(query, projection)
        if order:
            cursor = cursor.sort(_order(order, key=key))
        if limit is not None:
            cursor = cursor.limit(limit)
        return [_decode(kind, doc) for doc in cursor]

    @_unavailable
    def _insert(self, kind: str, rows: list[dict[str, Any]]) -> None:
        self._collection(kind).insert_many([_doc(kind, row) for row in rows], ordered=True)

    @_unavailable
    def _insert_new(self, kind: str, row: dict[str, Any]) -> bool:
        try:
            self._collection(kind).insert_one(_doc(kind, row))
        except DuplicateKeyError:  # its unique key (`_id` or a unique index) is taken
            return False
        return True

    @_unavailable
    def _update(self, kind: str, where: Where, change: Change | dict[str, Any],
                now: dt.datetime | None = None) -> int:
        query = _filter(kind, where)
        if query is None:
            return 0
        update = _update(change)
        if kind in ("bulks", "items"):
            update = self._stamp(update, now)
        one = "_id" in query and not isinstance(query["_id"], dict)  # one record named: one document's write
        write = self._collection(kind).update_one if one else self._collection(kind).update_many
        return int(write(query, update).matched_count)

    @_unavailable
    def _tally(self, bulk_id: str) -> dict[str, tuple[int, float | None]]:
        oid = _oid(bulk_id)
        groups = [] if oid is None else self.items.aggregate([
            {"$match": {"bulk_job_id": oid}},
            {"$group": {"_id": "$status", "n": {"$sum": 1},
                        "ms": {"$avg": {"$subtract": ["$completed_at", "$started_at"]}}}}])
        return {g["_id"]: (g["n"], None if g.get("ms") is None else g["ms"] / 1000) for g in groups}

    @contextmanager
    def _user_lock(self, user: str, now: dt.datetime) -> Iterator[None]:
        holder = self._lock_quota(user, now)  # the count and the insert: one step for this user
        try:
            yield
        finally:
            self._unlock_quota(user, holder)

    @_unavailable
    def refresh_counters(self, bulk_id: str, now: dt.datetime, seconds_between_items: float = 0.0) -> Counts:
        # Not one transaction: the counters are rewritten under a compare-and-set on `refresh_seq`, so a slow
        # refresh that counted before a later one never leaves stale counts (or an end) behind (design.md,
        # "Every MongoDB decision in one conditional write").
        for _ in range(50):
            bulk = self._first("bulks", {"id": bulk_id}, fields=["refresh_seq"])
            if bulk is None:
                return Counts()
            seq = bulk.get("refresh_seq")  # None only on a job stored before the field: matches it missing
            counts, fields = self._derived(bulk_id, now, seconds_between_items)
            written = {**fields, "refresh_seq": (seq or 0) + 1}
            if not self._update("bulks", {"id": bulk_id, "refresh_seq": seq}, written):
                continue  # someone refreshed meanwhile from a later snapshot: count again
            # The end only under the sequence this count wrote: a later count (an item queued again) decides instead.
            ended = counts.pending == 0 and self._end(bulk_id, EventKind.completed, now, seq=(seq or 0) + 1)
            if ended or counts.pending or not self._recounted(bulk_id, (seq or 0) + 1):
                return dataclasses.replace(counts, ended_now=ended)
        raise StoreUnavailable(f"the counters of bulk job {bulk_id} kept changing; try again.")

    @_unavailable
    def _delete(self, kind: str, where: Where) -> int:
        query = _filter(kind, where)
        return 0 if query is None else int(self._collection(kind).delete_many(query).deleted_count)

    # -- submit and read -------------------------------------------------------

    @_unavailable
    def create_bulk(self, bulk: BulkJob, articles: list[dict[str, Any]],
                    limits: rules.Quota | None = None) -> tuple[BulkJob, bool]:
        oid = ObjectId(bulk.id)
        if bulk.idempotency_key is not None:
            existing = self._claim_idempotency_key(bulk, oid)
            if existing is not None:
                return existing, False
        # The key reserved first, in its own collection (no transaction to look it up in): a quota refusal or
        # a lock not taken gives it back, so a retry is not told to wait.
        try:
            with nullcontext() if limits is None else self._user_lock(bulk.userId, bulk.created_at):
                self._admit(bulk, limits)
                return self._insert_bulk(bulk, articles, oid)
        except (StoreUnavailable, QuotaExceeded):
            self._undo_submit(oid, bulk)
            raise

    def _insert_bulk(self, bulk: BulkJob, articles: list[dict[str, Any]], oid: ObjectId) -> tuple[BulkJob, bool]:
        docs = [_doc("items", rules.new_item(bulk, article, n)) for n, article in enumerate(articles, start=1)]
        bulk_doc = {**_doc("bulks", rules.new_bulk(bulk)), "refresh_seq": 0}
        stamped = self._stamp({"$set": bulk_doc}, bulk.created_at)
        bulk_doc = {**stamped["$set"], "changes": stamped["$push"]["changes"]["$each"]}
        if bulk.idempotency_key is None:
            del bulk_doc["idempotency_key"]  # the field only where a key was given
        # Items first: without their bulk job they are invisible and never claimed,
        # so a failure between the two writes leaves nothing a processor could start.
        try:
            self.items.insert_many(docs, ordered=True)
            self.bulks.insert_one(bulk_doc)
        except PyMongoError:
            self._undo_submit(oid, bulk)
            raise
        return bulk, True

    def _undo_submit(self, oid: ObjectId, bulk: BulkJob) -> None:
        try:
            self.items.delete_many({"bulk_job_id": oid})
            if bulk.idempotency_key is not None:
                self.keys.delete_one({"_id": self._key_id(bulk), "bulk_job_id": oid})
        except PyMongoError:
            pass  # the connection is gone; orphan items stay invisible

    def _lock_quota(self, user: str, now: dt.datetime) -> ObjectId:
        """Take the user's quota lock (design.md, "Quotas"): one conditional upsert of one document, atomic in
        MongoDB. Held by another and not stale at `now` (the verb's time): the upsert's insert of the same `_id`
        fails (DuplicateKeyError) and it is tried again, for `quota_wait` seconds at most. The holder's id, for
        `_unlock_quota`. (The wait is measured on the monotonic clock: it is no time of the data.)"""
        holder, deadline = ObjectId(), time.monotonic() + self.quota_wait
        while True:
            try:
                self.quota_locks.find_one_and_update(
                    {"_id": user, "until": {"$lt": now}},
                    {"$set": {"until": now + QUOTA_LEASE, "holder": holder}}, upsert=True)
                return holder
            except DuplicateKeyError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable("another submit of this user is being stored; try again.") from None
                time.sleep(0.01)

    def _unlock_quota(self, user: str, holder: ObjectId) -> None:
        try:
            self.quota_locks.delete_one({"_id": user, "holder": holder})
        except PyMongoError:
            pass  # the lock goes stale after QUOTA_LEASE

    @staticmethod
    def _key_id(bulk: BulkJob) -> str:
        raw = f"{bulk.userId}\x00{bulk.idempotency_key}".encode()
        return hashlib.sha256(raw).hexdigest()

    def _claim_idempotency_key(self, bulk: BulkJob, oid: ObjectId) -> BulkJob | None:
        """Reserve the user's key for this bulk job, or return the job that has it."""
        key_id = self._key_id(bulk)
        for _ in range(3):
            try:
                self.keys.insert_one(
                    {"_id": key_id, "bulk_job_id": oid, "created_at": bulk.created_at}
                )
                return None
            except DuplicateKeyError:  # the key is taken: look at who has it
                claim = self.keys.find_one({"_id": key_id})
                if claim is None:
                    continue
                doc = self.bulks.find_one({"_id": claim["bulk_job_id"]})
                if doc is not None:
                    return read("bulks", _decode("bulks", doc))
                created = _aware(claim.get("created_at"))
                if created is not None and bulk.created_at - created < STALE_CLAIM:  # type: ignore[operator]
                    raise StoreUnavailable(
                        "another submit with this idempotency key is still being stored; "
                        "try again in a minute."
                    ) from None
                # A submit that died before storing its bulk job: take its key over.
                self.keys.delete_one({"_id": key_id, "bulk_job_id": claim["bulk_job_id"]})
        raise StoreUnavailable("could not reserve the idempotency key; try again.")

    @_unavailable
    def usage(self, user: str) -> Usage:
        # Counted and summed by the server (an index on userId, status), not per job read back: a limited
        # submit asks it under the user's quota lock, so its cost must not grow with the user's history.
        active = [s.value for s in rules.ACTIVE_BULK]
        count = self.bulks.count_documents({"userId": user, "status": {"$in": active}})
        summed = list(self.bulks.aggregate([{"$match": {"userId": user}},
                                            {"$group": {"_id": None, "bytes": {"$sum": "$stored_bytes"}}}]))
        return Usage(count, int(summed[0]["bytes"]) if summed else 0)

    # -- reads of the repair (design.md, "Repair") ---------------------------------------

    @_unavailable
    def pending_bulk_ids(self) -> list[str]:
        pending = [s.value for s in PENDING_ITEM]
        return sorted(str(i) for i in self.items.distinct("bulk_job_id", {"status": {"$in": pending}}))

    # -- the processor's verbs -------------------------------------------------

    @_unavailable
    def claim_next(
        self, owner: str, lease_seconds: float, now: dt.datetime, max_in_flight: int = 1, sent: bool = False
    ) -> Item | None:
        # A cheap first look (not atomic with the claim): processors started with a
        # smaller --concurrency than others stay within their own limit. The fence
        # is the slot protocol below (design.md, "The fenced MongoDB claim").
        if self._claim_blocked(owner, max_in_flight):
            return None
        for _ in range(CLAIM_TRIES):
            slot = self.leases.find_one({"owner": owner, "_id": {"$ne": COOLDOWN}, "expires_at": {"$gte": now}})
            if slot is None or not self._slot_free(slot):
                return None
            found = self._next_queued(now)
            if found is None:
                return None
            candidate, served = found
            fence = self._next_fence()
            # The claim itself: only while `owner` still holds the slot and the slot
            # still holds what was just found finished. One single-document write.
            reserved = self.leases.update_one(
                {"_id": slot["_id"], "owner": owner, "expires_at": {"$gte": now},
                 "item_id": slot.get("item_id"), "fence": slot.get("fence")},
                {"$set": {"item_id": candidate["_id"], "fence": fence}},
            )
            if not reserved.matched_count:
                return None
            doc = self.items.find_one_and_update(
                {"_id": candidate["_id"], "status": ItemStatus.queued.value, **_below(fence)},
                self._stamp(_update(rules.claimed(owner, later(now, lease_seconds), now, fence, sent)), now),
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                continue  # taken or cancelled meanwhile: the slot stays free (nothing in flight under `fence`)
            item = self._started(doc, owner, now)
            if item is not None:
                if served is not None:  # the turn taken; a racing claim may write its own after (last one wins)
                    self.meta.update_one({"_id": rules.TURN}, {"$set": {"userId": served}}, upsert=True)
                return item
        return None

    def _slot_free(self, slot: dict[str, Any]) -> bool:
        """Whether the item a slot last took is out of flight for good (design.md, "The fenced MongoDB claim")."""
        fence, item_id = slot.get("fence"), slot.get("item_id")
        if fence is None or item_id is None:
            return True
        # Raise the item's fence to the slot's token: a claim that reserved the slot
        # under that token but has not yet marked the item can then never do so.
        self.items.update_one({"_id": item_id, **_below(fence)}, {"$set": {"fence": fence}})
        doc = self.items.find_one({"_id": item_id}, {"status": 1, "fence": 1})
        return doc is None or not (doc["status"] == ItemStatus.processing.value and doc.get("fence") == fence)

    def _next_queued(self, now: dt.datetime) -> tuple[dict[str, Any], str | None] | None:
        """The first queued item of the job whose turn it is (rules.claim_lookups), and the user its turn serves.

        Only a choice of which item to try: the claim's fence is the slot protocol, and a
        claim that loses the item to a racing one tries again from the turn then recorded.
        """
        claimable = [s.value for s in CLAIMABLE_BULK]
        last = self.meta.find_one({"_id": rules.TURN}, {"userId": 1})
        for lookup in rules.claim_lookups(None if last is None else last.get("userId")):
            query: dict[str, Any] = {"status": {"$in": claimable},
                                     "$or": [{"not_before": None}, {"not_before": {"$lte": now}}]}
            if lookup.urgent:
                query["priority_rank"] = rules.URGENT_RANK
            elif lookup.after is not None:
                query["userId"] = {"$gt": lookup.after}
            for bulk in self.bulks.find(query, {"_id": 1, "userId": 1}).sort(_order(lookup.order)):
                doc = self.items.find_one(
                    {"bulk_job_id": bulk["_id"], "status": ItemStatus.queued.value},
                    {"_id": 1},
                    sort=[(rules.ITEM_ORDER, ASCENDING)],
                )
                if doc is not None:
                    return doc, rules.turn_taken(lookup, bulk["userId"])
        return None

    def _next_fence(self) -> int:
        doc = self.meta.find_one_and_update(
            {"_id": FENCE}, {"$inc": {"value": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        return int(doc["value"])

    def _started(self, doc: dict[str, Any], owner: str, now: dt.datetime) -> Item | None:
        """Mark the claimed item's bulk job started; None (item handed back) if it was paused or cancelled."""
        bulk_id = doc["bulk_job_id"]
        self._start_job(str(bulk_id), now)
        # A pause or cancel may have committed between choosing the item and the
        # claim: check again, and hand the item back untouched if so.
        current = self.bulks.find_one({"_id": bulk_id}, {"status": 1})
        if current is None or current["status"] == BulkStatus.cancelled.value:
            self.finish_item(str(doc["_id"]), owner, Outcome(ItemStatus.cancelled), now)
            return None
        if current["status"] not in [s.value for s in CLAIMABLE_BULK]:
            self.release_item(str(doc["_id"]), owner, now=now)
            return None
        return read("items", _decode("items", doc))

    def _end(self, bulk_id: str, kind: EventKind, now: dt.datetime,  # type: ignore[override]
             seq: int | None = None) -> bool:
        """The queue's end, with `seq`: only under that `refresh_seq` (the count that decided it is the latest)."""
        return super()._end(bulk_id, kind, now, None if seq is None else {"refresh_seq": seq})

    def _recounted(self, bulk_id: str, seq: int) -> bool:
        """Whether a job this refresh could not end is still active and was counted again since (`seq`)."""
        doc = self._first("bulks", {"id": bulk_id}, fields=["status", "refresh_seq"])
        return doc is not None and doc["status"] in [s.value for s in rules.ENDS_FROM] and doc.get("refresh_seq") != seq

    # -- the processor lease ---------------------------------------------------

    @_unavailable
    def release_processor_lease(self, owner: str) -> None:
        for slot in self.leases.find({"owner": owner, "_id": {"$ne": COOLDOWN}}):
            if self._slot_free(slot):
                self.leases.delete_one({"_id": slot["_id"], "owner": owner})
            else:  # its item is still in flight: the slot keeps saying so, without an owner, until it ends
                self.leases.update_one(
                    {"_id": slot["_id"], "owner": owner},
                    {"$set": {"owner": "", "expires_at": dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)}},
                )

    @_unavailable
    def set_cooldown(self, until: dt.datetime) -> None:
        self.leases.update_one({"_id": COOLDOWN}, {"$max": {"expires_at": until}}, upsert=True)

    # -- the HTTP server: tokens and the change log (design.md, "Live progress") -------------------------

    change_lag = CHANGE_LAG

    def _ensure_serve_indexes(self) -> None:
        self.tokens.create_index([("token_hash", ASCENDING)], unique=True)
        for collection in (self.bulks, self.items):
            collection.create_index([("change_seq", ASCENDING)])
            collection.create_index([("change_at", ASCENDING)])

    def _stamp(self, update: dict[str, Any], now: dt.datetime | None) -> dict[str, Any]:
        """A status write numbered: the record keeps its latest number and a short history of its changes,
        each at `now`, the verb's time (the store reads no clock of its own).

        The number is taken before the write (no transactions): two writes can land out of number
        order, which `changes_since` covers by re-reading the CHANGE_LAG seconds before its `now`.
        """
        fields = update.get("$set", {})
        if "status" not in fields:
            return update
        if now is None:
            raise ValueError("a status change needs the time it is made at")
        seq = int(self.meta.find_one_and_update({"_id": CHANGES}, {"$inc": {"value": 1}}, upsert=True,
                                                return_document=ReturnDocument.AFTER)["value"])
        at = now
        entry = {"seq": seq, "status": fields["status"], "at": at, "error": fields.get("error")}
        return {**update, "$set": {**fields, "change_seq": seq, "change_at": at},
                "$push": {"changes": {"$each": [entry], "$slice": -rules.CHANGE_HISTORY}}}

    @_unavailable
    def _changes_since(self, after: int, limit: int, user: str | None, bulk_id: str | None,
                       now: dt.datetime) -> list[StateChange]:
        recent = now - dt.timedelta(seconds=self.change_lag)
        found: list[StateChange] = []
        oid = None if bulk_id is None else _oid(bulk_id)
        if bulk_id is not None and oid is None:
            return found
        for kind, collection in ((ChangeKind.bulk, self.bulks), (ChangeKind.item, self.items)):
            query: dict[str, Any] = {"$or": [{"change_seq": {"$gt": after}}, {"change_at": {"$gte": recent}}]}
            if user is not None:
                query["userId"] = user
            if oid is not None:
                query["_id" if kind is ChangeKind.bulk else "bulk_job_id"] = oid
            cursor = collection.find(query, {"article": 0, "result": 0, "outbox": 0}).sort("change_seq", ASCENDING)
            for doc in cursor.limit(limit):
                found.extend(_changes(kind, doc, after, recent))
        found.sort(key=lambda c: (c.seq, c.record_id))
        return found[:limit]

    @_unavailable
    def last_change(self) -> int:
        doc = self.meta.find_one({"_id": CHANGES})
        return 0 if doc is None else int(doc["value"])

    @_unavailable
    def put_setting(self, name: str, value: dict[str, Any]) -> None:
        self.meta.update_one({"_id": f"setting:{name}"}, {"$set": {"value": value}}, upsert=True)

    @_unavailable
    def get_setting(self, name: str) -> dict[str, Any] | None:
        doc = self.meta.find_one({"_id": f"setting:{name}"})
        return None if doc is None else dict(doc["value"])

    @_unavailable
    def prune_changes(self, before: dt.datetime, limit: int) -> int:
        """Each record keeps its own short history: a record whose latest change is older than `before` has
        its history emptied and its `change_at` removed (so the indexed query finds it no more), one
        conditional write per page of records; a record changed since is left alone."""
        gone, top = 0, 0
        for collection in (self.bulks, self.items):
            old = {"change_at": {"$lt": before}}
            docs = list(collection.find(old, {"_id": 1, "change_seq": 1}).sort("change_at", ASCENDING)
                        .limit(limit - gone))
            if docs:
                collection.update_many({"_id": {"$in": [d["_id"] for d in docs]}, **old},
                                       {"$set": {"changes": []}, "$unset": {"change_at": ""}})
                gone += len(docs)
                top = max([top, *(int(d.get("change_seq") or 0) for d in docs)])
            if gone >= limit:
                break
        if top:
            self.meta.update_one({"_id": CHANGES_FLOOR}, {"$max": {"value": top}}, upsert=True)
        return gone

    @_unavailable
    def changes_floor(self) -> int:
        doc = self.meta.find_one({"_id": CHANGES_FLOOR})
        return 0 if doc is None else int(doc["value"])


def _changes(kind: ChangeKind, doc: dict[str, Any], after: int, recent: dt.datetime) -> list[StateChange]:
    """A record's history entries numbered above `after` or made since `recent`."""
    out = []
    for entry in doc.get("changes") or []:
        at = _aware(entry.get("at"))
        if entry["seq"] <= after and (at is None or at < recent):
            continue
        bulk_id = doc["_id"] if kind is ChangeKind.bulk else doc["bulk_job_id"]
        values = {"seq": entry["seq"], "kind": kind.value, "record_id": doc["_id"], "bulk_job_id": bulk_id,
                  "userId": doc["userId"], "status": entry["status"], "at": at, "error": entry.get("error"),
                  "queue_position": doc.get("queue_position") if kind is ChangeKind.item else None}
        out.append(record(StateChange, CHANGE_FIELDS, values, _aware, _same))
    return out
