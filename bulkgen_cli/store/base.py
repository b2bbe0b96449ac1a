"""The store contract: the queue's verbs, shared by the SQLite and MongoDB backends.

Every method that changes state is atomic and conditional in the database
itself: races between processes resolve there, never in Python. A method that
loses a race changes nothing and says so in its return value. Times passed in
are UTC datetimes to the millisecond (`model.utcnow()`).
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from bulkgen_cli.core.model import (
    ApiToken, BulkJob, BulkStatus, Counts, Item, ItemStatus, Occurrence, Outcome, SavedTemplate, SaveOutcome,
    Schedule, ScheduleStatus, StateChange, utcnow,
)
from bulkgen_cli.store import rules
# Decided in rules.py; importable from here too.
from bulkgen_cli.store.rules import (  # noqa: F401
    CANCELLED_IN_FLIGHT, lease_lost_error, step_claimable, step_result,
)

#: How a command opens the store. read: a reading command; it never creates, upgrades or writes
#: the store, and none there is NoStore (exit 4). write: a writing command on an existing store.
#: create: a writing command that creates the store when there is none (submit, run).
OpenMode = Literal["read", "write", "create"]

#: The one processor lease that makes the whole store sequential.
PROCESSOR_LEASE = "processor"
#: The lease record holding the shared 429 cooldown.
COOLDOWN = "cooldown"


@dataclass(frozen=True)
class Lease:
    """Who holds the processor lease, until when."""

    owner: str
    expires_at: dt.datetime
    acquired_at: dt.datetime
    host: str
    pid: int


@dataclass(frozen=True)
class Usage:
    active_jobs: int
    stored_bytes: int


class Store(ABC):
    """A bulk-job queue. Backends: `sqlite.SqliteStore`, `mongo.MongoStore`."""

    #: The store's address with any password masked, for messages.
    display_url: str = ""

    # -- submit and read ---------------------------------------------------

    @abstractmethod
    def create_bulk(self, bulk: BulkJob, articles: list[dict[str, Any]],
                    limits: rules.Quota | None = None) -> tuple[BulkJob, bool]:
        """Store a bulk job and one queued item per article, all or nothing.

        No half job is ever claimable: if anything fails, nothing is left that
        a processor could start. When `bulk.idempotency_key` was already used
        by the same user, store nothing and return (existing job, False);
        otherwise (bulk, True). With `limits`, the user's usage is checked
        (`rules.over_quota`) in one atomic step with the insert, after the key
        (a replay is answered whatever the usage): over a limit, QuotaExceeded
        and nothing stored (design.md, "Quotas").
        """

    @abstractmethod
    def get_bulk(self, bulk_id: str) -> BulkJob | None:
        """The bulk job, or None when there is none with that id."""

    @abstractmethod
    def list_bulks(
        self,
        user: str | None = None,
        limit: int = 50,
        statuses: Iterable[BulkStatus] | None = None,
        group_id: str | None = None,
    ) -> list[BulkJob]:
        """Bulk jobs, newest first; of one user unless `user` is None; of one --split group."""

    @abstractmethod
    def put_setting(self, name: str, value: dict[str, Any]) -> None:
        """Keep a settings record (plain JSON) under `name`, replacing any: what one process tells every other
        (`bulkgen serve`'s allow-lists, read by every processor's schedule runs; design.md, "Quotas")."""

    @abstractmethod
    def get_setting(self, name: str) -> dict[str, Any] | None:
        """The settings record kept under `name`, or None."""

    @abstractmethod
    def usage(self, user: str) -> Usage:
        """What `user`'s jobs hold: how many are active (queued, processing, paused), and their stored bytes
        summed (`BulkJob.stored_bytes`); read from an index, for the quotas (design.md, "Quotas")."""

    @abstractmethod
    def list_items(self, bulk_id: str) -> list[Item]:
        """A bulk job's items in queue order."""

    @abstractmethod
    def completed_contents(self, bulk_id: str) -> list[tuple[str, int, Any]]:
        """(item id, queue position, content) of a bulk job's completed items, in queue order.

        A read of what the quality gate compares a new article with (design.md, "The quality gate"),
        without the rest of the records.
        """

    # -- reads of the repair (design.md, "Repair") ----------------------------------------

    @abstractmethod
    def item_counts(self, bulk_id: str) -> Counts:
        """A bulk job's items counted by status (a read: nothing is written)."""

    @abstractmethod
    def pending_bulk_ids(self) -> list[str]:
        """The ids of the bulk jobs that have a queued or processing item, sorted.

        One range of the items' status index: it costs what is pending, never what has ended.
        """

    # -- the processor's verbs -----------------------------------------------

    @abstractmethod
    def claim_next(
        self, owner: str, lease_seconds: float, now: dt.datetime, max_in_flight: int = 1, sent: bool = False
    ) -> Item | None:
        """Atomically take the next item, or None when nothing is claimable.

        Only an `owner` that holds a live processor slot (`acquire_processor_lease`)
        can claim, and each slot holds at most one item in flight (design.md,
        "Fencing"): a processor whose slot passed on while it was stalled claims
        nothing. Nothing is taken either while `max_in_flight` items are already
        `processing` anywhere in the store.

        Jobs whose `not_before` is later than `now` are not claimable yet.
        Order: by priority (high, normal, low), then oldest bulk job first, then
        queue_position. Items of paused and cancelled bulk jobs are never taken:
        a pause that committed before the claim wins. The item becomes
        `processing` with a lease for `owner` and the next fencing token
        (`Item.fence`, from a store-wide counter that only grows), its `attempts`
        grows by one, and its bulk job becomes `processing` (with `started_at`
        set the first time). Its try counts as sent at once only with `sent`
        (a local generator; `rules.claimed`).
        """

    @abstractmethod
    def heartbeat(self, item_id: str, owner: str, lease_seconds: float, now: dt.datetime,
                  sent: bool = False) -> bool:
        """Renew `owner`'s processor slot and the item's lease together: the check before a send.

        True only when `owner` still holds both (then both run until `now` +
        `lease_seconds`); False when either passed on, and then the item's lease
        is not extended. With `sent` (the check right before a request), the
        same write marks the try sent (`rules.renewed`).
        """

    def begin_attempt(self, item_id: str, owner: str, rejected: dict[str, Any] | None = None,
                      sent_at: dt.datetime | None = None) -> bool:
        """Count one more try of a held item (`attempts` and `retry_count` + 1), not sent yet.

        `rejected`: the quality gate's verdict on the article it turned down, kept as the item's
        `verdict` in the same write (it names how many were turned down: the next request asks anew).
        `sent_at`: the try is sent at once (a local generator's).
        """
        return self._write_held(item_id, owner, rules.one_more_try(rejected, sent_at))

    def finish_item(self, item_id: str, owner: str, outcome: Outcome, now: dt.datetime,
                    seconds_between_items: float = 0.0, fence: int | None = None) -> Counts | None:
        """Record an item's end and derive its job from its items, as one step.

        With `fence` (the claim's token: a reply in hand), written while the store
        still holds the item under that claim (`rules.answerable`): not taken by a
        newer claim, not cancelled, even past its lease. Without, while `owner`
        holds it. None (nothing written) when it may not be; else the job's
        refreshed counts (`refresh_counters`), with `ended_now` when this step
        recorded the job's end and its outbox. SQLite makes the item's end, the
        counters and the job's end one transaction; MongoDB writes the item first,
        then refreshes, and a crash between leaves a job that the repair finishes
        (design.md, "Repair").
        """
        written = self._write_where(item_id, rules.answerable(owner, fence), rules.finished(outcome, now), now)
        item = self.get_item(item_id)
        if item is None or not (written or rules.ended_by(item, outcome, now, fence)):
            return None
        # Where the refresh is a second write (MongoDB), a caller that tries again after it failed finds its
        # own end already written (`rules.ended_by`) and refreshes only.
        return self.refresh_counters(item.bulk_job_id, now, seconds_between_items)

    def release_item(self, item_id: str, owner: str, charge: bool = False, now: dt.datetime | None = None) -> bool:
        """Put a held item back in the queue at its place.

        Without `charge` its current try is not counted (a service that cannot be
        reached, a stop signal, a claim that found its bulk job paused); with it,
        the try stays counted (a failed try before a pause). False when `owner`
        no longer holds it. `now`: the time of the change (the change log's); a
        caller without a clock of its own gets the wall's.
        """
        return self._write_held(item_id, owner, rules.released(charge), utcnow() if now is None else now)

    def _write_held(self, item_id: str, owner: str, change: rules.Change, now: dt.datetime | None = None) -> bool:
        """Write `change` on an item in one conditional write, only while `owner` holds it (`rules.held`).

        False (nothing written) when it does not.
        """
        return self._write_where(item_id, rules.held(owner), change, now)

    @abstractmethod
    def _write_where(self, item_id: str, condition: dict[str, Any], change: rules.Change,
                     now: dt.datetime | None = None) -> bool:
        """Write `change` on an item in one conditional write, only while it meets `condition` (from rules.py).

        False (nothing written) when it does not. `now`: the time of a status change.
        """

    @abstractmethod
    def is_held(self, item_id: str, owner: str) -> bool:
        """Whether `owner` still holds the item (a read: cheap enough to poll)."""

    @abstractmethod
    def in_flight(self) -> list[Item]:
        """Items being processed now, anywhere in the store."""

    @abstractmethod
    def requeue_expired(self, now: dt.datetime, max_attempts: int) -> list[str]:
        """Take back items whose lease expired (their processor died or stalled).

        Each goes back to `queued` (its try stays counted, `retry_count` + 1), or to
        `failed` once it has used `max_attempts` tries, or to `cancelled` when its
        bulk job was cancelled meanwhile; a try whose request was never sent
        (`sent_at` unset) goes back uncounted (`rules.expired`). Returns the ids
        of the bulk jobs touched, whose counters the caller refreshes.
        """

    @abstractmethod
    def next_start(self, now: dt.datetime) -> dt.datetime | None:
        """The earliest `not_before` after `now` of a job waiting for it, or None."""

    @abstractmethod
    def next_lease_expiry(self) -> dt.datetime | None:
        """When the earliest lease of a `processing` item runs out, or None if none is held."""

    @abstractmethod
    def refresh_counters(
        self, bulk_id: str, now: dt.datetime, seconds_between_items: float = 0.0
    ) -> Counts:
        """Recompute a bulk job's counters, error_summary and ETA from its items.

        Items are the truth (design.md, "Invariants", 1): counters are never incremented. When
        nothing is pending and the job is queued, processing or paused, it becomes
        `completed` with `completed_at` set; exactly one caller sees
        `ended_now=True` for that end (design.md, "Invariants", 6).
        """

    @abstractmethod
    def set_bulk_state(
        self,
        bulk_id: str,
        allowed_from: Iterable[BulkStatus],
        to: BulkStatus,
        now: dt.datetime,
    ) -> bool:
        """Change the bulk job's status only if it is in `allowed_from`."""

    @abstractmethod
    def cancel_bulk(self, bulk_id: str, now: dt.datetime) -> bool:
        """Cancel a queued, processing or paused bulk job; True if this call did.

        Its queued items and its item in flight become `cancelled` (the processor
        holding that item sees it is no longer held and closes its request). On a
        job already cancelled, the item sweep runs again, so repeating a cancel
        that died half-way finishes it. The caller refreshes the counters.
        """

    @abstractmethod
    def retry_failed(self, bulk_id: str, now: dt.datetime) -> int:
        """Put a completed job's failed items back in the queue; the job becomes queued.

        Each keeps its `retry_count` (+ 1) and starts a new round (`attempts` 0).
        Returns how many items are queued again; 0 (nothing changed) unless the
        job is `completed` with failed items.
        """

    # -- single items (design.md, "Item state rules") ------------------------------------------------

    @abstractmethod
    def get_item(self, item_id: str) -> Item | None:
        """The item, or None when there is none with that id."""

    @abstractmethod
    def find_items(self, prefix: str, user: str | None, limit: int) -> list[Item]:
        """Items whose id starts with `prefix` (lower-case hex), of `user` unless None, in id order, at most `limit`.

        One index range query on the id (`rules.prefix_bounds`), never a scan.
        """

    @abstractmethod
    def item_neighbours(self, item_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """For each id, the ids just below and just above it among all items (for `rules.short_id`)."""

    @abstractmethod
    def cancel_item(self, item_id: str, from_status: ItemStatus, now: dt.datetime) -> Counts | None:
        """Cancel one item that is still `from_status` (queued, or processing: its request is then aborted).

        One conditional write on the item (its status the condition), then its
        job's counters are refreshed from its items, which records the job's end
        when nothing is left pending. None (nothing written) when the item is not
        `from_status` any more; else the refresh's counts (`ended_now`).
        """

    @abstractmethod
    def retry_item(self, item_id: str, from_status: ItemStatus, now: dt.datetime) -> Counts | None:
        """Queue a failed or cancelled item again (a new round, as retry-failed does), if it is still `from_status`.

        Refused (None, nothing left written) when its job is cancelled, or
        completed with its last end's notification still open
        (`rules.retry_item_allowed`). A completed job becomes queued again. Its
        counters are refreshed; returns their counts. With `from_status` queued
        the item is left as it is and only its completed job is queued again:
        that finishes a retry that died between its two writes (MongoDB).
        """

    # -- the notification outbox (design.md, "The outbox and at-least-once delivery") --------------------------------------
    #
    # A job's end (completed by `refresh_counters`, cancelled by `cancel_bulk`)
    # writes, in the same atomic step, an outbox with one pending step per
    # channel chosen at submit (`model.new_outbox`), and marks the job's
    # on-complete hook pending. Deliverers then work through it; a step once
    # `sent` is never sent again, and one whose deliverer died is taken back
    # when its lock expires.

    @abstractmethod
    def set_event(self, bulk_id: str, event_id: str, event: dict[str, Any]) -> bool:
        """Fill the outbox's event once; False if it is filled or the outbox is another end's."""

    @abstractmethod
    def claim_step(
        self, bulk_id: str, event_id: str, index: int, owner: str, now: dt.datetime, lock_seconds: float
    ) -> bool:
        """Take step `index` for sending: it is pending and due, or its sender's lock expired."""

    @abstractmethod
    def finish_step(
        self,
        bulk_id: str,
        event_id: str,
        index: int,
        owner: str,
        now: dt.datetime,
        error: str | None,
        retry_at: dt.datetime | None,
    ) -> bool:
        """Record a try of a held step: sent (no error), pending again at `retry_at`, or failed.

        When no step is left to deliver, the job leaves the list of open outboxes
        (and gets `notified_at` if anything was sent).
        """

    @abstractmethod
    def open_outboxes(self) -> list[BulkJob]:
        """Bulk jobs whose latest outbox still has steps to deliver."""

    @abstractmethod
    def claim_hook(self, bulk_id: str, event_id: str) -> bool:
        """Take the on-complete hook of this end: True for exactly one caller."""

    @abstractmethod
    def pending_hooks(self, since: dt.datetime) -> list[BulkJob]:
        """Bulk jobs that ended after `since` whose on-complete hook has not run."""

    # -- the processor lease ---------------------------------------------------

    @abstractmethod
    def acquire_processor_lease(
        self, owner: str, seconds: float, now: dt.datetime, host: str, pid: int, slots: int = 1
    ) -> bool:
        """Take or renew one of `slots` processor leases (see `slot_names`).

        True if `owner` holds one already (renewed), or one was free or expired
        (taken). With slots=1 the whole store is sequential (design.md, "Leases and slots").
        """

    @abstractmethod
    def release_processor_lease(self, owner: str) -> None:
        """Give up whatever slot `owner` holds."""

    @abstractmethod
    def set_cooldown(self, until: dt.datetime) -> None:
        """Ask every processor to send nothing before `until` (a 429); never shortens one."""

    @abstractmethod
    def cooldown_until(self) -> dt.datetime | None:
        """The shared 429 cooldown's end, or None."""

    @abstractmethod
    def processor_lease(self) -> Lease | None:
        """The current lease record (maybe expired), or None."""

    @abstractmethod
    def processor_leases(self) -> list[Lease]:
        """Every slot's lease record (maybe expired)."""

    # -- saved templates (design.md, "Saved templates") ---------------------------------------------------
    #
    # One template per (userId, name), each a single record: every verb is one
    # conditional write (or read) of that record, so no transaction is needed.

    @abstractmethod
    def save_template(self, template: SavedTemplate, replace: bool = False, max_count: int = 0) -> SaveOutcome:
        """Store `template` under its (userId, name), atomically.

        `max_count` (0: none): a new name is refused (QuotaExceeded, nothing written) when the user has that many
        templates already (`rules.over_count`), counted in one atomic step with the insert.

        When the user has none of that name it is stored (`created`). When one
        exists: with `replace` it takes that one's place whole, keeping its
        `created_at` (`replaced`); without, nothing is written (`exists`). Two
        racing saves of a new name: one is `created`, the other `exists` (or,
        with `replace`, `replaced`).
        """

    @abstractmethod
    def get_template(self, user: str, name: str) -> SavedTemplate | None:
        """The user's template of that name, or None (another user's is never returned)."""

    @abstractmethod
    def list_templates(self, user: str) -> list[SavedTemplate]:
        """The user's templates, by name."""

    @abstractmethod
    def remove_template(self, user: str, name: str) -> bool:
        """Delete the user's template of that name; False when there was none."""
    # -- the HTTP server: tokens and the change log (design.md, "Live progress") -----------------------

    #: Seconds after its number was taken within which a change may still be written (MongoDB takes the
    #: number before the write, so writes can land out of order); 0 where numbers are in commit order.
    change_lag: float = 0.0

    @abstractmethod
    def add_token(self, token: ApiToken) -> None:
        """Store a new API token (its hash only)."""

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The unrevoked token with this hash, or None (an indexed lookup)."""

    @abstractmethod
    def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        """Every token (revoked ones too), oldest first; of one user unless `user` is None."""

    @abstractmethod
    def revoke_token(self, token_id: str, now: dt.datetime) -> bool:
        """Revoke a token; False when there is none with that id or it was revoked already."""

    @abstractmethod
    def changes_since(self, after: int, limit: int = 500, user: str | None = None,
                      bulk_id: str | None = None, now: dt.datetime | None = None) -> list[StateChange]:
        """State changes of bulk jobs and items numbered above `after`, in number order: one page of at
        most `limit`; of one user's jobs, or of one job, when `user` or `bulk_id` is given (an indexed read).

        Every change of a job's or an item's status gets the next number of a
        store-wide sequence, written with the change itself. Where numbers are in
        commit order (`change_lag` 0) this is exact: a change numbered at or below
        `after` is never seen later. Otherwise the answer also holds the changes
        made in the `change_lag` seconds before `now`, whatever their number;
        callers dedupe by (seq, record_id).
        """

    @abstractmethod
    def prune_changes(self, before: dt.datetime, limit: int) -> int:
        """Drop from the log up to `limit` of the oldest changes made before `before`, in one bounded write;
        how many went (fewer than `limit`: none older is left). `changes_floor` then covers them."""

    @abstractmethod
    def changes_floor(self) -> int:
        """The highest number pruning may have dropped (0 when none was): every change numbered above it is
        still in the log, so a reader that has seen `n` below it may have missed some (design.md, "Live progress")."""

    @abstractmethod
    def last_change(self) -> int:
        """A number at or above every change written so far (0 when none): where a new reader starts.

        Numbers may be skipped (MongoDB takes one before a conditional write that then matches nothing).
        """

    # -- recurring schedules (design.md, "Recurring schedules") -----------------------------------------

    @abstractmethod
    def add_schedule(self, schedule: Schedule, max_count: int = 0) -> bool:
        """Store a new schedule; False (nothing stored) when its user has one of that name (a unique index).
        `max_count` (0: none): QuotaExceeded, nothing stored, when the user has that many schedules already,
        counted in one atomic step with the insert (`rules.over_count`)."""

    @abstractmethod
    def get_schedule(self, user: str, name: str) -> Schedule | None:
        """The user's schedule of that name, or None."""

    @abstractmethod
    def list_schedules(self, user: str | None = None) -> list[Schedule]:
        """Schedules by name; of one user unless `user` is None."""

    @abstractmethod
    def set_schedule_state(self, schedule_id: str, allowed_from: ScheduleStatus, to: ScheduleStatus,
                           fields: dict[str, Any]) -> bool:
        """Pause or resume: set the status `to` and `fields` only if the status is `allowed_from`."""

    @abstractmethod
    def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule and its occurrences; False when there was none. Its bulk jobs stay."""

    @abstractmethod
    def due_schedules(self, now: dt.datetime) -> list[Schedule]:
        """Active schedules whose `next_at` is `now` or earlier (every user's)."""

    @abstractmethod
    def next_schedule_at(self) -> dt.datetime | None:
        """The earliest `next_at` of any active schedule, or None: when `run --forever` must look next."""

    @abstractmethod
    def claim_occurrence(self, schedule: Schedule, at: dt.datetime, owner: str, now: dt.datetime,
                         stale_before: dt.datetime, skipped: int = 0) -> tuple[Occurrence, bool]:
        """Take the occurrence (schedule, `at` in UTC): one conditional write.

        design.md, "Exactly once per occurrence": the claim is one of its steps.

        The occurrence is inserted under a unique key (schedule id, `at`), so for
        each occurrence exactly one caller's insert succeeds. When it exists and is
        still `claimed` by a processor whose claim is older than `stale_before`
        (it died or stalled), one caller takes it over by a conditional update.
        Either way the claim gets a fresh token (`Occurrence.claim`), on which every
        later write of this holder is conditional. Returns (the occurrence, True)
        when this caller now holds it; (the occurrence as stored, False) otherwise:
        held by another, or finished.
        """

    @abstractmethod
    def get_occurrence(self, schedule_id: str, at: dt.datetime) -> Occurrence | None:
        """The occurrence (schedule, `at`), or None when there is no record of it."""

    @abstractmethod
    def finish_occurrence(self, held: Occurrence, fields: dict[str, Any]) -> bool:
        """Record a held occurrence's end (`rules.occurrence_end`) only while it is still `claimed` under
        `held`'s owner and token; False (nothing written) once it was taken over, dropped or finished."""

    @abstractmethod
    def drop_undecided(self, schedule_id: str, before: dt.datetime, fields: dict[str, Any]) -> int:
        """End as dropped (`fields`) every occurrence of the schedule before `before` that is still
        `claimed`, whoever holds it: each one conditional on that state. How many were dropped."""

    @abstractmethod
    def advance_schedule(self, schedule_id: str, expected_next: dt.datetime, expected_last: dt.datetime | None,
                         fields: dict[str, Any]) -> bool:
        """Decide, or move on (`rules.decided`, `rules.advanced`): write `fields` only while the schedule is
        active and its `next_at` and `last_at` are still what the caller read, so each step is written once;
        False (nothing written) otherwise."""

    @abstractmethod
    def set_last_run(self, schedule_id: str, at: dt.datetime, fields: dict[str, Any]) -> bool:
        """Record the decided occurrence's job or error (`rules.last_run`) while `last_at` is still `at`."""

    @abstractmethod
    def list_occurrences(self, schedule_id: str, limit: int = 20) -> list[Occurrence]:
        """A schedule's occurrences, latest first."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slot_names(slots: int) -> list[str]:
    """The lease records of `slots` slots; slot 1 keeps the name of the single processor lease."""
    return [PROCESSOR_LEASE] + [f"{PROCESSOR_LEASE}-{n}" for n in range(2, slots + 1)]
