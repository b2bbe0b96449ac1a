"""Stalled processors, for real: SIGSTOP a `bulkgen run` longer than its lease, then SIGCONT it.

Each case was measured to send an item twice before fencing (issue: "One in
flight means one, even after a stall"); each now checks every item's requests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from typing import Any

from bulkgen_cli.content.reference import ReferenceService
from bulkgen_cli.store.sqlite import SqliteStore
from tests.cli_helpers import env_for, finish
from tests.conftest import submit_articles, wait_for
from tests.test_fencing import check_requests


def store_of(tmp_path) -> SqliteStore:
    return SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db")


def queue(tmp_path, topics: list[str]) -> list[str]:
    with store_of(tmp_path) as store:
        bulk = submit_articles(store, [{"topic": t, "word_count": 300} for t in topics], user="tester")
        return [i.id for i in store.list_items(bulk.id)]


def items(tmp_path) -> list[Any]:
    with store_of(tmp_path) as store:
        return [i for b in store.list_bulks() for i in store.list_items(b.id)]


def finish_ok(proc: subprocess.Popen, timeout: float = 60) -> None:
    result = finish(proc, timeout)
    assert result.code == 0, result.err


def requests_of(service: ReferenceService) -> dict[str, list[dict[str, Any]]]:
    by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in service.stats()["requests"]:
        by_item[request["job_id"]].append(request)
    return by_item


def in_flight(service: ReferenceService, item_id: str) -> bool:
    return any(r["job_id"] == item_id and r["end"] is None for r in service.stats()["requests"])


def stall_while_another_takes_over(processes, a, env, seconds: float, taken_over) -> None:
    """Stop A for `seconds`, with B started beside it; `taken_over()` holds once B has acted. Then both finish."""
    os.kill(a.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    b = processes.spawn(["run"], env)
    wait_for(taken_over, timeout=20, what="the other processor to take over")
    wait_for(lambda: time.monotonic() - stopped >= seconds, timeout=seconds + 5, what="the stall")
    os.kill(a.pid, signal.SIGCONT)
    finish_ok(a)
    finish_ok(b)


def test_stopped_during_a_request_longer_than_its_lease(tmp_path, svc, processes):
    """Stopped 4 s during a 3 s request, --lease 1.5: the stale request is refused, the article made once."""
    ids = queue(tmp_path, ["Long one [slow:3]", "Second", "Third"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1.5")
    a = processes.spawn(["run"], env)
    wait_for(lambda: in_flight(svc, ids[0]), timeout=20, what="A's request in flight")
    # B takes the lease over once A's has run out, and sends the item again with a newer token.
    stall_while_another_takes_over(processes, a, env, 4, lambda: len(requests_of(svc)[ids[0]]) == 2)
    assert [i.status for i in items(tmp_path)] == ["completed"] * 3
    check_requests(svc.stats()["requests"], ids)
    first = sorted(requests_of(svc)[ids[0]], key=lambda r: r["start"])
    assert [r["outcome"] for r in first] == ["stale", "ok"]
    assert int(first[0]["token"]) < int(first[1]["token"])
    assert [len(requests_of(svc)[i]) for i in ids[1:]] == [1, 1]


def test_stopped_while_waiting_out_the_delay_sends_nothing(tmp_path, svc, processes):
    """Stopped 2.5 s after its claim while waiting out --delay 3 (--lease 1): the new holder sends, A does not."""
    ids = queue(tmp_path, ["First", "Second", "Third"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1", BULKGEN_DELAY="3")
    a = processes.spawn(["run"], env)
    wait_for(lambda: any(i.status == "processing" and i.id == ids[1] for i in items(tmp_path)),
             timeout=20, what="A's claim of the second item")
    stall_while_another_takes_over(processes, a, env, 2.5, lambda: True)
    assert [i.status for i in items(tmp_path)] == ["completed"] * 3
    assert {i: len(r) for i, r in requests_of(svc).items()} == {i: 1 for i in ids}


def test_two_slots_with_a_delay_longer_than_the_lease_send_each_item_once(tmp_path, svc, processes):
    """No stall, one process, --concurrency 2 --delay 3 --lease 1: exactly one request per item."""
    ids = queue(tmp_path, [f"Item {n}" for n in range(6)])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1", BULKGEN_DELAY="3", BULKGEN_CONCURRENCY="2")
    finish_ok(processes.spawn(["run"], env), timeout=120)
    assert [i.status for i in items(tmp_path)] == ["completed"] * 6
    assert {i: len(r) for i, r in requests_of(svc).items()} == {i: 1 for i in ids}
    assert svc.stats()["max_in_flight"] <= 2


def test_stopped_alone_during_a_request_makes_the_article_once(tmp_path, svc, processes):
    """No other processor: A wakes past its self-fencing deadline, drops the late reply and asks again;
    the service answers the repeated Idempotency-Key from what it kept."""
    ids = queue(tmp_path, ["Long one [slow:1.5]", "Second", "Third"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1")
    a = processes.spawn(["run"], env)
    wait_for(lambda: in_flight(svc, ids[0]), timeout=20, what="A's request in flight")
    os.kill(a.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    wait_for(lambda: not in_flight(svc, ids[0]), timeout=20, what="the service's reply")
    # Stopped for two leases at least, however late the stop came: its last renewal was before it.
    wait_for(lambda: time.monotonic() - stopped >= 2.0, timeout=5, what="the stall")
    os.kill(a.pid, signal.SIGCONT)
    finish_ok(a)
    assert [i.status for i in items(tmp_path)] == ["completed"] * 3
    first = requests_of(svc)[ids[0]]
    assert [r["outcome"] for r in first] == ["ok", "replayed"]
    check_requests(svc.stats()["requests"], ids)
