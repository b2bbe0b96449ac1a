"""Idle states are explained: a paused job left behind, a watched job with no processor."""

from __future__ import annotations

import time

from bulkgen_cli.core.events import Waiting
from bulkgen_cli.core.model import utcnow
from bulkgen_cli.ops.watch import follow
from tests.cli_helpers import EXAMPLES
from tests.conftest import submit


def test_run_with_only_a_paused_job_says_how_to_resume_it(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    assert cli("pause", bulk_id).code == 0
    result = cli("run")
    assert result.code == 0
    assert "Nothing to process" in result.err
    assert "1 bulk job is paused, its items waiting" in result.err and f"`bulkgen resume {bulk_id}`" in result.err
    other = cli("submit", str(EXAMPLES / "keywords.yaml")).out.strip()
    assert cli("pause", other).code == 0
    assert "2 bulk jobs are paused, their items waiting" in cli("run").err


def watch_events(store, bulk_id, hint_after):
    events = []

    def sleep(seconds):
        time.sleep(0.01)
        if len([e for e in events if isinstance(e, Waiting)]) or len(events) > 200:
            store.cancel_bulk(bulk_id, utcnow())  # end the watch once it has spoken (or after a while)
            store.refresh_counters(bulk_id, utcnow())

    follow(store, [bulk_id], events.append, poll=0.01, sleep=sleep, hint_after=hint_after)
    return [e for e in events if isinstance(e, Waiting)]


def test_watch_says_when_no_processor_is_running(store):
    bulk = submit(store)
    hints = watch_events(store, bulk.id, hint_after=0.05)
    assert len(hints) == 1 and "no processor is running" in hints[0].reason and "bulkgen run" in hints[0].reason


def test_watch_says_nothing_while_a_processor_holds_the_lease(store):
    bulk = submit(store)
    assert store.acquire_processor_lease("worker", 600, utcnow(), "host", 1)
    assert watch_events(store, bulk.id, hint_after=0.05) == []


def test_status_of_a_paused_job_has_no_eta(cli):
    import json

    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    assert cli("pause", bulk_id).code == 0
    assert json.loads(cli("status", bulk_id, "--json").out)["bulk_job"]["estimated_completion"] is None
    assert "ETA: none while paused (`bulkgen resume` continues it)" in cli("status", bulk_id).out
