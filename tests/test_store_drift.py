"""Where the two stores had drifted apart (issue 19): each case now decided once, checked on both backends."""

from __future__ import annotations

import datetime as dt

from bulkgen_cli.core.model import BulkStatus, ItemStatus, Outcome
from bulkgen_cli.store import rules
from tests.conftest import claim, submit

LEASE = 30.0
#: A time far from the wall clock: a store that reads its own clock instead of the `now` it is given shows it.
T0 = dt.datetime(2020, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def completed_with_failures(store, failing: tuple[int, ...], n: int = 4):
    """A job of `n` items run to its end, the items at `failing` (0-based) failed."""
    bulk = submit(store, n, created_at=T0)
    for k in range(n):
        item = claim(store, "p1", LEASE, T0)
        outcome = Outcome(ItemStatus.failed, error="HTTP 500") if k in failing else Outcome(ItemStatus.completed)
        store.finish_item(item.id, "p1", outcome, T0)
    assert store.get_bulk(bulk.id).status == BulkStatus.completed.value
    return bulk


def test_retry_failed_counts_the_items_this_call_queued(store):
    """SQLite returned this call's row count; MongoDB recounted every queued item of the job."""
    bulk = completed_with_failures(store, failing=(1, 2))
    done = next(i for i in store.list_items(bulk.id) if i.status == ItemStatus.completed.value)
    # An item left queued in the completed job (a retry that died half-way on MongoDB), not one of this call's.
    assert store._write_where(done.id, {"status": ItemStatus.completed.value},
                              rules.Change({"status": ItemStatus.queued.value}), T0)
    assert store.retry_failed(bulk.id, T0) == 2
    assert store.get_bulk(bulk.id).status == BulkStatus.queued.value


def test_next_start_waits_on_the_claims_statuses(store, monkeypatch):
    """SQLite spelled `IN ('queued','processing')` itself; MongoDB read the claimable statuses: both read
    `rules.CLAIMABLE` now, so a change there is a change of both."""
    hours = {status: T0 + dt.timedelta(hours=n) for n, status in enumerate(BulkStatus, start=1)}
    for status, at in hours.items():
        job = submit(store, 1, created_at=T0, not_before=at)
        if status is not BulkStatus.queued:
            assert store.set_bulk_state(job.id, [BulkStatus.queued], status, T0)
    assert store.next_start(T0) == min(hours[s] for s in rules.CLAIMABLE)
    monkeypatch.setattr(rules, "CLAIMABLE", (BulkStatus.processing, BulkStatus.paused))
    assert store.next_start(T0) == hours[BulkStatus.processing]


def test_the_change_log_is_stamped_with_the_time_the_verbs_are_given(store):
    """MongoDB read the wall clock for a change's time and for the re-read window of `changes_since`; now the
    verbs' `now` (a release and a read are given theirs too)."""
    bulk = submit(store, 2, created_at=T0)
    item = claim(store, "p1", LEASE, T0)
    assert store.release_item(item.id, "p1", now=T0)
    item = claim(store, "p1", LEASE, T0)
    store.finish_item(item.id, "p1", Outcome(ItemStatus.completed), T0)
    top = store.last_change()
    an_hour_on = T0 + dt.timedelta(hours=1)
    # Nothing numbered above `top`, and nothing made within the re-read window before `now`.
    assert store.changes_since(top, 1000, now=an_hour_on) == []
    mine = store.changes_since(0, 1000, bulk_id=bulk.id, now=an_hour_on)
    assert [c.status for c in mine if c.kind == "bulk"] == ["queued", "processing"]


def test_one_version_for_the_data_model(store, backend):
    """SQLite said 11 and MongoDB 7 for one data model: one number now (design.md, "The store contract")."""
    if backend.name == "sqlite":
        stored = store.db.execute("PRAGMA user_version").fetchone()[0]
    else:
        stored = store.meta.find_one({"_id": "schema"})["version"]
    assert stored == rules.SCHEMA_VERSION == 11


def test_the_last_migration_step_reaches_the_data_model_s_version():
    """A new step without `rules.SCHEMA_VERSION` one up passed every test and broke existing stores (review of
    issue 19): a store at the old version is never migrated to the new columns."""
    from bulkgen_cli.store import rules
    from bulkgen_cli.store.sqlite_schema import MIGRATIONS

    versions = [version for version, _ in MIGRATIONS]
    assert versions == list(range(2, rules.SCHEMA_VERSION + 1)), (versions, rules.SCHEMA_VERSION)
