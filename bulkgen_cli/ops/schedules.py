"""Recurring schedules, as a library (design.md, "Recurring schedules"): the CLI calls it, and so will a server.

A schedule submits the same articles file (or a saved template with its
values) as a bulk job at each time a cron expression names, in an IANA time
zone. The file's text is stored, not its path, so that a processor on another
machine can submit it. Only `run --forever` submits occurrences (`Ticker`);
each one exactly once however many processors run (`fire`; design.md,
"Exactly once per occurrence").

Cron expressions are read by cronsim, imported only here and only when a
schedule is added, listed or due: `bulkgen --help` and the other commands
never load it. The input layer (and with it yaml, about 20 ms of a cold start)
is imported where a schedule's articles or a template's name rule are read,
not when the module loads: `status` renders times through this module. Nothing here prints or exits; errors are `BulkgenError`s.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from bulkgen_cli.ops import jobs
from bulkgen_cli.core.errors import (
    BulkgenError, InvalidTransition, NameTaken, NotFound, QuotaExceeded, StoreUnavailable, UsageError, none_named,
)
from bulkgen_cli.core.events import ScheduleFired, Waiting
from bulkgen_cli.core.model import (
    Occurrence, OccurrenceState, SavedTemplate, Schedule, ScheduleStatus, iso, new_id, utcnow,
)
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import Store
from bulkgen_cli.store.rules import Quota
from bulkgen_cli.core.text import duration, quoted
from bulkgen_cli.delivery.netpolicy import Policy, Refused, check_channels
from bulkgen_cli.input import sources
from bulkgen_cli.ops.options import JobOptions
from bulkgen_cli.core.zones import local_time, zone_of  # noqa: F401  (zone_of: the CLI checks --zone with it)

if TYPE_CHECKING:
    from bulkgen_cli.input.manifest import Manifest

#: The five fields of a cron expression, in order, and what each accepts.
CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31 or L"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 or SUN-SAT (0 and 7 are Sunday), MON#2 or 5L"),
)
#: cronsim's words for its fields, as its errors name them ("Bad day-of-week").
_CRONSIM_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
#: The usual shorthands, as the five fields they stand for.
NICKNAMES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
             "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
#: A claimed occurrence whose processor has not finished it after this long is taken over (it died).
STALE_CLAIM_SECONDS = 60.0
#: Missed occurrences are counted one by one up to this many (a per-minute schedule: about 69 days).
MAX_COUNTED = 100_000
#: How often `run --forever` looks for a due schedule, at most (seconds); and after a store error.
LOOK_SECONDS = 1.0
LOOK_AFTER_ERROR = 5.0
UTC = dt.timezone.utc
#: A schedule added by anyone but an admin (or the operator, on the CLI) runs at most this often (docs/serving.md, "Limits").
MIN_INTERVAL = dt.timedelta(minutes=5)
#: How many of a cron's next times are looked at for its shortest gap.
GAP_LOOKAHEAD = 1000
#: The settings record `bulkgen serve` writes at start: its allow-lists, read at every run of a schedule made
#: over HTTP (design.md, "Quotas").
SERVE_POLICY = "serve_policy"


# -- names, cron expressions and zones -------------------------------------------------------------------


def check_name(name: str) -> str:
    """A schedule's name: the rule a saved template's name follows (templates.NAME_RULE), or UsageError (exit 2)."""
    from bulkgen_cli.input.templates import NAME_HELP, NAME_RULE

    if not NAME_RULE.fullmatch(name):
        raise UsageError(f"schedule name {quoted(name)} is not allowed: use {NAME_HELP}.")
    return name


def parse_cron(expr: str) -> str:
    """The expression, checked, as five fields (a shorthand such as @daily expanded); UsageError says which field."""
    text = " ".join(expr.split())
    fields = NICKNAMES.get(text.lower(), text).split()
    if len(fields) != 5:
        raise UsageError(f"--cron {quoted(expr)} has {len(fields)} field{'s' if len(fields) != 1 else ''}; a cron "
                         "expression has 5: minute hour day-of-month month day-of-week (e.g. \"0 6 * * MON\"), "
                         f"or one of {', '.join(NICKNAMES)}.")
    from cronsim import CronSim, CronSimError

    normal = " ".join(fields)
    try:
        CronSim(normal, dt.datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise UsageError(_never(expr, fields) or _cron_problem(expr, fields, str(exc))) from None
    return normal


def _never(expr: str, fields: list[str]) -> str | None:
    """When each field is valid but the day of month never occurs in the months chosen (31 2: February 31st)."""
    from cronsim import CronSim, CronSimError

    try:  # the day alone (any month) and the months alone (day 1) are valid
        for alone in (fields[:3] + ["*"] + fields[4:], fields[:2] + ["1"] + fields[3:]):
            CronSim(" ".join(alone), dt.datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return None
    return (f"--cron {quoted(expr)} never runs: day {quoted(fields[2])} of month {quoted(fields[3])} never occurs; "
            "pick a day those months have, or L for their last day.")


def _cron_problem(expr: str, fields: list[str], message: str) -> str:
    """One sentence naming the field cronsim refused, its text, and what it accepts."""
    for number, (name, allowed) in enumerate(CRON_FIELDS):
        if _CRONSIM_FIELDS[number] in message.lower():
            return (f"--cron {quoted(expr)}: field {number + 1} ({name}) {quoted(fields[number])} is not valid; "
                    f"it takes {allowed}, with * , - and / (e.g. \"0 6 * * MON\" is 06:00 every Monday).")
    return f"--cron {quoted(expr)} is not a valid cron expression ({message})."


def shortest_gap(cron: str, zone: str, after: dt.datetime) -> tuple[dt.timedelta, dt.datetime] | None:
    """The shortest time between two of the cron's next GAP_LOOKAHEAD times, and the first time of that pair."""
    best: tuple[dt.timedelta, dt.datetime] | None = None
    previous = None
    for number, at in enumerate(occurrences(cron, zone, after)):
        if number >= GAP_LOOKAHEAD:
            break
        if previous is not None and (best is None or at - previous < best[0]):
            best = (at - previous, previous)
        previous = at
    return best


def check_interval(expr: str, cron: str, zone: str, now: dt.datetime) -> None:
    """UsageError when the cron runs more often than MIN_INTERVAL anywhere in its next times."""
    gap = shortest_gap(cron, zone, now)
    if gap is not None and gap[0] < MIN_INTERVAL:
        raise UsageError(f"--cron {quoted(expr)} runs {duration(gap[0].total_seconds())} apart (at "
                         f"{local_time(gap[1], zone)} and {local_time(gap[1] + gap[0], zone)}); a schedule may run at "
                         f"most every {duration(MIN_INTERVAL.total_seconds())} unless an admin adds it: use "
                         "\"*/5 * * * *\" or slower.")


def occurrences(cron: str, zone: str, after: dt.datetime, reverse: bool = False) -> Iterator[dt.datetime]:
    """The cron's times in `zone`, as UTC, strictly after `after` (or before it, with `reverse`).

    The zone decides daylight-saving changes (cronsim follows Debian cron): a
    time that does not exist runs once, right after the clock jumps; a time
    that happens twice runs once, the first time.
    """
    from cronsim import CronSim

    it = CronSim(cron, after.astimezone(zone_of(zone)), reverse=reverse)
    for local in it:
        at = local.astimezone(UTC)
        # Started inside a repeated hour, cronsim may name that hour's first pass, before `after`.
        if (at < after) if reverse else (at > after):
            yield at


def next_after(cron: str, zone: str, after: dt.datetime) -> dt.datetime | None:
    return next(occurrences(cron, zone, after), None)


@dataclass(frozen=True)
class Due:
    """What a due schedule owes: its latest occurrence, and the earlier ones missed since `next_at`."""

    latest: dt.datetime
    #: the latest few skipped occurrences, oldest first (rules.SKIPPED_KEPT)
    skipped: list[dt.datetime]
    #: how many were skipped (counted up to MAX_COUNTED)
    skipped_count: int


def due(schedule: Schedule, now: dt.datetime) -> Due | None:
    """The occurrences from `next_at` up to `now`: the latest is submitted, the others are skipped."""
    if schedule.next_at is None or schedule.next_at > now:
        return None
    seen: deque[dt.datetime] = deque(maxlen=rules.SKIPPED_KEPT + 1)
    count = 0
    for at in occurrences(schedule.cron, schedule.zone, schedule.next_at - dt.timedelta(seconds=1)):
        if at > now or count == MAX_COUNTED:
            break
        seen.append(at)
        count += 1
    if count == MAX_COUNTED:  # too many to count: the latest, and the few before it, found backwards
        back = occurrences(schedule.cron, schedule.zone, now + dt.timedelta(seconds=1), reverse=True)
        seen = deque(reversed([at for _, at in zip(range(rules.SKIPPED_KEPT + 1), back)]))
    if not seen:
        return None
    latest = seen.pop()
    return Due(latest, list(seen)[-rules.SKIPPED_KEPT:], count - 1)


# -- what a schedule submits -------------------------------------------------------------------------------


def file_source(path: str, fmt: str | None = None, mode: str | None = None) -> dict[str, Any]:
    """An articles file read and validated exactly as `submit` would (ManifestError: nothing stored), as stored."""
    return source_of(path, None, None, fmt, mode)


def source_of(file: str | None, template: str | None, values: str | None, fmt: str | None, mode: str | None,
              saved: sources.SavedLookup | None = None) -> dict[str, Any]:
    """What a schedule queues, checked as `submit` checks it (input/sources.py): an articles FILE, a template FILE
    with --values ROWS, or a saved --template NAME (`saved(NAME)` reads it) with --values ROWS; as stored. The
    texts are kept; of a saved template only its name (each run reads it, so `template save --replace` reaches
    the later runs)."""
    source = sources.read(file, template, values, fmt, mode)
    sources.manifest_of(source, saved, mode=mode)
    return sources.record(source)


def manifest_of(store: Store, schedule: Schedule) -> Manifest:
    """The validated articles of one occurrence, from the stored texts (and the saved template as it is now)."""
    source = sources.from_record(schedule.source)
    if source is None:
        raise UsageError(f"schedule {quoted(schedule.name)} has a source of unknown kind "
                         f"{quoted(schedule.source.get('kind'))}.")

    def saved(name: str) -> SavedTemplate:  # removed since: NotFound, and the run is recorded as failed
        found = store.get_template(schedule.userId, name)
        if found is None:
            raise NotFound(f"schedule {quoted(schedule.name)} uses template {quoted(name)}, which is gone: save it "
                           "again or remove the schedule",
                           cli=f" (`bulkgen template save {name} FILE`, `bulkgen schedule remove {schedule.name}`).",
                           http=f" (PUT /api/templates/{name}, DELETE /api/schedules/{schedule.name}).")
        return found

    return sources.manifest_of(source, saved, mode=schedule.options.get("mode"))


def job_name(schedule: Schedule, parsed: Manifest, at: dt.datetime) -> str:
    """The bulk job's name: the file's (or --job-name), then the schedule and the run's time in its zone."""
    base = schedule.options.get("name") or parsed.name
    return f"{base} ({schedule.name} {local_time(at, schedule.zone)})"


def too_often(schedule: Schedule) -> bool:
    """The schedule's cron runs more often than MIN_INTERVAL somewhere in its next times."""
    gap = shortest_gap(schedule.cron, schedule.zone, schedule.next_at or schedule.created_at or utcnow())
    return gap is not None and gap[0] < MIN_INTERVAL


def permission(store: Store, schedule: Schedule,
               firing: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """A run's check of a schedule made over HTTP (design.md, "Quotas"): (the notification policy its job
    follows, made from `bulkgen serve`'s current allow-lists and the owner's current address; None: why it may
    not run). `firing` (a run at its time, not run-now): a cron faster than MIN_INTERVAL needs an owner with a
    live admin token. A schedule made on the CLI is the operator's own: its stored policy (none), no check."""
    stored = schedule.options.get("notify_policy")
    if not stored:
        return stored, None
    live = [t for t in store.list_tokens(schedule.userId) if t.revoked_at is None]
    if not live:
        return None, (f"its owner {quoted(schedule.userId)} has no live API token (revoked?); it runs again once "
                      "resumed with a live token")
    if firing and not any(t.admin for t in live) and too_often(schedule):
        # A schedule added before the limit existed, or by a token no longer an admin (docs/serving.md, "Limits").
        return None, (f"its cron {quoted(schedule.cron)} runs more often than every "
                      f"{int(MIN_INTERVAL.total_seconds() // 60)} minutes, which only an admin's schedule may; add it "
                      "again with a slower cron")
    allow = store.get_setting(SERVE_POLICY) or stored
    policy = Policy(tuple(allow.get("webhook_allow") or ()), tuple(allow.get("email_allow") or ()),
                    next((t.email for t in live if t.email), None))
    try:
        check_channels(list(schedule.options.get("notify") or []), policy)
    except Refused as exc:
        return None, f"its notifications are no longer allowed: {exc}"
    return policy.to_record(), None


def quota_of(store: Store, schedule: Schedule) -> Quota | None:
    """The limits a schedule's job is stored under (design.md, "Quotas"): a schedule a user (not an admin) made
    over HTTP follows the per-user limits `bulkgen serve` last started with (kept in the store beside its
    allow-lists); any other schedule, or a store no server ran on, has none. A schedule made over HTTP before
    `limited` was recorded is a user's unless its owner holds a live admin token."""
    limited = schedule.options.get("limited")
    if limited is None and schedule.options.get("notify_policy"):
        limited = not any(t.admin for t in store.list_tokens(schedule.userId) if t.revoked_at is None)
    if not limited:
        return None
    recorded = store.get_setting(SERVE_POLICY) or {}
    if "max_active_jobs" not in recorded:
        return None
    return Quota(int(recorded["max_active_jobs"]), int(recorded.get("max_stored_mb") or 0) * 1024 * 1024)


def submit_for(store: Store, schedule: Schedule, at: dt.datetime, key: str | None,
               notify_policy: dict[str, Any] | None = None) -> jobs.Submitted:
    """Store the schedule's articles as one bulk job for its user (idempotent on `key`), its notifications
    following `notify_policy` (from `permission`), within its user's limits (`quota_of`: QuotaExceeded)."""
    parsed = manifest_of(store, schedule)
    options = JobOptions.from_record(schedule.options)
    return jobs.submit(store, parsed, schedule.userId, **options.submit_args() | {
        "name": job_name(schedule, parsed, at), "idempotency_key": key,
        "notify_policy": notify_policy,  # a schedule made over HTTP (netpolicy)
        "limits": quota_of(store, schedule)})


# -- the verbs -----------------------------------------------------------------------------------------------


def add(store: Store, user: str, name: str, cron: str, zone: str, source: dict[str, Any],
        options: dict[str, Any], now: dt.datetime | None = None, limited: bool = False,
        max_count: int = 0) -> Schedule:
    """Store a schedule after checking everything (name, cron, zone); its first run is the next after `now`.
    `limited` (a user's, not an admin's): the cron may run at most every MIN_INTERVAL; `max_count`: the user's
    schedules limit (QuotaExceeded), checked by the store with the insert."""
    now = now or utcnow()
    schedule = Schedule(id=new_id(), userId=user, name=check_name(name), cron=parse_cron(cron),
                        zone=zone_of(zone).key, status=ScheduleStatus.active.value, source=source,
                        options=options, created_at=now)
    if limited:
        check_interval(cron, schedule.cron, schedule.zone, now)
    schedule.next_at = next_after(schedule.cron, schedule.zone, now)
    if not store.add_schedule(schedule, max_count):
        raise NameTaken(f"you have a schedule named {quoted(name)} already; nothing was stored",
                        cli=f" (`bulkgen schedule remove {name}` first, or choose another name).",
                        http=" (DELETE it first, or choose another name).")
    return schedule


def get(store: Store, user: str, name: str) -> Schedule:
    schedule = store.get_schedule(user, name)
    if schedule is None:
        raise none_named("schedule", name)
    return schedule


def list_for(store: Store, user: str, all_users: bool = False) -> list[Schedule]:
    return store.list_schedules(None if all_users else user)


def set_state(store: Store, user: str, name: str, action: str, now: dt.datetime | None = None) -> tuple[Schedule, bool]:
    """Pause or resume (rules.SCHEDULE_MOVES): (the schedule now, whether this call changed it).

    Resuming starts from the next occurrence after now: what fell in the pause is not owed.
    """
    now = now or utcnow()
    allowed_from, to = rules.SCHEDULE_MOVES[action]
    schedule = get(store, user, name)
    if schedule.status == to.value:
        return schedule, False
    fields = {"next_at": next_after(schedule.cron, schedule.zone, now)} if to is ScheduleStatus.active else {}
    if not store.set_schedule_state(schedule.id, allowed_from, to, fields):
        current = get(store, user, name)
        if current.status == to.value:
            return current, False
        raise InvalidTransition(f"schedule {quoted(name)} changed meanwhile; try again.")
    return get(store, user, name), True


def using_template(store: Store, user: str, template: str) -> list[str]:
    """The names of `user`'s schedules whose runs read the saved template `template`."""
    return [s.name for s in store.list_schedules(user)
            if s.source.get("kind") == "template" and s.source.get("template") == template]


def remove(store: Store, user: str, name: str) -> Schedule:
    """Delete the schedule and its occurrence records; the bulk jobs it made stay."""
    schedule = get(store, user, name)
    store.remove_schedule(schedule.id)
    return schedule


def run_now(store: Store, user: str, name: str, now: dt.datetime | None = None) -> jobs.Submitted:
    """Submit the schedule's articles now, once, outside its times (paused or not); its times are unchanged."""
    schedule = get(store, user, name)
    policy, refused = permission(store, schedule)
    if refused is not None:
        raise UsageError(f"schedule {quoted(name)} cannot run: {refused}.")
    return submit_for(store, schedule, now or utcnow(), None, policy)


# -- occurrences: exactly once (design.md, "Exactly once per occurrence") -------------------------------------


def tick(store: Store, owner: str, now: dt.datetime | None = None,
         on_problem: Callable[[Schedule, BulkgenError], None] | None = None) -> list[ScheduleFired]:
    """Submit every due schedule's latest occurrence (as processor `owner`); what was done, for the view.

    A schedule this processor cannot handle (its zone unknown to this machine's
    tzdata, say) holds up no other: it goes to `on_problem`, or, without one, the
    first such error is raised once the others are done. A store error stops the look.
    """
    now = now or utcnow()
    fired: list[ScheduleFired] = []
    problems: list[BulkgenError] = []
    for schedule in store.due_schedules(now):
        try:
            fired += fire(store, schedule, owner, now)
        except StoreUnavailable:
            raise
        except BulkgenError as exc:
            problems.append(exc)
            if on_problem is not None:
                on_problem(schedule, exc)
    if problems and on_problem is None:
        raise problems[0]
    return fired


def fire(store: Store, schedule: Schedule, owner: str, now: dt.datetime) -> list[ScheduleFired]:
    """Handle a due schedule as read (design.md, "Exactly once per occurrence"): first the occurrence decided
    last, if its job is not recorded yet (a live holder is waited for, a stale one taken over); then the
    latest due occurrence: claim it, decide it on the schedule, queue its job, record it, move on.

    What was queued, for the view. A StoreUnavailable leaves the claim in place: it goes stale and another
    processor (or this one, later) finishes it, idempotently.
    """
    fired: list[ScheduleFired] = []
    if schedule.last_at is not None:
        done, event = _finish_last(store, schedule, owner, now)
        fired += event
        if not done:  # its holder is alive and queuing it: look again later
            return fired
        if rules.pending(schedule):  # moved on just now: handle what is due from the schedule as it is now
            current = store.get_schedule(schedule.userId, schedule.name)
            if (current is None or current.id != schedule.id or current.last_at != schedule.last_at
                    or rules.pending(current) or not _due(current, now)):
                return fired
            schedule = current
    return fired + _fire_latest(store, schedule, owner, now)


def _due(schedule: Schedule, now: dt.datetime) -> bool:
    return (schedule.status == ScheduleStatus.active.value and schedule.next_at is not None
            and schedule.next_at <= now)


def _finish_last(store: Store, schedule: Schedule, owner: str,
                 now: dt.datetime) -> tuple[bool, list[ScheduleFired]]:
    """The occurrence decided last (`last_at`) finished first, so that jobs are made in occurrence order:
    (whether it is finished now, what this call queued). A pending schedule then moves on."""
    assert schedule.last_at is not None
    at, fired = schedule.last_at, []
    held = store.get_occurrence(schedule.id, at)
    if held is not None and held.state == OccurrenceState.claimed.value:  # decided, its job not recorded
        stale = now - dt.timedelta(seconds=STALE_CLAIM_SECONDS)
        held, mine = store.claim_occurrence(schedule, at, owner, now, stale, held.skipped)
        if mine:  # its holder died or stalled: queue it with the same key (a job it made is handed back)
            fired = [e for e in [_queue(store, schedule, held, now)] if e is not None]
            held = store.get_occurrence(schedule.id, at)
        if held is not None and held.state == OccurrenceState.claimed.value:
            return False, fired  # a live holder is queuing it
    if held is not None and schedule.last_bulk_job_id is None and schedule.last_error is None:
        store.set_last_run(schedule.id, at, rules.last_run(held.bulk_job_id, held.error))  # its holder died
    if rules.pending(schedule):
        store.advance_schedule(schedule.id, at, at, {"next_at": next_after(schedule.cron, schedule.zone, at)})
    return True, fired


def _fire_latest(store: Store, schedule: Schedule, owner: str, now: dt.datetime) -> list[ScheduleFired]:
    """Claim the latest due occurrence, check, decide it (one conditional write on the schedule), queue it."""
    owed = due(schedule, now)
    if owed is None:  # next_at names no time of the cron (a store edited by hand): start again from now
        if schedule.next_at is not None and schedule.next_at <= now:
            store.advance_schedule(schedule.id, schedule.next_at, schedule.last_at,
                                   {"next_at": next_after(schedule.cron, schedule.zone, now)})
        return []
    assert schedule.next_at is not None
    stale = now - dt.timedelta(seconds=STALE_CLAIM_SECONDS)
    held, mine = store.claim_occurrence(schedule, owed.latest, owner, now, stale, owed.skipped_count)
    if not mine:
        if held.state != OccurrenceState.claimed.value:  # finished, the schedule not moved (a store from before)
            _advance(store, schedule, owed, held.bulk_job_id, held.error)
        return []
    dropped = rules.occurrence_end(None, None, now, dropped=True)
    if not _still_owed(store, schedule, owed.latest) or not _decide(store, schedule, owed, held):
        store.finish_occurrence(held, dropped)  # never decided: not owed, and no one can decide it now
        return []
    store.drop_undecided(schedule.id, owed.latest, dropped)  # earlier claims can never be decided now
    event = _queue(store, schedule, held, now)
    if event is not None:
        store.advance_schedule(schedule.id, owed.latest, owed.latest,
                               {"next_at": next_after(schedule.cron, schedule.zone, owed.latest)})
    return [] if event is None else [event]


def _still_owed(store: Store, schedule: Schedule, at: dt.datetime) -> bool:
    """A look before deciding: still active and not moved past `at`. Only a shortcut: the decision itself
    (`_decide`) is conditional, so a processor that stalls after this look decides nothing stale."""
    current = store.get_schedule(schedule.userId, schedule.name)
    return (current is not None and current.id == schedule.id and current.status == ScheduleStatus.active.value
            and current.next_at is not None and current.next_at <= at)


def _decide(store: Store, schedule: Schedule, owed: Due, held: Occurrence) -> bool:
    """The decision that `owed.latest` is queued and the earlier ones skipped: one conditional write on the
    schedule (as read: still active, `next_at` and `last_at` unchanged). False: not decided by this claim,
    unless the claim it took over had decided it (the schedule then names it as its last occurrence)."""
    assert schedule.next_at is not None
    fields = rules.decided(schedule, owed.latest, owed.skipped, owed.skipped_count)
    if store.advance_schedule(schedule.id, schedule.next_at, schedule.last_at, fields):
        return True
    current = store.get_schedule(schedule.userId, schedule.name)
    return current is not None and current.id == schedule.id and current.last_at == held.at


def _queue(store: Store, schedule: Schedule, held: Occurrence, now: dt.datetime) -> ScheduleFired | None:
    """Make the decided occurrence's job (idempotent on its key: a repeat makes no second one) and record it
    on the occurrence (conditional on this claim) and on the schedule. None when another claim finished it."""
    bulk_id, error = None, None
    try:
        policy, refused = permission(store, schedule, firing=True)
        if refused is not None:  # paused, and says why (`schedule list` shows the last run's error)
            store.set_schedule_state(schedule.id, *rules.SCHEDULE_MOVES["pause"], {})
            error = f"paused: {refused}."
        else:
            bulk_id = submit_for(store, schedule, held.at, rules.occurrence_key(schedule.id, held.at), policy).ids[0]
    except StoreUnavailable:
        raise
    except QuotaExceeded as exc:  # this time only: the next time runs if the user is under the limit again
        error = f"skipped: {exc.args[0]}."
    except BulkgenError as exc:  # the saved template is gone, or its values no longer make a valid file
        fact = exc.fact()  # the record is shown by every front end: no command's hint
        error = " ".join((fact if fact.endswith(".") else fact + ".").split())[:500]
    if not store.finish_occurrence(held, rules.occurrence_end(bulk_id, error, now)):
        return None
    store.set_last_run(schedule.id, held.at, rules.last_run(bulk_id, error))
    return ScheduleFired(schedule.name, schedule.userId, held.at, schedule.zone, bulk_id, error, held.skipped)


def _advance(store: Store, schedule: Schedule, owed: Due, bulk_id: str | None, error: str | None) -> None:
    assert schedule.next_at is not None
    fields = rules.advanced(schedule, owed.latest, next_after(schedule.cron, schedule.zone, owed.latest), bulk_id,
                            error, owed.skipped, owed.skipped_count)
    store.advance_schedule(schedule.id, schedule.next_at, schedule.last_at, fields)


class Ticker:
    """`run --forever`'s look at the schedules: a thread with its own store connection (runner.Runner starts it).

    It looks at most once a second (one indexed read), submits what is due, and
    tells the processors when the next occurrence is (`next_due`), so that an
    idle processor wakes up for it. It never holds up an item in flight.
    """

    def __init__(self, store: Store, owner: str, on_event: Callable[[Any], None],
                 clock: Callable[[], dt.datetime] = utcnow):
        self.store, self.owner, self.on_event, self.clock = store, owner, on_event, clock
        self.stopped = threading.Event()
        #: the thread running `run`, when one does
        self.thread: threading.Thread | None = None
        self._next: dt.datetime | None = None

    def next_due(self) -> dt.datetime | None:
        """The next occurrence of any active schedule, as last read."""
        return self._next

    def stop(self) -> None:
        """Stop looking; wait for a look under way to end; close the store connection."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        self.store.close()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                wait = self.step()
            except Exception as exc:  # noqa: BLE001 - a defect or odd data must not end the schedules silently
                self.on_event(Waiting(f"schedules: unexpected {type(exc).__name__}: {exc}", LOOK_AFTER_ERROR))
                wait = LOOK_AFTER_ERROR
            self.stopped.wait(wait)

    def step(self) -> float:
        """One look: submit what is due; how long to wait before the next look."""
        problems: list[str] = []
        try:
            now = self.clock()
            self._next = self.store.next_schedule_at()
            if self._next is not None and self._next <= now:
                for fired in tick(self.store, self.owner, now, lambda s, exc: problems.append(f"{s.name}: {exc}")):
                    self.on_event(fired)
                self._next = self.store.next_schedule_at()
        except BulkgenError as exc:  # the store is down: look again later
            problems = [str(exc)]
        for problem in problems:  # a schedule that stays due would otherwise be looked at again at once
            self.on_event(Waiting(f"schedules: {problem}", LOOK_AFTER_ERROR))
        if problems:
            return LOOK_AFTER_ERROR
        if self._next is None:
            return LOOK_SECONDS
        ahead = (self._next - self.clock()).total_seconds()
        # Still due after the look: another processor holds the occurrence (it is queuing it): look again in a
        # second, not at once.
        return LOOK_SECONDS if ahead <= 0 else min(max(ahead, 0.01), LOOK_SECONDS)


# -- as data -------------------------------------------------------------------------------------------------


def document(schedule: Schedule) -> dict[str, Any]:
    """A schedule as `schedule list --json` shows it: times in UTC (ISO) and in its zone; no stored text."""
    source = {k: v for k, v in schedule.source.items() if not k.endswith("text")}
    active = schedule.status == ScheduleStatus.active.value
    last = None if schedule.last_at is None else {
        "at": iso(schedule.last_at), "at_local": local_time(schedule.last_at, schedule.zone),
        "bulk_job_id": schedule.last_bulk_job_id, "error": schedule.last_error}
    return {
        "id": schedule.id, "name": schedule.name, "userId": schedule.userId, "cron": schedule.cron,
        "zone": schedule.zone, "status": schedule.status, "created_at": iso(schedule.created_at),
        "next_run": iso(schedule.next_at) if active else None,
        "next_run_local": local_time(schedule.next_at, schedule.zone) if active else None,
        "source": source, "job": dict(schedule.options), "last_run": last,
        "skipped": {"count": schedule.skipped_count, "recent": list(schedule.skipped_recent)},
    }
