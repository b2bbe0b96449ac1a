"""Statuses, allowed transitions, article fields and the two records.

One definition of each: the stores, the processor and the CLI import from here.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from dataclasses import MISSING, dataclass, field
from enum import Enum
from typing import Any, Callable


class BulkStatus(str, Enum):
    #: submitted, no item started yet
    queued = "queued"
    #: at least one item has started and some are still pending
    processing = "processing"
    #: a user paused it: no new item of it starts until resumed
    paused = "paused"
    #: nothing is pending; the counters say how many items failed
    completed = "completed"
    #: a user cancelled it; final
    cancelled = "cancelled"


class ItemStatus(str, Enum):
    #: waiting for its turn
    queued = "queued"
    #: a processor holds it and its request is in flight
    processing = "processing"
    #: the service returned an article
    completed = "completed"
    #: tries exhausted or a permanent error; kept for retry-failed
    failed = "failed"
    #: its bulk job was cancelled before it finished
    cancelled = "cancelled"


class StepState(str, Enum):
    """Delivery state of one notification channel for one end of a bulk job."""

    #: waiting for its (next) try, due at `next_at`
    pending = "pending"
    #: a deliverer holds it until `lock_until` (then another may take it back)
    sending = "sending"
    #: delivered; never sent again
    sent = "sent"
    #: gave up after the last try; recorded, never fails the job
    failed = "failed"


class EventKind(str, Enum):
    completed = "bulk_job.completed"
    cancelled = "bulk_job.cancelled"


class Priority(str, Enum):
    """The order of a user's own jobs; `urgent` (an operator's) goes ahead of everyone's (design.md, "Fair turns")."""

    urgent = "urgent"
    high = "high"
    normal = "normal"
    low = "low"


#: Sort key of each priority (stored beside it as `priority_rank`).
PRIORITY_RANK = {Priority.urgent: -1, Priority.high: 0, Priority.normal: 1, Priority.low: 2}


class QualityPolicy(str, Enum):
    """What the quality gate does with an article it flags (`submit --quality`; design.md, "The quality gate")."""

    #: keep it as completed, flagged
    warn = "warn"
    #: the item fails, the reasons as its error
    fail = "fail"
    #: generate it again, each try counted, up to the try limit; then it fails
    retry = "retry"


class VerdictStatus(str, Enum):
    #: every check of the quality gate held
    passed = "passed"
    #: at least one check failed; the verdict's reasons say which
    flagged = "flagged"


#: The quality gate's default share of the asked `word_count` an article must reach.
DEFAULT_QUALITY_RATIO = 0.7


def next_generation(verdict: dict[str, Any] | None) -> int:
    """Which generation of an item's article the next request asks for (design.md, "The quality gate").

    0 until the gate has flagged one; one more than the last flagged one's after that, so a
    service that keeps its answers by Idempotency-Key makes a new article instead of the kept one.
    """
    if verdict is None:
        return 0
    generation = int(verdict.get("generation") or 0)
    return generation + 1 if verdict.get("status") == VerdictStatus.flagged.value else generation


class Mode(str, Enum):
    topic = "topic"
    keywords = "keywords"
    trends = "trends"
    spin = "spin"


#: Bulk-job transitions a user or processor may make (design.md, "States").
BULK_TRANSITIONS: dict[BulkStatus, frozenset[BulkStatus]] = {
    BulkStatus.queued: frozenset({BulkStatus.processing, BulkStatus.paused, BulkStatus.cancelled}),
    BulkStatus.processing: frozenset({BulkStatus.completed, BulkStatus.paused, BulkStatus.cancelled}),
    BulkStatus.paused: frozenset(
        {BulkStatus.queued, BulkStatus.processing, BulkStatus.cancelled, BulkStatus.completed}
    ),
    BulkStatus.completed: frozenset({BulkStatus.queued}),
    BulkStatus.cancelled: frozenset(),
}

#: Bulk statuses whose items may be claimed.
CLAIMABLE_BULK = (BulkStatus.queued, BulkStatus.processing)
#: Bulk statuses that still have work to do (ETA, watch, idle checks).
ACTIVE_BULK = (BulkStatus.queued, BulkStatus.processing, BulkStatus.paused)
#: Bulk statuses after which nothing more happens (until a retry-failed).
ENDED_BULK = (BulkStatus.completed, BulkStatus.cancelled)
#: Item statuses that count as pending: the job is not over while any item has one.
PENDING_ITEM = (ItemStatus.queued, ItemStatus.processing)

#: Which field each mode requires; spin takes either of two.
REQUIRED_FIELD: dict[Mode, tuple[str, ...]] = {
    Mode.topic: ("topic",),
    Mode.keywords: ("keywords",),
    Mode.trends: ("trend",),
    Mode.spin: ("source_text", "source_url"),
}
#: Fields every mode accepts (besides its required one).
OPTIONAL_FIELDS = (
    "word_count",
    "tone",
    "language",
    "title",
    "audience",
    "instructions",
    "id",
    "extra",
)
#: Every article field an items file may hold, in display order.
ARTICLE_FIELDS = ("topic", "keywords", "trend", "source_text", "source_url") + OPTIONAL_FIELDS
DEFAULT_WORD_COUNT = 1000
WORD_COUNT_RANGE = (100, 10_000)
ITEMS_RANGE = (10, 50)
MAX_KEYWORDS = 20
#: Longest error_summary before the rest is folded into one line.
ERROR_SUMMARY_CAP = 20


#: The most items one file may hold with --split.
MAX_SPLIT_ITEMS = 5_000


def split_sizes(count: int, most: int = ITEMS_RANGE[1]) -> list[int]:
    """Balanced part sizes for `count` items, each at most `most` (so at least 25 once split)."""
    parts = -(-count // most)
    base, extra = divmod(count, parts)
    return [base + 1 if n < extra else base for n in range(parts)]


def main_field(mode: str, article: dict[str, Any]) -> str:
    """The human label of an article: its topic, keywords, trend or source."""
    for name in REQUIRED_FIELD[Mode(mode)]:
        value = article.get(name)
        if value:
            return ", ".join(value) if isinstance(value, list) else str(value)
    return str(article.get("title") or "")


def utcnow() -> dt.datetime:
    """Now in UTC, to the millisecond: what MongoDB keeps, so both stores agree."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def later(now: dt.datetime, seconds: float) -> dt.datetime:
    """`now` plus `seconds`, to the millisecond (what MongoDB keeps)."""
    return now + dt.timedelta(milliseconds=round(seconds * 1000))


def estimate_completion(
    now: dt.datetime, pending: int, mean_seconds: float | None, seconds_between: float
) -> dt.datetime | None:
    """ETA: the mean duration of finished items, plus the delay, for each pending item."""
    if not pending or mean_seconds is None:
        return None
    return later(now, pending * (mean_seconds + seconds_between))


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and a Z, or None."""
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_id_lock = threading.Lock()
_id_counter = int.from_bytes(os.urandom(3), "big")
_id_random = os.urandom(5)


def new_id() -> str:
    """A 24-hex id shaped like a MongoDB ObjectId (time, random, counter): sortable by age."""
    global _id_counter
    with _id_lock:
        _id_counter = (_id_counter + 1) % 0xFFFFFF
        count = _id_counter
    return (int(time.time()).to_bytes(4, "big") + _id_random + count.to_bytes(3, "big")).hex()


def new_item_id() -> str:
    """A 24-hex item id whose every character is random, so that its first 7 or 8 are a short id.

    Ids from `new_id` share their leading characters within a job (time, then
    process); an item's id is typed by people (`bulkgen show 3f2a91c4`), so
    its leading characters must tell items apart (design.md, "Short item ids").
    Still 12 bytes: a valid MongoDB ObjectId.
    """
    return os.urandom(12).hex()


# -- one declaration per field (design.md, "One declaration per field") ----------------------------------

#: Where a field of a `BulkJob` or an `Item` shows in the JSON documents (ops/documents.py), and so in the
#: server's response models (server/schemas.py, checked against these by tests/test_fields.py):
#: every document of the record (`status --json`, `list --json`, the HTTP answers)
EVERY_DOCUMENT = "every"
#: only the whole record's document: a job's in `status --json` (not `list`), an item's in `show --json`
FULL_DOCUMENT = "full"
#: in no document (kept for the store and the processor)
NO_DOCUMENT = None


def declared(default: Any = MISSING, *, document: str | None = EVERY_DOCUMENT, stored: bool = True,
             factory: Callable[[], Any] | None = None) -> Any:
    """A record's field, declared once: its default, which JSON documents show it, whether the store keeps it.

    Its JSON name is the field's name; its JSON type and whether it may be null come from its annotation
    (a time is an ISO string, `iso`). A stored field is a column of the SQLite table (tests/test_fields.py).
    """
    return field_with(default, factory, {"document": document, "stored": stored})


def field_with(default: Any, factory: Callable[[], Any] | None, metadata: dict[str, Any]) -> Any:
    """A dataclass field with its default (or `factory`) and what its record says of it (`metadata`)."""
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class BulkJob:
    # the JSON document's order is the declaration's
    id: str = declared()
    name: str = declared()
    mode: str = declared()
    status: str = declared()
    userId: str = declared()
    total_items: int = declared()
    completed_items: int = declared(0)
    failed_items: int = declared(0)
    cancelled_items: int = declared(0)
    created_at: dt.datetime | None = declared(None)
    started_at: dt.datetime | None = declared(None)
    completed_at: dt.datetime | None = declared(None)
    estimated_completion: dt.datetime | None = declared(None)
    error_summary: list[str] = declared(factory=list)
    priority: str = declared(Priority.normal.value)
    #: nothing of it is claimed before this time
    not_before: dt.datetime | None = declared(None)
    #: links the parts of one file submitted with --split
    group_id: str | None = declared(None)
    #: the quality gate's policy (`QualityPolicy`) and its words ratio, chosen at submit
    quality: str = declared(QualityPolicy.warn.value)
    quality_ratio: float = declared(DEFAULT_QUALITY_RATIO)
    #: derived like the counters: completed items the gate flagged, and one line per flagged item
    flagged_items: int = declared(0)
    #: derived like the counters: failed items whose article the gate turned down (`turned_down`)
    turned_down_items: int = declared(0)
    quality_summary: list[str] = declared(factory=list)
    notified_at: dt.datetime | None = declared(None, document=FULL_DOCUMENT)
    notify: list[str] = declared(document=NO_DOCUMENT, factory=list)
    idempotency_key: str | None = declared(None, document=NO_DOCUMENT)
    #: the notification outbox of the job's latest end (see `new_outbox`); shown as `notifications`
    outbox: dict[str, Any] | None = declared(None, document=NO_DOCUMENT)
    #: a job submitted over HTTP: where its notifications may go (netpolicy.Policy.to_record); None: anywhere
    notify_policy: dict[str, Any] | None = declared(None, document=NO_DOCUMENT)
    #: the bytes its articles take as stored (manifest.stored_size), recorded at submit: what the stored-bytes
    #: quota sums (design.md, "Quotas")
    stored_bytes: int = declared(0, document=NO_DOCUMENT)

    @property
    def pending(self) -> int:
        return self.total_items - self.completed_items - self.failed_items - self.cancelled_items

    @property
    def percentage(self) -> int:
        """Share of items no longer pending (failed and cancelled count as done)."""
        if not self.total_items:
            return 100
        return int((self.total_items - self.pending) * 100 // self.total_items)


@dataclass(kw_only=True)
class Item:
    # the JSON document's order is the declaration's (the article's main field and `item_id` are added)
    id: str = declared()
    queue_position: int = declared()
    status: str = declared()
    retry_count: int = declared(0)
    attempts: int = declared(0)
    error: str | None = declared(None)
    #: the quality gate's verdict on its article (`quality.Verdict.to_dict`), None until one was checked
    verdict: dict[str, Any] | None = declared(None)
    bulk_job_id: str = declared(document=FULL_DOCUMENT)
    userId: str = declared(document=FULL_DOCUMENT)
    mode: str = declared(document=FULL_DOCUMENT)
    article: dict[str, Any] = declared(document=FULL_DOCUMENT)
    created_at: dt.datetime | None = declared(None, document=FULL_DOCUMENT)
    started_at: dt.datetime | None = declared(None, document=FULL_DOCUMENT)
    completed_at: dt.datetime | None = declared(None, document=FULL_DOCUMENT)
    #: the service's answer: `show --json` gives its text and timings, not the record itself
    result: dict[str, Any] | None = declared(None, document=NO_DOCUMENT)
    lease_owner: str | None = declared(None, document=NO_DOCUMENT)
    lease_expires_at: dt.datetime | None = declared(None, document=NO_DOCUMENT)
    #: the fencing token of the claim that holds (or last held) it; grows with every claim
    fence: int | None = declared(None, document=NO_DOCUMENT)
    #: when the current try's request was sent; None while it is not (a try is charged only once sent)
    sent_at: dt.datetime | None = declared(None, document=NO_DOCUMENT)

    @property
    def label(self) -> str:
        return main_field(self.mode, self.article)

    @property
    def item_id(self) -> str | None:
        value = self.article.get("id")
        return None if value is None else str(value)


@dataclass(frozen=True)
class Outcome:
    """How one claimed item ended, as the processor reports it to the store."""

    status: ItemStatus  # completed, failed or cancelled
    result: dict[str, Any] | None = None
    error: str | None = None
    #: the quality gate's verdict on `result`, recorded in the same write
    verdict: dict[str, Any] | None = None


@dataclass(frozen=True)
class Counts:
    """Items of one bulk job by status, and whether this refresh recorded its end."""

    queued: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    ended_now: bool = False

    @property
    def pending(self) -> int:
        return self.queued + self.processing


def summarize_errors(items: list[Item]) -> list[str]:
    """error_summary: one short line per failed item, capped."""
    lines = []
    failed = [i for i in items if i.status == ItemStatus.failed]
    for item in failed[:ERROR_SUMMARY_CAP]:
        label = item.label
        if len(label) > 40:
            label = label[:39] + "…"
        reason = (item.error or "failed").splitlines()[0][:160]
        lines.append(f"#{item.queue_position} {label}: {reason}")
    if len(failed) > ERROR_SUMMARY_CAP:
        lines.append(f"… and {len(failed) - ERROR_SUMMARY_CAP} more failed items")
    return lines


#: How the error of an item the quality gate failed begins (quality.failure).
TURNED_DOWN_ERROR = "quality: "


def turned_down(item: Item) -> bool:
    """Whether the quality gate failed the item: its article was turned down (and is kept on the item)."""
    return item.status == ItemStatus.failed and (item.error or "").startswith(TURNED_DOWN_ERROR)


def summarize_flagged(flagged: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """quality_summary: one short line per flagged article, from (queue position, verdict), capped."""
    lines = [f"#{position} {', '.join(verdict.get('reasons') or ['flagged'])}"[:200]
             for position, verdict in flagged[:ERROR_SUMMARY_CAP]]
    if len(flagged) > ERROR_SUMMARY_CAP:
        lines.append(f"… and {len(flagged) - ERROR_SUMMARY_CAP} more flagged items")
    return lines


def new_outbox(kind: EventKind, channels: list[str], now: dt.datetime) -> dict[str, Any]:
    """The outbox written together with a job's end: one step per channel, all pending.

    Times inside it are ISO strings (they compare in order in both stores). The
    event itself is filled in by the first deliverer, from the ended job.
    """
    return {
        "event_id": new_id(),
        "kind": kind.value,
        "created_at": iso(now),
        "event": None,
        "steps": [
            {"channel": c, "state": StepState.pending.value, "attempts": 0, "last_error": None,
             "next_at": iso(now), "owner": None, "lock_until": None, "sent_at": None}
            for c in channels
        ],
    }


def outbox_open(outbox: dict[str, Any] | None) -> bool:
    """Whether some step of the outbox is still to be delivered."""
    return outbox is not None and any(
        s["state"] in (StepState.pending.value, StepState.sending.value) for s in outbox["steps"]
    )


# -- saved templates (templates.py; docs/files.md, "Templates") ------------------------------------------------


@dataclass
class SavedTemplate:
    """A template kept in the store by `bulkgen template save`: one per (user, name)."""

    name: str
    userId: str
    #: the template file's text, exactly as saved (what `template show` prints)
    text: str
    #: the template's own `mode:`, when it names one
    mode: str | None = None
    #: its placeholders, in the order of their first use
    placeholders: list[str] = field(default_factory=list)
    #: the file it was saved from, as it was named
    source: str = ""
    created_at: dt.datetime | None = None
    #: the last save (a replace keeps `created_at` and moves this)
    updated_at: dt.datetime | None = None


class SaveOutcome(str, Enum):
    """What `Store.save_template` did."""

    #: the user had no template of that name; this one is stored
    created = "created"
    #: one existed and a replace was asked for: this one took its place
    replaced = "replaced"
    #: one existed and no replace was asked for: nothing was written
    exists = "exists"


# -- recurring schedules (design.md, "Recurring schedules") --------------------------------------------


class ScheduleStatus(str, Enum):
    #: its occurrences are submitted by `run --forever`
    active = "active"
    #: nothing is submitted; resuming starts from the next occurrence after the resume
    paused = "paused"


class OccurrenceState(str, Enum):
    """One occurrence of a schedule, keyed by (schedule, time in UTC): written once, finished once
    (design.md, "Exactly once per occurrence")."""

    #: a processor holds it (its token: `Occurrence.claim`); decided once the schedule names it as `last_at`,
    #: and then its job is being made; a stale claim is taken over with a new token
    claimed = "claimed"
    #: its bulk job is stored (`bulk_job_id`)
    submitted = "submitted"
    #: its file or template could not be made into a job (`error`); nothing was stored
    failed = "failed"
    #: never decided, so never queued: the schedule was paused, removed or moved past it while it was claimed
    #: (a stalled processor; it is then counted among the skipped runs)
    dropped = "dropped"


@dataclass
class Schedule:
    id: str
    userId: str
    name: str
    cron: str
    zone: str
    status: str
    #: what each occurrence submits: {"kind": "file", "text", "format", "file"} or
    #: {"kind": "template", "template", "values_text", "values_format", "values_file"}
    source: dict[str, Any]
    #: the job's options: name, mode, priority, notify
    options: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    #: the earliest occurrence not handled yet (UTC); None while paused
    next_at: dt.datetime | None = None
    #: the latest occurrence handled, its bulk job and its error
    last_at: dt.datetime | None = None
    last_bulk_job_id: str | None = None
    last_error: str | None = None
    #: occurrences missed while no `run --forever` ran: how many, and the latest few (ISO, UTC)
    skipped_count: int = 0
    skipped_recent: list[str] = field(default_factory=list)


@dataclass
class Occurrence:
    schedule_id: str
    at: dt.datetime
    userId: str
    state: str
    owner: str | None = None
    claimed_at: dt.datetime | None = None
    bulk_job_id: str | None = None
    error: str | None = None
    finished_at: dt.datetime | None = None
    #: the earlier occurrences this one skipped
    skipped: int = 0
    #: the token of the claim that holds it (a new one at each take-over); its writes are conditional on it
    claim: str | None = None
# -- the HTTP server's records (bulkgen serve) ---------------------------------------------------------


@dataclass
class ApiToken:
    """A user's bearer token for `bulkgen serve`; only its hash is stored (the token is shown once)."""

    id: str
    userId: str
    #: sha256 of the token, hex
    token_hash: str
    admin: bool = False
    #: the user's own address: e-mail notifications may always go there
    email: str | None = None
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class ChangeKind(str, Enum):
    #: a bulk job was created or changed state
    bulk = "bulk"
    #: an item changed state
    item = "item"


@dataclass(frozen=True)
class StateChange:
    """One state change of a bulk job or an item, numbered by the store (design.md, "Live progress")."""

    #: the store's change sequence number
    seq: int
    kind: str
    #: the bulk job's or the item's id
    record_id: str
    bulk_job_id: str
    userId: str
    status: str
    at: dt.datetime | None = None
    queue_position: int | None = None
    error: str | None = None
