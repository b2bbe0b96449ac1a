"""Stalled processors, for real: SIGSTOP a `bulkgen run` longer than its lease, then SIGCONT it.

Each case was measured to send an item twice before fencing (issue: "One in
flight means one, even after a stall"); each now checks every item's requests.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections import defaultdict
from typing import Any

import pytest

from bulkgen_cli.content.reference import ReferenceService
from bulkgen_cli.core.model import utcnow
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


@pytest.mark.parametrize("honour_headers", [True, False], ids=["fencing-service", "plain-service"])
def test_stopped_alone_during_a_request_makes_the_article_once(tmp_path, start_service, processes, honour_headers):
    """No other processor: A wakes past its self-fencing deadline with the reply in hand; nobody took the item,
    so its renewal succeeds and the store records the reply: one request, also against a service that ignores
    the fencing headers (before: the reply was dropped and the item asked for again, two articles there)."""
    svc = start_service(honour_headers=honour_headers)
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
    assert [r["outcome"] for r in first] == ["ok"]
    assert items(tmp_path)[0].attempts == 1 and items(tmp_path)[0].result is not None
    check_requests(svc.stats()["requests"], ids)


def test_stopped_alone_during_a_request_whose_item_another_took_drops_the_reply(tmp_path, svc, processes):
    """The store decides: once a newer claim took the item, A's late reply in hand is not recorded (B's is)."""
    ids = queue(tmp_path, ["Long one [slow:1.5]"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1")
    a = processes.spawn(["run"], env)
    wait_for(lambda: in_flight(svc, ids[0]), timeout=20, what="A's request in flight")
    os.kill(a.pid, signal.SIGSTOP)
    wait_for(lambda: not in_flight(svc, ids[0]), timeout=20, what="the service's reply to A")
    b = processes.spawn(["run"], env)
    finish_ok(b)  # B took the item over (a newer token) and recorded its article
    recorded = items(tmp_path)[0]
    assert recorded.status == "completed"
    os.kill(a.pid, signal.SIGCONT)
    finish_ok(a)
    after = items(tmp_path)[0]
    assert (after.result, after.fence, after.completed_at) == (recorded.result, recorded.fence, recorded.completed_at)
    assert recorded.fence > int(sorted(requests_of(svc)[ids[0]], key=lambda r: r["start"])[0]["token"])


def test_stopped_three_times_during_the_delay_charges_nothing(tmp_path, svc, processes):
    """A claims the second item and waits out --delay; stopped past its lease three times, each time its item
    taken back by another processor's look for expired leases: no request was sent, so no try is charged
    (before: each expiry counted one, and the third failed the item with max 3 tries)."""
    ids = queue(tmp_path, ["First", "Second"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="1", BULKGEN_DELAY="9", BULKGEN_MAX_RETRIES="2")
    a = processes.spawn(["run"], env)
    fence = 0
    for _ in range(3):
        wait_for(lambda: held_by_a_new_claim(tmp_path, ids[1], fence), timeout=20, what="A's claim of the second item")
        with store_of(tmp_path) as store:
            fence = store.get_item(ids[1]).fence
        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: time.monotonic() - stopped >= 1.5, timeout=5, what="the stall")
        with store_of(tmp_path) as store:  # what any other processor's regular look does
            assert store.requeue_expired(utcnow(), 3) == [store.get_item(ids[1]).bulk_job_id]
            back = store.get_item(ids[1])
        assert (back.status, back.attempts, back.retry_count) == ("queued", 0, 0)
        os.kill(a.pid, signal.SIGCONT)
    finish_ok(a, timeout=60)
    second = items(tmp_path)[1]
    assert (second.status, second.attempts, second.retry_count) == ("completed", 1, 0)
    assert {i: len(r) for i, r in requests_of(svc).items()} == {i: 1 for i in ids}


def held_by_a_new_claim(tmp_path, item_id: str, fence: int) -> bool:
    with store_of(tmp_path) as store:
        item = store.get_item(item_id)
    return item.status == "processing" and (item.fence or 0) > fence


def test_a_write_lock_held_past_the_busy_timeout_keeps_the_reply_in_hand(tmp_path, svc, processes):
    """Another process holds the store's write lock (BEGIN IMMEDIATE) while A's request is in flight and after
    its reply came, well past A's busy timeout: A's renewals and its record fail meanwhile, the record is tried
    again until the lease ends, and lands once the lock goes (before: exit 5, the reply lost)."""
    ids = queue(tmp_path, ["Slow one [slow:1.5]"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="6", BULKGEN_SQLITE_BUSY_TIMEOUT="0.2")
    a = processes.spawn(["run"], env)
    wait_for(lambda: in_flight(svc, ids[0]), timeout=20, what="A's request in flight")
    holder = sqlite3.connect(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        locked = time.monotonic()
        wait_for(lambda: not in_flight(svc, ids[0]), timeout=20, what="the service's reply")
        # The reply is in A's hands; A's writes wait 0.2 s for the lock, then fail: several of them.
        wait_for(lambda: time.monotonic() - locked >= 2.5, timeout=5, what="the lock held")
        assert a.poll() is None, finish(a).err
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    finish_ok(a)
    item = items(tmp_path)[0]
    assert (item.status, item.attempts) == ("completed", 1)
    assert [r["outcome"] for r in requests_of(svc)[ids[0]]] == ["ok"]


def test_a_write_lock_held_past_the_lease_gives_the_reply_up_and_says_so(tmp_path, svc, processes):
    """The lock outlasts the lease: the record is given up (exit 5), and the loss is said with the item's id."""
    ids = queue(tmp_path, ["Quick one [slow:0.3]"])
    env = env_for(tmp_path, svc, BULKGEN_LEASE_SECONDS="2", BULKGEN_SQLITE_BUSY_TIMEOUT="0.2")
    a = processes.spawn(["run"], env)
    wait_for(lambda: in_flight(svc, ids[0]), timeout=20, what="A's request in flight")
    holder = sqlite3.connect(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        result = finish(a, timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.code == 5, result.err
    assert "database is locked" in result.err
    assert f"The reply for item {ids[0]} of job " in result.err and "will be asked for again" in result.err
    assert "Traceback" not in result.err
    assert [r["outcome"] for r in requests_of(svc)[ids[0]]] == ["ok"]
    assert items(tmp_path)[0].status == "processing"  # its lease runs out; the next run asks for it again
