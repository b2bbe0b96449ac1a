"""Recurring schedules (design.md, "Recurring schedules"): the store verbs on both backends, the library's
occurrences (latest only, skipped ones recorded, exactly once, a dead or stalled claimer, DST), and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading

import pytest

from bulkgen_cli import jobs, schedules
from bulkgen_cli.errors import ManifestError, NotFound, UsageError
from bulkgen_cli.model import OccurrenceState, Schedule, ScheduleStatus, iso, new_id
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
    with pytest.raises(UsageError, match="already"):
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
    again, mine = store.claim_occurrence(daily, at, "p2", now, stale)
    assert not mine and again.owner == "p1"
    # p1 died: 61 s on, its claim is stale, and exactly one of two callers takes it over.
    later = now + dt.timedelta(seconds=61)
    took = [store.claim_occurrence(daily, at, owner, later, later - dt.timedelta(seconds=60))[1] for owner in ("p2", "p3")]
    assert took == [True, False]
    assert not store.finish_occurrence(daily.id, at, "p1", rules.occurrence_end("b1", None, later))
    assert store.finish_occurrence(daily.id, at, "p2", rules.occurrence_end("b1", None, later))
    assert not store.finish_occurrence(daily.id, at, "p2", rules.occurrence_end("b2", None, later))
    [done] = store.list_occurrences(daily.id)
    assert (done.state, done.bulk_job_id, done.owner) == ("submitted", "b1", "p2")
    # Finished, it is never taken over, however old.
    assert not store.claim_occurrence(daily, at, "p4", later + dt.timedelta(days=1), later + dt.timedelta(days=1))[1]


def test_advance_is_written_once_per_step(store):
    daily = add(store)
    step = rules.advanced(daily, daily.next_at, daily.next_at + dt.timedelta(days=1), "b1", None,
                          [DAY0], 1)
    assert store.advance_schedule(daily.id, daily.next_at, step)
    assert not store.advance_schedule(daily.id, daily.next_at, step)  # the same step again: nothing
    got = store.get_schedule("alice", "daily")
    assert got.next_at == daily.next_at + dt.timedelta(days=1) and got.skipped_count == 1
    assert got.skipped_recent == [iso(DAY0)] and got.last_bulk_job_id == "b1"


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
    daily = add(store)
    now = daily.next_at + dt.timedelta(seconds=1)
    store.claim_occurrence(daily, daily.next_at, "dead", now, now)
    store.finish_occurrence(daily.id, daily.next_at, "dead", rules.occurrence_end("b-dead", None, now))
    assert schedules.tick(store, "p2", now + dt.timedelta(seconds=2)) == [] and scheduled_jobs(store) == []
    got = store.get_schedule("alice", "daily")
    assert got.last_bulk_job_id == "b-dead" and got.next_at == daily.next_at + dt.timedelta(days=1)


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
    [fired] = [schedules.fire(store, broken, "p1", DAY0 + dt.timedelta(days=1))]
    assert fired.bulk_job_id is None and "has 0 items" in fired.error
    got = store.get_schedule("alice", "daily")
    assert got.last_error == fired.error and got.next_at == daily.next_at + dt.timedelta(days=1)
    assert store.list_occurrences(daily.id)[0].state == "failed" and scheduled_jobs(store) == []


def test_a_hand_edited_next_time_off_the_cron_starts_again_from_now(store):
    daily = add(store)
    off = daily.next_at + dt.timedelta(minutes=7)
    assert store.advance_schedule(daily.id, daily.next_at, {"next_at": off})
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
    ("0 6 31 2 *", "field 3 (day of month) '31' is not valid"),
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
    assert "Schedule weekly added" in added.err and "run --forever" in added.err
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
    assert "A schedule's next run is" in cli("run").err  # plain run says who queues scheduled runs
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
    assert cli("schedule", "add", "weekly", "--cron", "0 6 * * MON").code == 2  # no file
    assert cli("schedule", "add", "weekly", articles).code == 2  # no --cron
    listed = cli("schedule", "list")
    assert listed.code == 4 and "no store at" in listed.err  # not even the store was created


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
    assert f"bulkgen schedule {verb}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_cron_library_is_loaded_only_by_what_needs_it(tmp_path):
    """Cold start: `--help` and the job commands never import cronsim (nor the schedules library)."""
    code = ("import sys; from bulkgen_cli.cli import main; sys.argv = ['bulkgen', 'list', '--json']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('cronsim', 'bulkgen_cli.schedules', 'zoneinfo') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=base_env(tmp_path), capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr


def test_the_ticker_looks_at_most_once_a_second_and_waits_out_a_store_error(store, monkeypatch):
    from bulkgen_cli.errors import StoreUnavailable
    from bulkgen_cli.events import ScheduleFired, Waiting

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


# -- templates (README "Templates"): a saved one by name, or a template file, with the rows' text ---------------


def saved_reader(store, user="alice"):
    from bulkgen_cli import templates

    return lambda name: templates.load_saved(store, user, name)


def test_a_saved_template_is_read_at_each_run_and_a_removed_one_fails_its_run(store):
    from bulkgen_cli import templates

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
    assert third.bulk_job_id is None and "no template 'city'" in third.error
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
    from bulkgen_cli import templates

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
