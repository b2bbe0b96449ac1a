"""Recurring schedules (design.md, "Recurring schedules"): the store verbs on both backends, the library's
occurrences (latest only, skipped ones recorded, exactly once, a dead or stalled claimer, DST), and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading

import pytest

from bulkgen_cli.ops import jobs, schedules
from bulkgen_cli.core.errors import ManifestError, NameTaken, NotFound, UsageError
from bulkgen_cli.core.model import OccurrenceState, Schedule, ScheduleStatus, iso, new_id
from bulkgen_cli.store import rules
from tests.cli_helpers import EXAMPLES, ROOT, base_env
from tests.files import write_articles

UTC = dt.timezone.utc
DAY0 = dt.datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def source() -> dict:
    return schedules.file_source(str(EXAMPLES / "articles.yaml"))


def add(store, name="daily", cron="0 6 * * *", zone="UTC", user="alice", now=DAY0, **options) -> Schedule:
    opts = {"name": None, "mode": None, "priority": "normal", "notify": [], **options}
    return schedules.add(store, user, name, cron, zone, source(), opts, now)


def scheduled_jobs(store, user="alice"):
    return [b for b in store.list_bulks(user, 1000) if (b.idempotency_key or "").startswith("schedule:")]


# -- the store verbs (both backends) ------------------------------------------------------------------


def test_add_get_list_names_are_per_user(store):
    first = add(store, "daily")
    assert first.next_at == dt.datetime(2026, 11, 3, 6, 0, tzinfo=UTC)
    got = store.get_schedule("alice", "daily")
    assert got is not None and got.id == first.id and got.source["text"] == (EXAMPLES / "articles.yaml").read_text()
    assert got.next_at == first.next_at and got.created_at == DAY0 and got.status == "active"
    with pytest.raises(NameTaken, match="already"):
        add(store, "daily", cron="0 7 * * *")
    assert store.get_schedule("alice", "daily").cron == "0 6 * * *"  # nothing stored
    add(store, "daily", user="bob")  # the same name for another user is another schedule
    add(store, "another")
    assert [s.name for s in store.list_schedules("alice")] == ["another", "daily"]
    assert len(store.list_schedules()) == 3 and store.get_schedule("carol", "daily") is None


def test_pause_resume_and_what_is_due(store):
    daily = add(store, "daily")
    add(store, "weekly", cron="0 6 * * MON")
    assert store.next_schedule_at() == daily.next_at
    later = DAY0 + dt.timedelta(days=1)
    assert [s.name for s in store.due_schedules(later)] == ["daily"]
    paused, changed = schedules.set_state(store, "alice", "daily", "pause", later)
    assert changed and paused.status == "paused"
    assert schedules.set_state(store, "alice", "daily", "pause", later) == (paused, False)
    assert store.due_schedules(later) == [] and store.next_schedule_at() == dt.datetime(2026, 11, 9, 6, 0, tzinfo=UTC)
    # Resumed three days later: it starts from the next time after the resume, nothing made up.
    resumed, changed = schedules.set_state(store, "alice", "daily", "resume", DAY0 + dt.timedelta(days=3))
    assert changed and resumed.status == "active" and resumed.next_at == dt.datetime(2026, 11, 6, 6, 0, tzinfo=UTC)
    assert not store.set_schedule_state(daily.id, ScheduleStatus.paused, ScheduleStatus.active, {})  # conditional
    with pytest.raises(NotFound):
        schedules.set_state(store, "bob", "daily", "pause")


def test_claim_occurrence_once_then_a_stale_claim_is_taken_over_once(store):
    daily = add(store)
    at, now = daily.next_at, daily.next_at + dt.timedelta(seconds=5)
    stale = now - dt.timedelta(seconds=60)
    first, mine = store.claim_occurrence(daily, at, "p1", now, stale, 2)
    assert mine and first.state == "claimed" and first.owner == "p1" and first.skipped == 2 and first.at == at
    assert first.claim and store.get_occurrence(daily.id, at) == first
    again, mine = store.claim_occurrence(daily, at, "p2", now, stale)
    assert not mine and again.owner == "p1" and again.claim == first.claim
    # p1 stalled: 61 s on, its claim is stale, and exactly one of two callers takes it over, with a new token.
    later = now + dt.timedelta(seconds=61)
    took = [store.claim_occurrence(daily, at, owner, later, later - dt.timedelta(seconds=60)) for owner in ("p2", "p3")]
    assert [mine for _, mine in took] == [True, False]
    taker = took[0][0]
    assert taker.owner == "p2" and taker.claim not in (None, first.claim) and took[1][0].claim == taker.claim
    assert not store.finish_occurrence(first, rules.occurrence_end("b1", None, later))  # the old token is fenced
    assert store.finish_occurrence(taker, rules.occurrence_end("b1", None, later))
    assert not store.finish_occurrence(taker, rules.occurrence_end("b2", None, later))  # finished once
    [done] = store.list_occurrences(daily.id)
    assert (done.state, done.bulk_job_id, done.owner) == ("submitted", "b1", "p2")
    # Finished, it is never taken over, however old.
    assert not store.claim_occurrence(daily, at, "p4", later + dt.timedelta(days=1), later + dt.timedelta(days=1))[1]
    assert store.get_occurrence(daily.id, at + dt.timedelta(days=1)) is None


def test_a_claim_is_fenced_by_its_token_not_its_owner(store):
    """The same processor name taking a stale claim over (a restarted processor) still fences its old claim."""
    daily = add(store)
    at = daily.next_at
    old, _ = store.claim_occurrence(daily, at, "p1", at, at)
    new, mine = store.claim_occurrence(daily, at, "p1", at + dt.timedelta(seconds=61), at + dt.timedelta(seconds=1))
    assert mine and new.owner == old.owner and new.claim != old.claim
    assert not store.finish_occurrence(old, rules.occurrence_end(None, None, at, dropped=True))
    assert store.get_occurrence(daily.id, at).state == "claimed"


def test_undecided_claims_before_a_time_are_dropped_whoever_holds_them(store):
    daily = add(store)
    times = [daily.next_at + dt.timedelta(days=n) for n in range(4)]
    held = [store.claim_occurrence(daily, t, f"p{n}", t, t)[0] for n, t in enumerate(times)]
    assert store.finish_occurrence(held[1], rules.occurrence_end("b1", None, times[1]))
    dropped = rules.occurrence_end(None, None, times[3], dropped=True)
    assert store.drop_undecided(daily.id, times[2], dropped) == 1  # only the claimed one before the time
    assert {o.at: o.state for o in store.list_occurrences(daily.id)} == {
        times[0]: "dropped", times[1]: "submitted", times[2]: "claimed", times[3]: "claimed"}
    assert not store.finish_occurrence(held[0], rules.occurrence_end("b0", None, times[3]))  # its holder: nothing
    assert store.drop_undecided(daily.id, times[2], dropped) == 0
    assert store.drop_undecided(new_id(), times[3], dropped) == 0


def test_advance_is_written_once_per_step_while_active(store):
    daily = add(store)
    step = rules.advanced(daily, daily.next_at, daily.next_at + dt.timedelta(days=1), "b1", None,
                          [DAY0], 1)
    assert not store.advance_schedule(daily.id, daily.next_at, DAY0, step)  # last_at is not what was read
    assert store.advance_schedule(daily.id, daily.next_at, None, step)
    assert not store.advance_schedule(daily.id, daily.next_at, None, step)  # the same step again: nothing
    got = store.get_schedule("alice", "daily")
    assert got.next_at == daily.next_at + dt.timedelta(days=1) and got.skipped_count == 1
    assert got.skipped_recent == [iso(DAY0)] and got.last_bulk_job_id == "b1" and got.last_at == daily.next_at
    schedules.set_state(store, "alice", "daily", "pause", DAY0)
    assert not store.advance_schedule(daily.id, got.next_at, got.last_at, {"next_at": None})  # paused: nothing
    assert store.get_schedule("alice", "daily").next_at == got.next_at
    assert not store.advance_schedule(new_id(), got.next_at, got.last_at, {"next_at": None})


def test_a_decision_leaves_the_schedule_pending_until_its_run_is_recorded(store):
    daily = add(store)
    at = daily.next_at
    assert store.advance_schedule(daily.id, at, None, rules.decided(daily, at, [], 0))
    got = store.get_schedule("alice", "daily")
    assert rules.pending(got) and (got.last_at, got.next_at, got.last_bulk_job_id) == (at, at, None)
    assert not store.advance_schedule(daily.id, at, None, rules.decided(daily, at, [], 0))  # decided once
    assert not store.set_last_run(daily.id, at + dt.timedelta(days=1), rules.last_run("b9", None))
    assert store.set_last_run(daily.id, at, rules.last_run("b1", None))
    assert store.get_schedule("alice", "daily").last_bulk_job_id == "b1"
    assert not store.set_last_run(new_id(), at, rules.last_run("b1", None))


def test_remove_takes_its_occurrences_along_but_not_its_jobs(store):
    daily = add(store)
    schedules.tick(store, "p1", DAY0 + dt.timedelta(days=1))
    assert len(store.list_occurrences(daily.id)) == 1 and len(scheduled_jobs(store)) == 1
    assert schedules.remove(store, "alice", "daily").id == daily.id
    assert store.get_schedule("alice", "daily") is None and store.list_occurrences(daily.id) == []
    assert len(scheduled_jobs(store)) == 1
    with pytest.raises(NotFound):
        schedules.remove(store, "alice", "daily")


# -- occurrences ------------------------------------------------------------------------------------


def test_a_processor_down_for_days_submits_the_latest_only_and_records_the_skipped(store):
    daily = add(store)  # 06:00 UTC daily; first run Nov 3
    now = dt.datetime(2026, 11, 5, 9, 0, tzinfo=UTC)  # Nov 3, 4 and 5 are due
    [fired] = schedules.tick(store, "p1", now)
    assert fired.at == dt.datetime(2026, 11, 5, 6, 0, tzinfo=UTC) and fired.skipped == 2 and fired.error is None
    [bulk] = scheduled_jobs(store)
    assert bulk.id == fired.bulk_job_id and bulk.total_items == 12
    assert bulk.idempotency_key == rules.occurrence_key(daily.id, fired.at)
    assert bulk.name == "Home coffee guide (daily 2026-11-05 06:00 UTC)"
    got = store.get_schedule("alice", "daily")
    assert got.next_at == dt.datetime(2026, 11, 6, 6, 0, tzinfo=UTC) and got.last_at == fired.at
    assert got.skipped_count == 2 and got.skipped_recent == ["2026-11-03T06:00:00.000Z", "2026-11-04T06:00:00.000Z"]
    assert got.last_bulk_job_id == bulk.id
    assert schedules.tick(store, "p2", now + dt.timedelta(minutes=5)) == []  # nothing due: nothing new
    [next_day] = schedules.tick(store, "p2", now + dt.timedelta(days=1))
    assert next_day.skipped == 0 and len(scheduled_jobs(store)) == 2
    assert store.get_schedule("alice", "daily").skipped_count == 2
    doc = schedules.document(store.get_schedule("alice", "daily"))
    assert doc["skipped"]["count"] == 2 and doc["last_run"]["bulk_job_id"] == next_day.bulk_job_id
    assert doc["next_run_local"] == "2026-11-07 06:00 UTC" and "text" not in doc["source"]


def test_the_skipped_list_keeps_the_latest_few_and_counts_all(store):
    add(store, "often", cron="*/5 * * * *")
    [fired] = schedules.tick(store, "p1", DAY0 + dt.timedelta(hours=2))
    got = store.get_schedule("alice", "often")
    assert fired.skipped == got.skipped_count == 23 and len(got.skipped_recent) == rules.SKIPPED_KEPT
    assert got.skipped_recent[-1] == iso(DAY0 + dt.timedelta(hours=1, minutes=55))


def test_a_claimer_that_died_before_submitting_is_finished_by_another_once(store):
    daily = add(store)
    now = daily.next_at + dt.timedelta(seconds=1)
    store.claim_occurrence(daily, daily.next_at, "dead", now, now)  # claimed, then its processor died
    assert schedules.tick(store, "p2", now + dt.timedelta(seconds=10)) == []  # a live claim is left alone
    assert scheduled_jobs(store) == []
    [fired] = schedules.tick(store, "p2", now + dt.timedelta(seconds=61))
    assert fired.at == daily.next_at and len(scheduled_jobs(store)) == 1
    assert store.list_occurrences(daily.id)[0].owner == "p2"


def test_a_claimer_that_died_after_submitting_leaves_one_job(store):
    daily = add(store)
    now = daily.next_at + dt.timedelta(seconds=1)
    store.claim_occurrence(daily, daily.next_at, "dead", now, now)
    # It stored the job (same idempotency key), then died before recording it.
    made = schedules.submit_for(store, daily, daily.next_at, rules.occurrence_key(daily.id, daily.next_at))
    [fired] = schedules.tick(store, "p2", now + dt.timedelta(seconds=61))
    assert fired.bulk_job_id == made.ids[0] and len(scheduled_jobs(store)) == 1
    assert store.get_schedule("alice", "daily").last_bulk_job_id == made.ids[0]


def test_a_finished_occurrence_whose_processor_died_before_moving_the_schedule_is_not_repeated(store):
    """A store written before occurrences were fenced: finished, and the schedule not moved on."""
    daily = add(store)
    now = daily.next_at + dt.timedelta(seconds=1)
    held, _ = store.claim_occurrence(daily, daily.next_at, "dead", now, now)
    store.finish_occurrence(held, rules.occurrence_end("b-dead", None, now))
    assert schedules.tick(store, "p2", now + dt.timedelta(seconds=2)) == [] and scheduled_jobs(store) == []
    got = store.get_schedule("alice", "daily")
    assert got.last_bulk_job_id == "b-dead" and got.next_at == daily.next_at + dt.timedelta(days=1)


def test_a_processor_that_died_after_deciding_has_its_run_queued_by_another(store):
    """Decided on the schedule, then the processor died before the job: the schedule stays due (pending), a live
    claim is waited for, a stale one is taken over and the job made once, before the next occurrence's."""
    daily = add(store)
    at, now = daily.next_at, daily.next_at + dt.timedelta(seconds=1)
    held, _ = store.claim_occurrence(daily, at, "dead", now, now)
    assert store.advance_schedule(daily.id, at, None, rules.decided(daily, at, [], 0))
    assert [s.name for s in store.due_schedules(now)] == ["daily"]
    assert schedules.tick(store, "p2", now + dt.timedelta(seconds=10)) == [] and scheduled_jobs(store) == []
    next_day = at + dt.timedelta(days=1, seconds=5)
    fired = schedules.tick(store, "p2", next_day)  # its claim is stale: queued, then the next day's
    assert [f.at for f in fired] == [at, at + dt.timedelta(days=1)]
    jobs_made = sorted(scheduled_jobs(store), key=lambda b: (b.created_at, b.id))
    assert [b.idempotency_key for b in jobs_made] == [rules.occurrence_key(daily.id, f.at) for f in fired]
    assert [o.state for o in store.list_occurrences(daily.id)] == ["submitted", "submitted"]
    got = store.get_schedule("alice", "daily")
    assert got.skipped_count == 0 and got.last_bulk_job_id == fired[1].bulk_job_id
    # The dead processor's late writes change nothing.
    assert not store.finish_occurrence(held, rules.occurrence_end(None, None, next_day, dropped=True))


def test_a_stalled_claimer_does_not_submit_once_the_schedule_moved_past_it(store, monkeypatch):
    """A claims Nov 3; before it submits, B handles Nov 4 (A's claim went stale meanwhile): A submits nothing."""
    daily = add(store)
    claim = store.claim_occurrence
    nov4 = dt.datetime(2026, 11, 4, 7, 0, tzinfo=UTC)

    def stalled(schedule, at, owner, now, stale_before, skipped=0):
        got = claim(schedule, at, owner, now, stale_before, skipped)
        if owner == "A":
            monkeypatch.setattr(store, "claim_occurrence", claim)
            assert [f.at for f in schedules.tick(store, "B", nov4)] == [nov4.replace(hour=6)]
        return got

    monkeypatch.setattr(store, "claim_occurrence", stalled)
    assert schedules.tick(store, "A", dt.datetime(2026, 11, 3, 6, 1, tzinfo=UTC)) == []
    assert [b.idempotency_key for b in scheduled_jobs(store)] == [rules.occurrence_key(daily.id, nov4.replace(hour=6))]
    states = {o.at.day: o.state for o in store.list_occurrences(daily.id)}
    assert states == {3: OccurrenceState.dropped.value, 4: OccurrenceState.submitted.value}


def test_a_file_that_no_longer_makes_a_job_fails_that_run_and_the_schedule_goes_on(store):
    daily = add(store)
    broken = Schedule(**{**daily.__dict__, "source": {**daily.source, "text": "items: []\n"}})
    [fired] = schedules.fire(store, broken, "p1", DAY0 + dt.timedelta(days=1))
    assert fired.bulk_job_id is None and "has 0 items" in fired.error
    got = store.get_schedule("alice", "daily")
    assert got.last_error == fired.error and got.next_at == daily.next_at + dt.timedelta(days=1)
    assert store.list_occurrences(daily.id)[0].state == "failed" and scheduled_jobs(store) == []


def test_a_hand_edited_next_time_off_the_cron_starts_again_from_now(store):
    daily = add(store)
    off = daily.next_at + dt.timedelta(minutes=7)
    assert store.advance_schedule(daily.id, daily.next_at, None, {"next_at": off})
    assert schedules.tick(store, "p1", off + dt.timedelta(minutes=1)) == []
    assert store.get_schedule("alice", "daily").next_at == daily.next_at + dt.timedelta(days=1)


def test_run_now_submits_once_outside_the_times(store):
    daily = add(store, notify=["email:ops@example.com"], priority="low")
    schedules.set_state(store, "alice", "daily", "pause")
    done = schedules.run_now(store, "alice", "daily", DAY0)
    [bulk] = store.list_bulks("alice")
    assert done.ids == [bulk.id] and bulk.idempotency_key is None and "(daily " in bulk.name
    assert bulk.notify == ["email:ops@example.com"] and bulk.priority == "low"
    assert store.get_schedule("alice", "daily").next_at == daily.next_at


def atomic_mongo(client, lock):
    """A MongoStore on a shared mongomock client whose every single-document operation is atomic, as in
    MongoDB (mongomock's insert checks _id, then writes: not atomic across threads); operations interleave."""
    from bulkgen_cli.store.mongo import MongoStore

    class Atomic:
        def __init__(self, collection):
            self._collection = collection

        def __getattr__(self, name):
            attr = getattr(self._collection, name)
            if not callable(attr):
                return attr

            def call(*args, **kwargs):
                with lock:
                    return attr(*args, **kwargs)
            return call

    store = MongoStore(client, "bulkgen", "mongodb://mock")
    for name in ("bulks", "items", "leases", "keys", "meta", "schedules", "occurrences"):
        setattr(store, name, Atomic(getattr(store, name)))
    return store


def test_four_threads_with_their_own_connections_submit_each_occurrence_once(backend, tmp_path):
    """The library-level race: four processors look at the same due schedules at the same moment, day after day."""
    if backend.name == "sqlite":
        from bulkgen_cli.store.sqlite import SqliteStore

        stores = [SqliteStore(tmp_path / "race.db") for _ in range(4)]
    else:
        import mongomock

        client, lock = mongomock.MongoClient(tz_aware=True), threading.Lock()
        stores = [atomic_mongo(client, lock) for _ in range(4)]
    for n in range(3):
        add(stores[0], f"s{n}", cron=f"{n} 6 * * *")
    fired: list = []
    for day in range(3, 9, 2):  # every other day: one skipped each time after the first
        now = dt.datetime(2026, 11, day, 12, 0, tzinfo=UTC)
        barrier = threading.Barrier(4)

        def look(n):
            barrier.wait()
            fired.extend(schedules.tick(stores[n], f"p{n}", now))

        threads = [threading.Thread(target=look, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    keys = [b.idempotency_key for b in scheduled_jobs(stores[0])]
    assert len(keys) == len(set(keys)) == len(fired) == 9  # 3 schedules x 3 looks, each once
    for n in range(3):
        got = stores[0].get_schedule("alice", f"s{n}")
        assert got.skipped_count == 2 and got.next_at == dt.datetime(2026, 11, 8, 6, n, tzinfo=UTC)
        assert [o.state for o in stores[0].list_occurrences(got.id)] == ["submitted"] * 3
    for s in stores:
        s.close()


# -- daylight saving (Europe/Berlin) -------------------------------------------------------------------


def fire_through(store, start, hours):
    """Look every 5 minutes for `hours` hours from `start`, as run --forever would; the times submitted, in UTC."""
    out = []
    for step in range(hours * 12 + 1):
        out += [f.at for f in schedules.tick(store, "p1", start + dt.timedelta(minutes=5 * step))]
    return sorted(out)


@pytest.mark.parametrize("day, expected", [
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST. 02:30 does not exist: it runs once, at 03:00 CEST.
    ("2026-03-29", {"30 2 * * *": ["2026-03-29T01:00", "2026-03-30T00:30"],
                    "0 6 * * *": ["2026-03-29T04:00", "2026-03-30T04:00"]}),
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET. 02:30 happens twice: it runs once, the first time.
    ("2026-10-25", {"30 2 * * *": ["2026-10-25T00:30", "2026-10-26T01:30"],
                    "0 6 * * *": ["2026-10-25T05:00", "2026-10-26T05:00"]}),
])
def test_daylight_saving_days_in_berlin_run_each_time_once(store, day, expected):
    start = dt.datetime.fromisoformat(day).replace(tzinfo=UTC) - dt.timedelta(hours=12)
    for n, cron in enumerate(expected):
        add(store, f"s{n}", cron=cron, zone="Europe/Berlin", now=start)
    submitted = fire_through(store, start, 48)
    want = sorted(dt.datetime.fromisoformat(t).replace(tzinfo=UTC) for times in expected.values() for t in times)
    assert submitted == want
    names = sorted(b.name for b in scheduled_jobs(store))
    assert len(names) == len(set(names)) == 4
    if day == "2026-03-29":  # the job says when it ran, in the zone's own words
        assert "Home coffee guide (s0 2026-03-29 03:00 CEST)" in names


def test_occurrences_follow_the_zone():
    nov = dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
    every_half_hour = schedules.occurrences("*/30 * * * *", "Europe/Berlin", nov)
    first = [next(every_half_hour) for _ in range(6)]  # the repeated hour runs at both of its real times
    assert [t.strftime("%H:%M") for t in first] == ["22:30", "23:00", "23:30", "00:00", "00:30", "01:00"]
    assert schedules.next_after("0 6 * * MON", "Europe/Berlin", DAY0) == dt.datetime(2026, 11, 9, 5, 0, tzinfo=UTC)


# -- checks at add ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cron, message", [
    ("0 6 * * MONX", "field 5 (day of week) 'MONX' is not valid; it takes 0-7 or SUN-SAT"),
    ("61 6 * * *", "field 1 (minute) '61' is not valid; it takes 0-59"),
    ("0 24 * * *", "field 2 (hour) '24' is not valid"),
    ("0 6 32 * *", "field 3 (day of month) '32' is not valid; it takes 1-31 or L"),
    ("0 6 31 2 *", "'0 6 31 2 *' never runs: day '31' of month '2' never occurs; pick a day those months have, or L"),
    ("0 6 31 4,6 *", "never runs: day '31' of month '4,6' never occurs"),
    ("0 6 * 13 *", "field 4 (month) '13' is not valid; it takes 1-12 or JAN-DEC"),
    ("0 6 * *", "has 4 fields; a cron expression has 5"),
    ("@fortnightly", "has 1 field; a cron expression has 5"),
])
def test_a_bad_cron_expression_names_its_field(cron, message):
    with pytest.raises(UsageError) as err:
        schedules.parse_cron(cron)
    assert message in str(err.value)


def test_shorthands_and_zones():
    assert schedules.parse_cron(" @weekly ") == "0 0 * * 0" and schedules.parse_cron("0  6 * * mon") == "0 6 * * mon"
    assert schedules.zone_of("Europe/Berlin").key == "Europe/Berlin"
    with pytest.raises(UsageError, match="did you mean Europe/Berlin"):
        schedules.zone_of("europe/berlin")
    with pytest.raises(UsageError, match="did you mean America/New_York"):
        schedules.zone_of("America/New_Yrok")
    with pytest.raises(UsageError, match="is not a known time zone; use an IANA name"):
        schedules.zone_of("../../etc/passwd")
    for bad in ("", "a b", "-x", "x" * 65, "ü"):
        with pytest.raises(UsageError):
            schedules.check_name(bad)


def test_the_file_is_checked_as_submit_checks_it(tmp_path):
    short = write_articles(tmp_path / "short.yaml", [f"T{n}" for n in range(9)])
    with pytest.raises(ManifestError) as err:
        schedules.file_source(str(short))
    assert "has 9 items; a bulk job takes 10 to 50." in str(err.value)
    csv = write_articles(tmp_path / "a.csv", [f"T{n}" for n in range(10)])
    got = schedules.file_source(str(csv))
    assert got["format"] == "csv" and got["text"] == csv.read_text() and got["file"] == str(csv)


# -- the CLI ---------------------------------------------------------------------------------------


def test_schedule_commands_end_to_end(cli):
    articles = str(EXAMPLES / "articles.yaml")
    added = cli("schedule", "add", "weekly", "--cron", "0 6 * * MON", "--zone", "Europe/Berlin", articles,
                "--priority", "high", "--job-name", "Coffee", "--json")
    assert added.code == 0, added.err
    doc = json.loads(added.out)
    assert doc["job"] == {"name": "Coffee", "mode": None, "priority": "high", "notify": [], "quality": "warn",
                          "quality_ratio": 0.7}
    assert doc["next_run_local"].endswith((" CET", " CEST")) and " 06:00 " in doc["next_run_local"]
    assert "Schedule weekly added" not in added.err  # --json: the record on stdout, no message on stderr
    assert cli("schedule", "pause", "weekly", "--json").err == ""
    assert cli("schedule", "resume", "weekly", "--json").err == ""
    taken = cli("schedule", "add", "weekly", "--cron", "0 7 * * MON", articles)
    assert taken.code == 4 and "you have a schedule named 'weekly' already" in taken.err  # as template save: exit 4
    listed = cli("schedule", "list")
    assert listed.code == 0 and "weekly" in listed.out and "0 6 * * MON" in listed.out and "Europe/Berlin" in listed.out
    assert cli("schedule", "pause", "weekly").err.startswith("Schedule weekly: active -> paused")
    assert "already paused" in cli("schedule", "pause", "weekly").err
    assert json.loads(cli("schedule", "list", "--json").out)[0]["next_run"] is None
    assert "paused -> active" in cli("schedule", "resume", "weekly").err
    ran = cli("schedule", "run", "weekly")
    assert ran.code == 0 and "schedule weekly" in ran.err
    status = json.loads(cli("status", ran.out.strip(), "--json").out)["bulk_job"]
    assert status["priority"] == "high" and status["name"].startswith("Coffee (weekly ")
    assert cli("run").code == 0
    plain = cli("run").err  # plain run says which schedule runs next, and who queues scheduled runs
    assert "Schedule 'weekly' (" in plain and "): next run is" in plain
    assert cli("schedule", "remove", "weekly").code == 0
    assert json.loads(cli("schedule", "list", "--json").out) == []
    assert "No schedules yet" in cli("schedule", "list").err


def test_bad_input_at_add_stores_nothing(cli, tmp_path):
    articles = str(EXAMPLES / "articles.yaml")
    cases = [
        (["--cron", "0 6 * * MONX"], "field 5 (day of week) 'MONX' is not valid"),
        (["--cron", "0 6 * * MON", "--zone", "Europe/Berlinn"], "did you mean Europe/Berlin?"),
        (["--cron", "0 6 * * MON", "--mode", "poems"], "--mode must be one of topic, keywords, trends, spin"),
    ]
    for flags, message in cases:
        result = cli("schedule", "add", "weekly", *flags, articles)
        assert result.code == 2 and message in result.err and "Traceback" not in result.err
    short = write_articles(tmp_path / "short.yaml", [f"T{n}" for n in range(9)])
    result = cli("schedule", "add", "weekly", "--cron", "0 6 * * MON", str(short), "--json")
    assert result.code == 2 and "short.yaml: has 9 items" in result.err
    assert json.loads(result.out)["error"]["problems"][0]["file"] == str(short)
    assert cli("schedule", "add", "Bad Name", "--cron", "0 6 * * MON", articles).code == 2
    upper = cli("schedule", "add", "Weekly", "--cron", "0 6 * * MON", articles)  # the templates' name rule
    assert upper.code == 2 and "use 1 to 64 lowercase letters, digits, '-' and '_'" in upper.err
    assert cli("schedule", "add", "week.ly", "--cron", "0 6 * * MON", articles).code == 2
    template = cli("schedule", "add", "weekly", "--cron", "0 6 * * MON", str(EXAMPLES / "city-guides.yaml"))
    assert template.code == 2 and "give it with its rows" in template.err and "submit it" not in template.err
    assert cli("schedule", "add", "weekly", "--cron", "0 6 * * MON").code == 2  # no file
    assert cli("schedule", "add", "weekly", articles).code == 2  # no --cron
    listed = cli("schedule", "list")
    assert listed.code == 4 and "no store at" in listed.err  # not even the store was created


def test_schedule_add_creates_a_missing_store_and_says_so(cli, tmp_path):
    articles = str(EXAMPLES / "articles.yaml")
    typo = tmp_path / "typo.db"
    first = cli("schedule", "add", "weekly", "--cron", "0 6 * * MON", articles, "--store", f"sqlite:///{typo}")
    assert first.code == 0 and f"There was no store at sqlite:///{typo}: a new one was created there." in first.err
    assert "Schedule weekly added" in first.err and "run --forever" in first.err
    named = json.loads(cli("schedule", "add", "monthly", "--cron", "@monthly", articles, "--name", "Coffee", "--json",
                           "--store", f"sqlite:///{typo}").out)
    assert named["job"]["name"] == "Coffee"  # --name, as submit's (--job-name is the same option)
    second = cli("schedule", "add", "daily", "--cron", "0 6 * * *", articles, "--store", f"sqlite:///{typo}")
    assert second.code == 0 and "no store" not in second.err


def test_schedules_are_per_user(cli):
    articles = str(EXAMPLES / "articles.yaml")
    assert cli("schedule", "add", "weekly", "--cron", "0 6 * * MON", articles).code == 0
    for verb in ("pause", "resume", "remove", "run"):
        result = cli("schedule", verb, "weekly", "--user", "bob")
        assert result.code == 3 and "no schedule 'weekly' for this user" in result.err
    assert json.loads(cli("schedule", "list", "--json", "--user", "bob").out) == []
    assert cli("schedule", "add", "weekly", "--cron", "0 7 * * *", articles, "--user", "bob").code == 0
    both = cli("schedule", "list", "--all-users").out
    assert "tester" in both and "bob" in both and "User" in both


@pytest.mark.parametrize("verb", ["add", "list", "pause", "resume", "remove", "run"])
def test_every_schedule_command_has_help_and_is_documented(cli, verb):
    result = cli("schedule", verb, "--help")
    assert result.code == 0 and "Exit codes" in result.out and "Example:" in result.out
    assert f"bulkgen schedule {verb}" in (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")


def test_cron_library_is_loaded_only_by_what_needs_it(tmp_path):
    """Cold start: `--help` and the job commands never import cronsim (nor the schedules library)."""
    code = ("import sys; from bulkgen_cli.cli.main import main; sys.argv = ['bulkgen', 'list', '--json']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('cronsim', 'bulkgen_cli.ops.schedules', 'zoneinfo') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=base_env(tmp_path), capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr


def test_the_ticker_looks_at_most_once_a_second_and_waits_out_a_store_error(store, monkeypatch):
    from bulkgen_cli.core.errors import StoreUnavailable
    from bulkgen_cli.core.events import ScheduleFired, Waiting

    daily = add(store)
    clock = [daily.next_at - dt.timedelta(seconds=0.5)]
    events: list = []
    ticker = schedules.Ticker(store, "p1", events.append, clock=lambda: clock[0])
    assert ticker.step() == pytest.approx(0.5) and events == [] and ticker.next_due() == daily.next_at
    clock[0] = daily.next_at + dt.timedelta(seconds=0.2)
    assert ticker.step() == schedules.LOOK_SECONDS  # the next run is a day away: look again in a second
    assert [type(e) for e in events] == [ScheduleFired] and events[0].bulk_job_id is not None
    assert ticker.next_due() == daily.next_at + dt.timedelta(days=1)

    def down():
        raise StoreUnavailable("the store is down")

    monkeypatch.setattr(store, "next_schedule_at", down)
    assert ticker.step() == schedules.LOOK_AFTER_ERROR
    assert isinstance(events[-1], Waiting) and "the store is down" in events[-1].reason


def test_a_schedule_this_machine_cannot_read_does_not_hold_up_the_others(store, monkeypatch):
    """A zone another machine's tzdata knows and this one's lacks: that schedule waits, the others are queued."""
    from bulkgen_cli.core.events import ScheduleFired, Waiting

    add(store, "tokyo", cron="0 5 * * *", zone="Asia/Tokyo")  # due first: 20:00 UTC on DAY0
    daily = add(store)
    real = schedules.zone_of

    def lacking(name):
        if name == "Asia/Tokyo":
            raise UsageError("--zone 'Asia/Tokyo' is not a known time zone.")
        return real(name)

    monkeypatch.setattr(schedules, "zone_of", lacking)
    now = daily.next_at + dt.timedelta(minutes=1)
    events: list = []
    ticker = schedules.Ticker(store, "p1", events.append, clock=lambda: now)
    assert ticker.step() == schedules.LOOK_AFTER_ERROR
    assert [(type(e), getattr(e, "schedule", None)) for e in events] == [(ScheduleFired, "daily"), (Waiting, None)]
    assert events[0].bulk_job_id is not None and "tokyo" in events[1].reason and "Asia/Tokyo" in events[1].reason
    assert len(scheduled_jobs(store)) == 1 and store.get_schedule("alice", "tokyo").last_at is None
    with pytest.raises(UsageError, match="Asia/Tokyo"):  # without a view, the library raises it once the others ran
        schedules.tick(store, "p1", now)


def test_an_unexpected_error_in_a_look_is_said_and_the_looks_go_on(store, monkeypatch):
    """Not only store errors: whatever a look raises is reported and the thread keeps looking (it used to die silently)."""
    from bulkgen_cli.core.events import ScheduleFired, Waiting
    from tests.conftest import wait_for

    daily = add(store)
    now = daily.next_at + dt.timedelta(minutes=1)
    real, calls = store.next_schedule_at, []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("corrupt record")
        return real()

    monkeypatch.setattr(store, "next_schedule_at", broken_once)
    monkeypatch.setattr(schedules, "LOOK_AFTER_ERROR", 0.01)
    events: list = []
    ticker = schedules.Ticker(store, "p1", events.append, clock=lambda: now)
    ticker.thread = threading.Thread(target=ticker.run, daemon=True)
    ticker.thread.start()
    try:
        wait_for(lambda: any(isinstance(e, ScheduleFired) for e in events))
    finally:
        ticker.stopped.set()
        ticker.thread.join(5)
    assert isinstance(events[0], Waiting) and "unexpected ValueError: corrupt record" in events[0].reason
    assert len(scheduled_jobs(store)) == 1


# -- templates (docs/files.md, "Templates"): a saved one by name, or a template file, with the rows' text ---------------


def saved_reader(store, user="alice"):
    from bulkgen_cli.input import templates

    return lambda name: templates.load_saved(store, user, name)


def test_a_saved_template_is_read_at_each_run_and_a_removed_one_fails_its_run(store):
    from bulkgen_cli.input import templates

    text = (EXAMPLES / "city-guides.yaml").read_text()
    templates.save(store, "alice", "city", text, source="city-guides.yaml")
    src = schedules.source_of(None, "city", str(EXAMPLES / "cities.csv"), None, None, saved_reader(store))
    assert src["kind"] == "template" and src["values_text"] == (EXAMPLES / "cities.csv").read_text()
    assert "text" not in src  # the template itself is read at each run, by name
    daily = schedules.add(store, "alice", "cities", "0 6 * * *", "UTC", src,
                          {"priority": "normal", "notify": [], "quality": "fail", "quality_ratio": 0.5}, DAY0)
    [first] = schedules.tick(store, "p1", DAY0 + dt.timedelta(days=1))
    bulk = store.get_bulk(first.bulk_job_id)
    assert bulk.total_items == 10 and bulk.name == "City guides (cities 2026-11-03 06:00 UTC)"
    assert (bulk.quality, bulk.quality_ratio) == ("fail", 0.5)
    templates.save(store, "alice", "city", text.replace("name: City guides", "name: Cities v2"), source="v2",
                   replace=True)
    [second] = schedules.tick(store, "p1", DAY0 + dt.timedelta(days=2))
    assert store.get_bulk(second.bulk_job_id).name.startswith("Cities v2 (cities ")
    templates.remove(store, "alice", "city")
    [third] = schedules.tick(store, "p1", DAY0 + dt.timedelta(days=3))
    assert third.bulk_job_id is None and third.error == (
        "schedule 'cities' uses template 'city', which is gone: save it again or remove the schedule.")
    got = store.get_schedule("alice", "cities")
    assert got.last_error == third.error and got.next_at == daily.next_at + dt.timedelta(days=3)
    assert [o.state for o in store.list_occurrences(daily.id)] == ["failed", "submitted", "submitted"]


def test_a_template_file_with_its_rows_is_stored_whole(store, tmp_path):
    src = schedules.source_of(str(EXAMPLES / "city-guides.yaml"), None, str(EXAMPLES / "cities.csv"), None, None,
                              saved_reader(store))
    assert src["kind"] == "template-file" and src["text"] == (EXAMPLES / "city-guides.yaml").read_text()
    schedules.add(store, "alice", "cities", "0 6 * * *", "UTC", src, {}, DAY0)
    [fired] = schedules.tick(store, "p1", DAY0 + dt.timedelta(days=1))
    [article] = [i.article for i in store.list_items(fired.bulk_job_id) if i.item_id == "lisbon"]
    assert article["word_count"] == 1200 and "Belém Tower" in article["instructions"]


def test_template_sources_are_checked_as_submit_checks_them(store, tmp_path):
    from bulkgen_cli.input import templates

    rows = str(EXAMPLES / "cities.csv")
    read = saved_reader(store)
    with pytest.raises(UsageError, match="needs its rows: add --values ROWS"):
        schedules.source_of(None, "city", None, None, None, read)
    with pytest.raises(UsageError, match="not both"):
        schedules.source_of(str(EXAMPLES / "articles.yaml"), "city", rows, None, None, read)
    with pytest.raises(NotFound, match="no template 'city'"):
        schedules.source_of(None, "city", rows, None, None, read)
    templates.save(store, "alice", "city", (EXAMPLES / "city-guides.yaml").read_text(), source="c")
    bad = tmp_path / "bad.csv"
    bad.write_text((EXAMPLES / "cities.csv").read_text().replace("lisbon,Lisbon,the Belém Tower,1200,",
                                                                 "lisbon,Lisbon,the Belém Tower,lots,"))
    with pytest.raises(ManifestError) as err:
        schedules.source_of(None, "city", str(bad), None, None, read)
    assert any(p.field == "word_count" and p.file == str(bad) for p in err.value.problems), err.value.problems


def test_schedule_add_with_a_saved_template_from_the_cli(cli):
    assert cli("submit", str(EXAMPLES / "articles.yaml")).code == 0  # a store to save the template in
    assert cli("template", "save", "city", str(EXAMPLES / "city-guides.yaml")).code == 0
    added = cli("schedule", "add", "cities", "--cron", "0 7 1 * *", "--zone", "Europe/Lisbon", "--template", "city",
                "--values", str(EXAMPLES / "cities.csv"), "--quality", "retry", "--json")
    assert added.code == 0, added.err
    doc = json.loads(added.out)
    assert doc["source"] == {"kind": "template", "template": "city", "values_format": "csv",
                             "values_file": str(EXAMPLES / "cities.csv")}
    assert doc["job"]["quality"] == "retry"
    job = cli("schedule", "run", "cities").out.strip()
    assert json.loads(cli("status", job, "--json").out)["bulk_job"]["total_items"] == 10
    missing = cli("schedule", "add", "other", "--cron", "0 7 1 * *", "--template", "nope", "--values",
                  str(EXAMPLES / "cities.csv"))
    assert missing.code == 3 and "no template 'nope'" in missing.err


def test_removing_a_template_a_schedule_uses_warns_and_its_failed_runs_say_why(cli, monkeypatch):
    import io

    from bulkgen_cli.cli import render
    from bulkgen_cli.core.events import ScheduleFired

    assert cli("template", "save", "city", str(EXAMPLES / "city-guides.yaml")).code == 0
    assert cli("schedule", "add", "cities", "--cron", "0 7 1 * *", "--template", "city", "--values",
               str(EXAMPLES / "cities.csv")).code == 0
    removed = cli("template", "remove", "city")
    assert removed.code == 0 and "Warning: schedule cities uses template city: each run fails until you save it " \
        "again (`bulkgen template save city FILE`) or remove the schedule" in removed.err
    assert json.loads(cli("template", "save", "city", str(EXAMPLES / "city-guides.yaml"), "--json").out)
    gone = cli("template", "remove", "city", "--json")
    doc = json.loads(gone.out)  # the removed record, as `schedule remove --json` prints the schedule's
    assert doc["name"] == "city" and "created_at" in doc and doc["used_by_schedules"] == ["cities"]
    assert "Removed template" not in gone.err and "Warning: schedule cities uses template city" in gone.err
    ran = cli("schedule", "run", "cities")
    assert ran.code == 3 and "schedule 'cities' uses template 'city', which is gone: save it again" in ran.err
    out = io.StringIO()
    quiet = render.QuietView(out)  # run --forever -q still says a scheduled run failed
    quiet(ScheduleFired("cities", "alice", DAY0, "UTC", None, "schedule 'cities' uses template 'city', which is gone",
                        0))
    assert "run of 2026-11-02 12:00 UTC: failed: schedule 'cities' uses template 'city'" in out.getvalue()
    from bulkgen_cli.core import settings
    from bulkgen_cli.store import open_store

    with open_store(settings.store_url(None)) as db:
        [fired] = schedules.tick(db, "p1", dt.datetime(2030, 1, 2, tzinfo=UTC))
    assert fired.error and fired.error.startswith("schedule 'cities' uses template 'city', which is gone")
    listed = cli("schedule", "list").out
    assert "failed: schedule 'cities' uses template 'city', which is gone" in listed


def test_an_every_minute_schedule_from_before_the_limit_is_paused_at_its_run_unless_its_owner_is_an_admin(store):
    """Review of issue 18, finding 10: a user's schedule made over HTTP before the 5-minute limit kept its cron."""
    from bulkgen_cli.ops import tokens

    tokens.create(store, "alice")
    tokens.create(store, "root", admin=True)
    policy = {"notify_policy": {"webhook_allow": [], "email_allow": []}}  # what a schedule made over HTTP carries
    often = add(store, "often", "* * * * *", **policy)  # stored as the server stored it before the limit
    boss = add(store, "boss", "* * * * *", user="root", **policy)
    [fired] = schedules.fire(store, often, "p1", often.next_at + dt.timedelta(seconds=1))
    assert fired.bulk_job_id is None and "runs more often than every 5 minutes" in fired.error
    assert store.get_schedule("alice", "often").status == ScheduleStatus.paused.value
    assert scheduled_jobs(store) == []
    [ran] = schedules.fire(store, boss, "p1", boss.next_at + dt.timedelta(seconds=1))
    assert ran.error is None and len(scheduled_jobs(store, "root")) == 1
    assert schedules.run_now(store, "alice", "often").ids  # once, by hand: not a cron's pace


def test_a_users_schedule_from_before_limits_were_recorded_keeps_to_them(store):
    """A schedule made over HTTP before `limited` was stored is a user's, unless its owner is an admin."""
    from bulkgen_cli.ops import tokens

    tokens.create(store, "alice")
    tokens.create(store, "root", admin=True)
    store.put_setting(schedules.SERVE_POLICY, {"webhook_allow": [], "email_allow": [], "max_active_jobs": 1,
                                               "max_stored_mb": 0})
    policy = {"notify_policy": {"webhook_allow": [], "email_allow": []}}  # made over HTTP, no `limited` yet
    mine, boss = add(store, "mine", **policy), add(store, "boss", user="root", **policy)
    for user in ("alice", "root"):
        jobs.submit(store, schedules.manifest_of(store, mine), user)  # one active job each: at the limit
    [fired] = schedules.fire(store, mine, "p1", mine.next_at + dt.timedelta(seconds=1))
    assert fired.bulk_job_id is None and fired.error.startswith("skipped: over the active-jobs limit"), fired.error
    [ran] = schedules.fire(store, boss, "p1", boss.next_at + dt.timedelta(seconds=1))
    assert ran.error is None and len(scheduled_jobs(store, "root")) == 1
