"""The queue's store decisions, made once: each backend only writes them in its own atomic query.

Plain functions and tables, no I/O. A verb of `sqlite.SqliteStore` or
`mongo.MongoStore` asks here what a record becomes (a `Change`: fields to set,
counters to add to) and turns the answer into its own conditional write,
keeping its own atomicity (design.md, "The store contract"). Times here are
datetimes, except inside an outbox, whose times are ISO strings in both stores.
"""

from __future__ import annotations

import datetime as dt
import operator
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from bulkgen_cli.core.errors import QuotaExceeded
from bulkgen_cli.core.model import (
    ACTIVE_BULK,
    CLAIMABLE_BULK,
    DEFAULT_QUALITY_RATIO,
    PRIORITY_RANK,
    BulkJob,
    BulkStatus,
    Counts,
    EventKind,
    Item,
    ItemStatus,
    OccurrenceState,
    Outcome,
    Priority,
    QualityPolicy,
    SavedTemplate,
    Schedule,
    ScheduleStatus,
    StepState,
    VerdictStatus,
    estimate_completion,
    iso,
    later,
    new_item_id,
    new_outbox,
    outbox_open,
    summarize_errors,
    summarize_flagged,
    turned_down,
)

#: The version of the data model below (its records, their fields and the indexes their queries need), one
#: number for both stores: SQLite's `user_version`, MongoDB's schema document (design.md, "The store contract").
SCHEMA_VERSION = 11

#: The job statuses a claim takes from, and `Store.next_start` waits on.
CLAIMABLE = CLAIMABLE_BULK

#: The error kept on an item whose request was aborted by a cancel.
CANCELLED_IN_FLIGHT = "cancelled while its request was in flight"

# -- the records' fields ---------------------------------------------------------------------------

#: Field kinds: how a backend stores a value (SQLite: ISO text and JSON text; MongoDB: as is).
PLAIN, TEXT, TIME, JSON = "plain", "text", "time", "json"
#: The default of a field every record has.
REQUIRED: Any = object()


@dataclass(frozen=True)
class Field:
    """One field of a stored record: its name, kind, default when absent, and whether a submit gives it."""

    name: str
    kind: str = PLAIN
    #: a value, or `list` / `dict` for a fresh empty one
    default: Any = None
    #: written at submit from the submitted record (else with its default)
    given: bool = False

    def fresh(self) -> Any:
        return self.default() if self.default in (list, dict) else self.default


#: A bulk job: `BulkJob`'s fields as stored (design.md, "Data").
BULK_FIELDS = (
    Field("id", TEXT, REQUIRED, given=True),
    Field("userId", TEXT, REQUIRED, given=True),
    Field("mode", PLAIN, REQUIRED, given=True),
    Field("name", PLAIN, "", given=True),
    Field("status", PLAIN, REQUIRED, given=True),
    Field("total_items", PLAIN, REQUIRED, given=True),
    Field("completed_items", PLAIN, 0),
    Field("failed_items", PLAIN, 0),
    Field("cancelled_items", PLAIN, 0),
    Field("created_at", TIME, given=True),
    Field("started_at", TIME),
    Field("completed_at", TIME),
    Field("estimated_completion", TIME),
    Field("error_summary", JSON, list),
    Field("notify", JSON, list, given=True),
    Field("notified_at", TIME),
    Field("idempotency_key", PLAIN, given=True),
    Field("outbox", JSON),
    Field("priority", PLAIN, Priority.normal.value, given=True),
    Field("not_before", TIME, given=True),
    Field("group_id", PLAIN, given=True),
    Field("quality", PLAIN, QualityPolicy.warn.value, given=True),
    Field("quality_ratio", PLAIN, DEFAULT_QUALITY_RATIO, given=True),
    Field("flagged_items", PLAIN, 0),
    Field("quality_summary", JSON, list),
    Field("turned_down_items", PLAIN, 0),
    Field("notify_policy", JSON, given=True),
    Field("stored_bytes", PLAIN, 0, given=True),
)

#: An item: `Item`'s fields as stored (`article` is one JSON column in SQLite, top-level fields in MongoDB).
ITEM_FIELDS = (
    Field("id", TEXT, REQUIRED),
    Field("bulk_job_id", TEXT, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("mode", PLAIN, REQUIRED),
    Field("article", JSON, dict),
    Field("status", PLAIN, REQUIRED),
    Field("queue_position", PLAIN, REQUIRED),
    Field("retry_count", PLAIN, 0),
    Field("attempts", PLAIN, 0),
    Field("error", PLAIN),
    Field("result", JSON),
    Field("created_at", TIME),
    Field("started_at", TIME),
    Field("completed_at", TIME),
    Field("lease_owner", PLAIN),
    Field("lease_expires_at", TIME),
    Field("fence", PLAIN),
    Field("verdict", JSON),
    Field("sent_at", TIME),
)

#: A saved template: `SavedTemplate`'s fields as stored; (userId, name) is unique.
TEMPLATE_FIELDS = (
    Field("name", TEXT, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("text", TEXT, REQUIRED),
    Field("mode", PLAIN),
    Field("placeholders", JSON, list),
    Field("source", PLAIN, ""),
    Field("created_at", TIME),
    Field("updated_at", TIME),
)
#: What replacing a saved template keeps of the stored one: its key and when it was first saved.
TEMPLATE_KEPT = ("userId", "name", "created_at")

#: A processor slot: `base.Lease`'s fields as stored.
LEASE_FIELDS = (
    Field("owner", PLAIN, REQUIRED),
    Field("expires_at", TIME, REQUIRED),
    Field("acquired_at", TIME, REQUIRED),
    Field("host", PLAIN, ""),
    Field("pid", PLAIN, 0),
)


def record(cls: Callable[..., Any], fields: tuple[Field, ...], values: Mapping[str, Any],
           time: Callable[[Any], dt.datetime | None], json: Callable[[Any], Any]) -> Any:
    """A record from stored values; the backend reads its times and JSON (`time`, `json`).

    A field that is absent or None takes its default (a required one must be there).
    """
    out = {}
    for f in fields:
        value = values.get(f.name)
        if value is None:
            value = values[f.name] if f.default is REQUIRED else f.fresh()
        elif f.kind == TIME:
            value = time(value)
        elif f.kind == JSON:
            value = json(value)
        elif f.kind == TEXT:
            value = str(value)
        out[f.name] = value
    return cls(**out)


def new_bulk(bulk: BulkJob) -> dict[str, Any]:
    """Every stored field of a submitted bulk job: what the submit gives, the rest at its default."""
    fields = {f.name: getattr(bulk, f.name) if f.given else f.fresh() for f in BULK_FIELDS}
    priority = Priority(bulk.priority)
    fields.update(notify=list(bulk.notify), priority=priority.value, priority_rank=PRIORITY_RANK[priority],
                  notify_pending=False, hook_pending=False)
    return fields


def new_item(bulk: BulkJob, article: dict[str, Any], position: int) -> dict[str, Any]:
    """Every stored field of one new item (1-based `position`, file order), queued."""
    fields = {f.name: f.fresh() for f in ITEM_FIELDS}
    fields.update(id=new_item_id(), bulk_job_id=bulk.id, userId=bulk.userId, mode=bulk.mode, article=article,
                  status=ItemStatus.queued.value, queue_position=position, created_at=bulk.created_at)
    return fields


def template_fields(template: SavedTemplate) -> dict[str, Any]:
    """Every stored field of a template being saved."""
    return {f.name: getattr(template, f.name) for f in TEMPLATE_FIELDS}


def template_replacement(template: SavedTemplate) -> dict[str, Any]:
    """The fields a replace writes over a stored template (all but `TEMPLATE_KEPT`)."""
    return {k: v for k, v in template_fields(template).items() if k not in TEMPLATE_KEPT}


def new_slot(owner: str, expires: dt.datetime, now: dt.datetime, host: str, pid: int) -> dict[str, Any]:
    """The fields of a processor slot taken by `owner`."""
    return {"owner": owner, "expires_at": expires, "acquired_at": now, "host": host, "pid": pid}


# -- what a write does to an item --------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What one write does to one record: fields to set, and counters to add to (never below zero)."""

    set: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cmp:
    """A comparison in a `Where`: the field is `op` ("ne", "lt", "lte", "gt", "gte") `value`."""

    op: str
    value: Any


#: Which records a write or a read takes: each field equals its value (None: has none; a tuple: one of its
#: values; a `Cmp`: compares so; a list of `Cmp`: each holds, a range). A field `a.b` is `b` inside the
#: JSON field `a` (a number: a list's index).
#: A list of them: any one holds. The language of `queue.Queue`'s primitives.
Where = dict[str, Any] | list[dict[str, Any]]


def alternatives(conditions: Conditions, prefix: str = "") -> list[dict[str, Any]]:
    """`Conditions` (the outbox steps') as a `Where` on fields under `prefix`."""
    return [{prefix + k: v if op == "eq" else Cmp(op, v) for k, (op, v) in alt.items()} for alt in conditions]


# -- the claim's order (design.md, "Fair turns") -------------------------------------------------------

#: One user's jobs (and the operator's urgent jobs among themselves): by priority, then oldest first.
JOB_ORDER = ("priority_rank", "created_at", "id")
#: Then a job's items in file order.
ITEM_ORDER = "queue_position"
#: The rank of `urgent`: an operator's job, claimed before any user's turn.
URGENT_RANK = PRIORITY_RANK[Priority.urgent]
#: A turn's walk: users in order, each user's jobs in JOB_ORDER.
TURN_ORDER = ("userId", *JOB_ORDER)
#: The name of the store's one record of whose turn was last (SQLite `turns` row, MongoDB `meta` document).
TURN = "turn"


@dataclass(frozen=True)
class Lookup:
    """One lookup of a claim: the first claimable, due job with a queued item, in `order`.

    `urgent`: among urgent jobs only (any user's); else among every job of the users after
    `after` in user order (all users when None).
    """

    urgent: bool
    after: str | None
    order: tuple[str, ...]


def claim_lookups(last_user: str | None) -> list[Lookup]:
    """The lookups of one claim, tried in turn until one finds a job (design.md, "Fair turns").

    An operator's urgent job first, oldest first; else the next user after the one the last
    turn served (`last_user`) that has a claimable job, wrapping around to the first user
    (the last served one included, when nobody else has work); within a user, JOB_ORDER.
    """
    lookups = [Lookup(urgent=True, after=None, order=JOB_ORDER)]
    if last_user is not None:
        lookups.append(Lookup(urgent=False, after=last_user, order=TURN_ORDER))
    return lookups + [Lookup(urgent=False, after=None, order=TURN_ORDER)]


def turn_taken(lookup: Lookup, user: str) -> str | None:
    """Whose turn a claim found by `lookup` records as served: `user`, or None for an urgent claim (no turn)."""
    return None if lookup.urgent else user

#: Listing order of bulk jobs: newest first.
NEWEST_FIRST = ("created_at", "id")

_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}


def held(owner: str) -> dict[str, Any]:
    """The fields that say `owner` holds an item (every write by its holder is conditional on them).

    A condition is a dict of fields and values; a tuple value means "one of" (SQL `IN`, MongoDB `$in`).
    """
    return {"status": ItemStatus.processing.value, "lease_owner": owner}


#: The statuses in which a reply in hand may still be recorded (design.md, "A reply in hand").
ANSWERABLE = (ItemStatus.processing.value, ItemStatus.queued.value)


def answerable(owner: str, fence: int | None) -> dict[str, Any]:
    """Where a reply in hand of the claim with token `fence` may be recorded as the item's end.

    A token is unique to one claim, so `fence` still on the item means no newer claim
    took it: `processing` (still held, even past its lease) or `queued` (an expired
    lease put it back and nobody claimed it since). Not once it ended (cancelled) or
    another claim raised its token. Without a token: while `owner` holds it (`held`).
    """
    return held(owner) if fence is None else {"fence": fence, "status": ANSWERABLE}


def claimed(owner: str, expires: dt.datetime, now: dt.datetime, fence: int, sent: bool = False) -> Change:
    """A claimed item: processing under `owner`'s lease and token `fence`, one more try.

    Its try counts as sent (`sent_at`) at once only with `sent` (a local generator: its claim is its send);
    otherwise once the check right before its request says so (`renewed`).
    """
    return Change({"status": ItemStatus.processing.value, "lease_owner": owner, "lease_expires_at": expires,
                   "started_at": now, "error": None, "fence": fence, "sent_at": now if sent else None},
                  {"attempts": 1})


def renewed(expires: dt.datetime, now: dt.datetime, sent: bool = False) -> Change:
    """A held item's lease renewed (`Store.heartbeat`); with `sent`, the check right before a request: the try is sent."""
    return Change({"lease_expires_at": expires, **({"sent_at": now} if sent else {})})


def job_started(now: dt.datetime) -> tuple[tuple[dict[str, Any], dict[str, Any]], ...]:
    """A claim starts its job: each (condition, fields) is set where the job still meets the condition.

    A queued job becomes processing (never a job paused or cancelled meanwhile);
    `started_at` is set the first time.
    """
    return (({"status": BulkStatus.queued.value}, {"status": BulkStatus.processing.value}),
            ({"started_at": None}, {"started_at": now}))


#: A held item's next try (`Store.begin_attempt`).
ONE_MORE_TRY = Change(add={"attempts": 1, "retry_count": 1})


def one_more_try(rejected: dict[str, Any] | None = None, sent_at: dt.datetime | None = None) -> Change:
    """A held item's next try, not sent yet (unless `sent_at`: a local generator's); after the quality gate
    turned its article down, with that verdict kept on it."""
    fields: dict[str, Any] = {"sent_at": sent_at}
    if rejected is not None:
        fields["verdict"] = rejected
    return Change(fields, ONE_MORE_TRY.add)


def finished(outcome: Outcome, now: dt.datetime) -> Change:
    """A held item's end as its processor reports it."""
    fields = {"status": ItemStatus(outcome.status).value, "result": outcome.result, "error": outcome.error,
              "completed_at": now, **_NO_LEASE}
    if outcome.verdict is not None:  # else the verdict on its last checked article stays (design.md, "The quality gate")
        fields["verdict"] = outcome.verdict
    return Change(fields)


def ended_by(item: Item, outcome: Outcome, now: dt.datetime, fence: int | None) -> bool:
    """Whether the item holds the end `finished(outcome, now)` wrote under the claim `fence` (a write that landed
    before a fault: the same claim, status and time)."""
    return (fence is not None and item.fence == fence and item.status == ItemStatus(outcome.status).value
            and item.completed_at == now)


def released(charge: bool) -> Change:
    """A held item back in the queue at its place; its try is counted only with `charge`."""
    return Change({"status": ItemStatus.queued.value, **_NO_LEASE, "started_at": None, "sent_at": None},
                  {} if charge else {"attempts": -1})


def expired(bulk_status: str | None, attempts: int, max_attempts: int, now: dt.datetime,
            sent: bool = True) -> Change:
    """An item whose lease expired (its processor died or stalled): cancelled with its job, failed, or queued again.

    Its try is charged only when its request was sent (`sent`: the item's `sent_at`
    is set): then it stays counted and may fail the item at `max_attempts`.
    A try whose request was never sent (a stall or a death during the delay before
    it) goes back uncounted (design.md, "When a try counts").
    """
    if bulk_status == BulkStatus.cancelled.value:
        return Change({"status": ItemStatus.cancelled.value, "completed_at": now, **_NO_LEASE})
    if not sent:
        return Change({"status": ItemStatus.queued.value, **_NO_LEASE, "started_at": None, "sent_at": None},
                      {"attempts": -1})
    if attempts >= max_attempts:
        return Change({"status": ItemStatus.failed.value, "completed_at": now,
                       "error": lease_lost_error(attempts), **_NO_LEASE})
    return Change({"status": ItemStatus.queued.value, **_NO_LEASE, "started_at": None, "sent_at": None},
                  {"retry_count": 1})


def lease_lost_error(attempts: int) -> str:
    """The error of an item whose processor died on each of its tries."""
    return (
        f"gave up after {attempts} tries: the processor holding it stopped each time "
        "before recording a result (its lease expired)"
    )


def cancel_sweeps(now: dt.datetime) -> tuple[tuple[ItemStatus, Change], ...]:
    """What a cancelled job's items become, by status, in sweep order.

    Queued before processing: an item a racing claim takes from the queue meanwhile
    is then caught by the second sweep (or by the claim's own check).
    """
    ended = {"status": ItemStatus.cancelled.value, "completed_at": now, **_NO_LEASE}
    return ((ItemStatus.queued, Change(ended)),
            (ItemStatus.processing, Change({**ended, "error": CANCELLED_IN_FLIGHT})))


#: retry-failed: from which job status, which items, and what each becomes (a new round).
RETRY_FROM = BulkStatus.completed
RETRIED = ItemStatus.failed
RETRIED_ITEM = Change({"status": ItemStatus.queued.value, "attempts": 0, "error": None, "result": None,
                       "started_at": None, "completed_at": None}, {"retry_count": 1})
RETRIED_JOB = {"status": BulkStatus.queued.value, "completed_at": None}

# -- single items: ids, item cancel and item retry (design.md, "Item state rules") ------------------------

#: An item id is 24 lower-case hex digits; a prefix of at least this many names one (as git does).
SHORT_ID_MIN = 4
#: `status --items` shows at least this many characters of each id, more where a neighbour shares them.
SHORT_ID_SHOWN = 8
ID_LENGTH = 24
#: item cancel: from which item statuses (what each becomes: as a job cancel's sweep, `cancel_sweeps`).
ITEM_CANCEL_FROM = (ItemStatus.queued, ItemStatus.processing)
#: item retry: from which item statuses; the item becomes `RETRIED_ITEM`, as in retry-failed.
ITEM_RETRY_FROM = (ItemStatus.failed, ItemStatus.cancelled)


def prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """The index range of the ids that start with `prefix` (lower-case hex): low <= id < high (None: no end).

    Both bounds are padded to a whole id, so that they are also valid ObjectIds
    (MongoDB compares those byte by byte, which is the hex text's order).
    """
    low = prefix.ljust(ID_LENGTH, "0")
    if set(prefix) == {"f"}:
        return low, None
    above = format(int(prefix, 16) + 1, "x").rjust(len(prefix), "0")
    return low, above.ljust(ID_LENGTH, "0")


def short_id(item_id: str, neighbours: tuple[str | None, str | None], shown: int = SHORT_ID_SHOWN) -> str:
    """The shortest prefix of `item_id`, at least `shown` long, that neither neighbour in id order shares."""
    length = shown
    for other in neighbours:
        if other is not None:
            common = next((n for n, (a, b) in enumerate(zip(item_id, other)) if a != b), len(item_id))
            length = max(length, common + 1)
    return item_id[:length]


def item_cancelled(status: ItemStatus, now: dt.datetime) -> Change:
    """What one cancelled item becomes: the same as in a job cancel (its request aborted when in flight)."""
    return dict(cancel_sweeps(now))[status]


def retry_failed_allowed(bulk_status: str, outbox: dict[str, Any] | None) -> bool:
    """Whether retry-failed may start a new round: the job is completed and its last end's notification is
    delivered (a new round ends with a new outbox, which must not replace one still being delivered)."""
    return bulk_status == RETRY_FROM.value and not outbox_open(outbox)


def retry_item_allowed(bulk_status: str, outbox: dict[str, Any] | None) -> bool:
    """Whether an item of a job in `bulk_status` may be queued again.

    Not in a cancelled job (cancel is final); in a completed job only once the
    notification of its last end is delivered (every end is notified once).
    """
    if bulk_status == BulkStatus.cancelled.value:
        return False
    return bulk_status != RETRY_FROM.value or retry_failed_allowed(bulk_status, outbox)


def retry_undone(before: Mapping[str, Any]) -> Change:
    """An item queued again by item retry put back as it was (`before`: its stored fields then)."""
    return Change({name: before.get(name) for name in RETRIED_ITEM.set}, {"retry_count": -1})

# -- counters and the end ------------------------------------------------------------------------------


def tally(groups: Mapping[str, tuple[int, float | None]]) -> tuple[Counts, float | None]:
    """The counts by status and the mean duration of finished items, from (count, mean seconds) per status."""
    by_status: dict[str, int] = {s.value: groups.get(s.value, (0, None))[0] for s in ItemStatus}
    counts = Counts(**by_status)  # type: ignore[arg-type]
    timed = [(n, mean) for n, mean in (groups.get(s.value, (0, None)) for s in (ItemStatus.completed, ItemStatus.failed))
             if mean is not None]
    mean = sum(n * m for n, m in timed) / sum(n for n, _ in timed) if timed else None
    return counts, mean


def counters(counts: Counts, failed: list[Item], mean_seconds: float | None, now: dt.datetime,
             seconds_between: float, flagged: list[tuple[int, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """A job's derived fields (design.md, "Counters"): counters, error_summary (from its failed items) and ETA.

    With `flagged` ((queue position, verdict) of its completed items the quality gate flagged, in queue
    order), also `flagged_items` and `quality_summary`. `turned_down_items` counts the failed items the
    gate turned down.
    """
    fields = {
        "completed_items": counts.completed,
        "failed_items": counts.failed,
        "cancelled_items": counts.cancelled,
        "error_summary": summarize_errors(failed),
        "turned_down_items": sum(1 for item in failed if turned_down(item)),
        "estimated_completion": estimate_completion(now, counts.pending, mean_seconds, seconds_between),
    }
    if flagged is not None:
        fields.update(flagged_items=len(flagged), quality_summary=summarize_flagged(flagged))
    return fields


#: The items a job's `flagged_items` counts: completed, with a flagged verdict (the quality gate kept them).
FLAGGED_ITEM = (ItemStatus.completed, VerdictStatus.flagged)


@dataclass(frozen=True)
class Quota:
    """A user's limits on new bulk jobs (design.md, "Quotas"); 0 turns one off. A backend checks them in the
    same atomic step as the job's insert (`Store.create_bulk`)."""

    max_active_jobs: int = 0
    max_stored_bytes: int = 0


def over_quota(quota: Quota, active_jobs: int, stored_bytes: int, adds: int) -> QuotaExceeded | None:
    """Whether a new job of `adds` stored bytes is refused, given the user's active jobs and stored bytes: the
    active-jobs limit first (a job may end soon), then the stored bytes. None: admitted."""
    if quota.max_active_jobs and active_jobs >= quota.max_active_jobs:
        return QuotaExceeded("active_jobs", active_jobs, quota.max_active_jobs)
    if quota.max_stored_bytes and stored_bytes + adds > quota.max_stored_bytes:
        return QuotaExceeded("stored_bytes", stored_bytes, quota.max_stored_bytes, adds)
    return None


def over_count(which: str, have: int, max_count: int) -> QuotaExceeded | None:
    """Whether a new template or schedule (`which`: "templates", "schedules") is refused: the user has
    `max_count` (0: no limit) already."""
    if max_count and have >= max_count:
        return QuotaExceeded(which, have, max_count)
    return None


#: The statuses a job may end from (completed by a refresh, cancelled by a cancel).
ENDS_FROM = ACTIVE_BULK


def end_fields(kind: EventKind, channels: list[str], now: dt.datetime) -> dict[str, Any]:
    """A job's end (design.md, "The outbox and at-least-once delivery"): its status, time and outbox."""
    status = BulkStatus.completed if kind is EventKind.completed else BulkStatus.cancelled
    return {"status": status.value, "completed_at": now, "estimated_completion": None,
            "outbox": new_outbox(kind, channels, now), "notify_pending": bool(channels),
            "hook_pending": True, "notified_at": None}


# -- the outbox's steps --------------------------------------------------------------------------------

#: Conditions as alternatives of {field: (op, value)}: a step matches when all of one alternative hold.
Conditions = list[dict[str, tuple[str, Any]]]
_OPS: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "lt": operator.lt, "lte": operator.le}


def matches(step: Mapping[str, Any], conditions: Conditions) -> bool:
    return any(all(_OPS[op](step[k], v) for k, (op, v) in alt.items()) for alt in conditions)


def step_claim_conditions(now: dt.datetime) -> Conditions:
    """A step may be taken: pending and due, or held by a sender whose lock expired."""
    stamp = iso(now)
    return [{"state": ("eq", StepState.pending.value), "next_at": ("lte", stamp)},
            {"state": ("eq", StepState.sending.value), "lock_until": ("lt", stamp)}]


def step_held_conditions(owner: str) -> Conditions:
    """A step `owner` took and may record."""
    return [{"state": ("eq", StepState.sending.value), "owner": ("eq", owner)}]


def step_claimable(step: dict[str, Any], now: dt.datetime) -> bool:
    return matches(step, step_claim_conditions(now))


def step_taken(owner: str, now: dt.datetime, lock_seconds: float) -> dict[str, Any]:
    """The fields of a step taken for sending, locked until `lock_seconds` from now."""
    return {"state": StepState.sending.value, "owner": owner, "lock_until": iso(later(now, lock_seconds))}


def step_result(step: dict[str, Any], now: dt.datetime, error: str | None,
                retry_at: dt.datetime | None) -> dict[str, Any]:
    """The fields of a step after one try: sent, pending again at `retry_at`, or failed."""
    out: dict[str, Any] = {"attempts": step["attempts"] + 1, "owner": None, "lock_until": None}
    if error is None:
        out.update(state=StepState.sent.value, sent_at=iso(now), last_error=None)
    elif retry_at is not None:
        out.update(state=StepState.pending.value, next_at=iso(retry_at), last_error=error)
    else:
        out.update(state=StepState.failed.value, last_error=error)
    return out


def delivery_flags(outbox: dict[str, Any], now: dt.datetime | None) -> dict[str, Any]:
    """The job's flags after a step changed: open while a step is left; `notified_at` once done, if any was sent.

    `now` is given only after a try was recorded (`finish_step`).
    """
    still_open = outbox_open(outbox)
    flags: dict[str, Any] = {"notify_pending": still_open}
    if now is not None and not still_open and any(s["state"] == StepState.sent.value for s in outbox["steps"]):
        flags["notified_at"] = now
    return flags


# -- recurring schedules (design.md, "Recurring schedules") ----------------------------------------------

#: A schedule: `Schedule`'s fields as stored.
SCHEDULE_FIELDS = (
    Field("id", TEXT, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("name", PLAIN, REQUIRED),
    Field("cron", PLAIN, REQUIRED),
    Field("zone", PLAIN, REQUIRED),
    Field("status", PLAIN, REQUIRED),
    Field("source", JSON, dict),
    Field("options", JSON, dict),
    Field("created_at", TIME),
    Field("next_at", TIME),
    Field("last_at", TIME),
    Field("last_bulk_job_id", PLAIN),
    Field("last_error", PLAIN),
    Field("skipped_count", PLAIN, 0),
    Field("skipped_recent", JSON, list),
)

#: One occurrence of a schedule: `Occurrence`'s fields as stored.
OCCURRENCE_FIELDS = (
    Field("schedule_id", TEXT, REQUIRED),
    Field("at", TIME, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("state", PLAIN, REQUIRED),
    Field("owner", PLAIN),
    Field("claimed_at", TIME),
    Field("bulk_job_id", PLAIN),
    Field("error", PLAIN),
    Field("finished_at", TIME),
    Field("skipped", PLAIN, 0),
    Field("claim", PLAIN),
)

#: How many of the latest skipped occurrences a schedule keeps (the count keeps them all).
SKIPPED_KEPT = 10
#: Listing order of schedules: by name.
SCHEDULE_ORDER = ("name", "id")

#: pause and resume: from which status, to which (anything else is a no-op or refused; see schedules.py).
SCHEDULE_MOVES: dict[str, tuple[ScheduleStatus, ScheduleStatus]] = {
    "pause": (ScheduleStatus.active, ScheduleStatus.paused),
    "resume": (ScheduleStatus.paused, ScheduleStatus.active),
}


def new_schedule(schedule: Schedule) -> dict[str, Any]:
    """Every stored field of a new schedule."""
    return {f.name: getattr(schedule, f.name) for f in SCHEDULE_FIELDS}


def occurrence_id(schedule_id: str, at: dt.datetime) -> str:
    """The occurrence's unique key: its schedule and its time in UTC (design.md, "Exactly once per occurrence")."""
    return f"{schedule_id}@{iso(at)}"


def occurrence_key(schedule_id: str, at: dt.datetime) -> str:
    """The idempotency key of the occurrence's bulk job, derived from the occurrence's key."""
    return f"schedule:{occurrence_id(schedule_id, at)}"


def new_claim() -> str:
    """A fresh claim token: each claim of an occurrence, and each take-over, has its own."""
    return secrets.token_hex(8)


def claimed_occurrence(schedule: Schedule, at: dt.datetime, owner: str, now: dt.datetime,
                       skipped: int) -> dict[str, Any]:
    """Every stored field of an occurrence a processor has just taken (with a fresh claim token)."""
    fields = {f.name: f.fresh() for f in OCCURRENCE_FIELDS}
    fields.update(schedule_id=schedule.id, at=at, userId=schedule.userId, state=OccurrenceState.claimed.value,
                  owner=owner, claimed_at=now, skipped=skipped, claim=new_claim())
    return fields


def taken_over(owner: str, now: dt.datetime) -> dict[str, Any]:
    """A stale claim taken over by `owner` (its processor died or stalled): a new token fences the old holder."""
    return {"owner": owner, "claimed_at": now, "claim": new_claim()}


def occurrence_end(bulk_job_id: str | None, error: str | None, now: dt.datetime,
                   dropped: bool = False) -> dict[str, Any]:
    """A claimed occurrence's end: submitted, failed with `error`, or dropped (never decided, so not owed)."""
    state = (OccurrenceState.dropped if dropped else
             OccurrenceState.failed if error is not None else OccurrenceState.submitted)
    return {"state": state.value, "bulk_job_id": bulk_job_id, "error": error, "finished_at": now}


def decided(schedule: Schedule, at: dt.datetime, skipped: list[dt.datetime], skipped_count: int) -> dict[str, Any]:
    """The decision that occurrence `at` is queued and the ones before it skipped: `last_at` and `next_at`
    both `at` (its job is pending), the skipped ones added (design.md, "Exactly once per occurrence").

    Written only while `next_at` and `last_at` are still what the caller read and the schedule is active
    (`Store.advance_schedule`), so exactly one decision follows each state of the schedule.
    """
    recent = (schedule.skipped_recent + [str(iso(t)) for t in skipped])[-SKIPPED_KEPT:]
    return {"next_at": at, "last_at": at, "last_bulk_job_id": None, "last_error": None,
            "skipped_count": schedule.skipped_count + skipped_count, "skipped_recent": recent}


def pending(schedule: Schedule) -> bool:
    """An occurrence was decided and its job is not yet recorded: `last_at` and `next_at` are that occurrence."""
    return schedule.last_at is not None and schedule.last_at == schedule.next_at


def last_run(bulk_job_id: str | None, error: str | None) -> dict[str, Any]:
    """The decided occurrence's outcome, on its schedule (written while `last_at` is still that occurrence)."""
    return {"last_bulk_job_id": bulk_job_id, "last_error": error}


def advanced(schedule: Schedule, at: dt.datetime, next_at: dt.datetime | None, bulk_job_id: str | None,
             error: str | None, skipped: list[dt.datetime], skipped_count: int) -> dict[str, Any]:
    """A schedule moved past an occurrence found already finished while the schedule was not (a store
    written before occurrences were fenced): the next one, the last run, the skipped ones added."""
    return {**decided(schedule, at, skipped, skipped_count), "next_at": next_at, **last_run(bulk_job_id, error)}


# -- the HTTP server's records (bulkgen serve) ---------------------------------------------------------

#: An API token: `model.ApiToken`'s fields as stored (the token itself never is).
TOKEN_FIELDS = (
    Field("id", TEXT, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("token_hash", TEXT, REQUIRED),
    Field("admin", PLAIN, False),
    Field("email", PLAIN),
    Field("created_at", TIME),
    Field("revoked_at", TIME),
)

#: A state change: `model.StateChange`'s fields as stored (design.md, "Live progress").
CHANGE_FIELDS = (
    Field("seq", PLAIN, REQUIRED),
    Field("kind", PLAIN, REQUIRED),
    Field("record_id", TEXT, REQUIRED),
    Field("bulk_job_id", TEXT, REQUIRED),
    Field("userId", TEXT, REQUIRED),
    Field("status", PLAIN, REQUIRED),
    Field("at", TIME),
    Field("queue_position", PLAIN),
    Field("error", PLAIN),
)

#: How many state changes a MongoDB record keeps in its own history (older ones were long since read).
CHANGE_HISTORY = 20
