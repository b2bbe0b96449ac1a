"""Occurrences fenced like items (design.md, "Exactly once per occurrence"), on both backends.

Processor P1 handles occurrence O1 of a daily schedule and is stalled after each of its store calls in
turn (and before the first); meanwhile P2 looks at the next occurrence O2, either while P1's claim is
still live or after it went stale; then P1 goes on, and a last look finishes whatever is left. Whatever
the point, every occurrence ends with one record that says one thing: O1 either skipped (no job, its
record dropped or absent) or submitted (one job, not counted as skipped), and the jobs exist in
occurrence order.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bulkgen_cli.ops import schedules
from bulkgen_cli.core.model import OccurrenceState, iso
from bulkgen_cli.store import rules
from tests.test_schedules import add

UTC = dt.timezone.utc
O0, O1, O2 = (dt.datetime(2026, 11, day, 6, 0, tzinfo=UTC) for day in (3, 4, 5))
SECOND = dt.timedelta(seconds=1)


class Stalling:
    """The store as P1 uses it: after its `at`-th call (0: before the first), `meanwhile()` runs once."""

    def __init__(self, store, at: int, meanwhile):
        self.store, self.at, self.meanwhile, self.calls = store, at, meanwhile, 0
        self.stalled = False

    def stall_here(self) -> None:
        if self.calls == self.at and not self.stalled:
            self.stalled = True
            self.meanwhile()

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self.calls += 1
            self.stall_here()
            return result
        return call


def jobs_by_time(store, schedule_id):
    keys = {rules.occurrence_key(schedule_id, at): at for at in (O0, O1, O2)}
    found = [b for b in store.list_bulks("alice", 1000) if (b.idempotency_key or "").startswith(
        f"schedule:{schedule_id}@")]
    assert all(b.idempotency_key in keys for b in found), [b.idempotency_key for b in found]
    return {keys[b.idempotency_key]: b for b in found}


def check_one_story(store, name: str) -> str:
    """The invariants after everything settled; what became of O1 ("skipped" or "submitted")."""
    schedule = store.get_schedule("alice", name)
    records = {o.at: o for o in store.list_occurrences(schedule.id)}
    jobs = jobs_by_time(store, schedule.id)
    assert not [o for o in records.values() if o.state == OccurrenceState.claimed.value], records
    for at in (O0, O2):
        assert at in jobs and records[at].state == "submitted" and records[at].bulk_job_id == jobs[at].id
    skipped = iso(O1) in schedule.skipped_recent
    assert schedule.skipped_count == len(schedule.skipped_recent) == (1 if skipped else 0)
    if skipped:  # one story: skipped, so no job, and its record (if any) says dropped
        assert O1 not in jobs and (O1 not in records or records[O1].state == "dropped"), records.get(O1)
    else:
        assert O1 in jobs and records[O1].state == "submitted" and records[O1].bulk_job_id == jobs[O1].id
    made = sorted(jobs, key=lambda at: (jobs[at].created_at, jobs[at].id))
    assert made == sorted(jobs), "jobs in occurrence order"
    assert (schedule.next_at, schedule.last_at) == (O2 + dt.timedelta(days=1), O2)
    assert schedule.last_bulk_job_id == jobs[O2].id
    return "skipped" if skipped else "submitted"


@pytest.mark.parametrize("p2_finds", ["live", "stale"])
def test_a_processor_stalled_at_any_step_leaves_one_record_per_occurrence(store, monkeypatch, p2_finds):
    stories = []
    for point in range(40):
        name = f"s{point}"
        add(store, name)
        schedules.fire(store, store.get_schedule("alice", name), "p0", O0 + SECOND)
        as_read = store.get_schedule("alice", name)  # P1's look at O1: this is what it read
        # P2 looks just after O2: P1's claim (made at O1) is live if claims last 2 days, stale if 60 s.
        stale_after = 2 * 86400 if p2_finds == "live" else 60

        def meanwhile():
            monkeypatch.setattr(schedules, "STALE_CLAIM_SECONDS", stale_after)
            schedules.tick(store, "p2", O2 + SECOND)
            monkeypatch.setattr(schedules, "STALE_CLAIM_SECONDS", 60)

        p1 = Stalling(store, point, meanwhile)
        p1.stall_here()
        schedules.fire(p1, as_read, "p1", O1 + SECOND)
        if not p1.stalled:  # P1 made fewer calls than this: every point was tried
            break
        schedules.tick(store, "p3", O2 + dt.timedelta(hours=1))  # a later look finishes what is left
        stories.append((point, check_one_story(store, name)))
    assert len(stories) >= 5, stories
    assert {story for _, story in stories} == {"skipped", "submitted"}, stories


def test_p1_stalled_after_its_check_does_not_queue_what_p2_recorded_as_skipped(store, monkeypatch):
    """The issue's case: P1 passed its still-owed check and stopped; P2 queued O2 and recorded O1 as skipped."""
    add(store, "daily")
    schedules.fire(store, store.get_schedule("alice", "daily"), "p0", O0 + SECOND)
    as_read = store.get_schedule("alice", "daily")
    real = schedules._still_owed

    def stalled(*args):
        owed = real(*args)
        assert owed  # P1 passed its check; now P2 handles O2 (P1's claim has gone stale meanwhile)
        monkeypatch.setattr(schedules, "_still_owed", real)
        assert [f.at for f in schedules.tick(store, "p2", O2 + SECOND)] == [O2]
        return owed

    monkeypatch.setattr(schedules, "_still_owed", stalled)
    assert schedules.fire(store, as_read, "p1", O1 + SECOND) in (None, [])
    assert check_one_story(store, "daily") == "skipped"
