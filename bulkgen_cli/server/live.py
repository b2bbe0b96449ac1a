"""Live progress as Server-Sent Events, read from the store's change log (design.md, "Live progress").

One `Poller` per server process reads the log every POLL_SECONDS with one
indexed query and hands each new event to the streams that show it: the
streams of its user, of its job, and every admin's. Each stream has its own
`Inbox` (its events and its own wake-up, an `asyncio.Event`): a wake-up costs
a stream what it sends, nothing is held across an await, and a stream
cancelled at any point leaves nothing behind. A stream that resumes
(`Last-Event-ID`) first reads what it missed from the store, a page at a time.
`Streams` caps the open streams of each token and ends a revoked token's;
`watchdog` restarts a poller that stopped; `prune_forever` keeps the log to
its retention window.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import math
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, TypeVar

import anyio
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bulkgen_cli.core.errors import BulkgenError
from bulkgen_cli.core.model import ChangeKind, ItemStatus, StateChange, iso, utcnow
from bulkgen_cli.ops.documents import progress_dict
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.store.base import Store

#: Changes read per store query (the poller's reads, and each page of a resuming stream).
PAGE = 1_000
#: Events an inbox holds for a stream that does not keep up; beyond, it reads the gap from the store.
INBOX = 5_000
#: Keys remembered to drop a change read twice (a store whose numbers may land late re-reads a window).
SEEN = 100_000
#: Seconds before the poller reads a failing store again.
RETRY_AFTER = 2.0
#: Seconds without a completed read after which the poller counts as stuck (`/healthz` answers 503).
STUCK_SECONDS = 5.0
#: Seconds between two looks of the watchdog, and between two checks of the tokens with open streams.
WATCH_SECONDS = 1.0
TOKEN_CHECK_SECONDS = 1.0
#: Seconds between two prunings of the change log, and the changes dropped per write.
PRUNE_SECONDS = 600.0
PRUNE_BATCH = 5_000
#: `Retry-After` of a refused stream (seconds).
STREAM_RETRY_AFTER = 10
LOG = logging.getLogger("bulkgen.events")
#: The browser's reconnection delay, sent once per stream (milliseconds).
RETRY_MS = 2_000

Key = tuple[int, str]
T = TypeVar("T")
Offload = Callable[[Callable[[Store], T]], Awaitable[T]]


def event_name(change: StateChange) -> str:
    """item.started, item.completed, item.failed, item.cancelled, item.queued; bulk.<status>."""
    if change.kind == ChangeKind.item.value and change.status == ItemStatus.processing.value:
        return "item.started"
    return f"{change.kind}.{change.status}"


@dataclass(frozen=True)
class Event:
    change: StateChange
    data: dict[str, Any]

    @property
    def key(self) -> Key:
        return self.change.seq, self.change.record_id

    @functools.cached_property
    def encoded(self) -> bytes:
        """The SSE text, made once however many streams send it."""
        name = event_name(self.change)
        return f"id: {self.change.seq}\nevent: {name}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


def to_events(store: Store, changes: list[StateChange]) -> list[Event]:
    """Events for changes, each with its job's progress as read now."""
    bulks = {bulk_id: store.get_bulk(bulk_id) for bulk_id in dict.fromkeys(c.bulk_job_id for c in changes)}
    events = []
    for change in changes:
        bulk = bulks.get(change.bulk_job_id)
        data: dict[str, Any] = {"seq": change.seq, "type": event_name(change), "bulk_job_id": change.bulk_job_id,
                                "status": change.status, "at": iso(change.at),
                                "progress": None if bulk is None else progress_dict(bulk)}
        if change.kind == ChangeKind.item.value:
            data["item"] = {"id": change.record_id, "queue_position": change.queue_position,
                            "status": change.status, "error": change.error}
        events.append(Event(change, data))
    return events


def reset_event(seq: int) -> bytes:
    """Tells a client that resumed from before the oldest change kept to read its jobs again."""
    data = {"type": "reset", "seq": seq, "reason": "the events since your last one are no longer kept; "
            "read your jobs again"}
    return f"id: {seq}\nevent: reset\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class Watch:
    """What one stream shows: the user's jobs (all of them for an admin), or one job."""

    user: str
    admin: bool
    bulk_id: str | None = None

    def shows(self, change: StateChange) -> bool:
        if self.bulk_id is not None and change.bulk_job_id != self.bulk_id:
            return False
        return self.admin or change.userId == self.user


class Inbox:
    """One stream's events, put by the poller, taken by the stream; its own wake-up, no lock."""

    def __init__(self, watch: Watch):
        self.watch = watch
        self.events: list[Event] = []
        #: events were dropped (the stream fell INBOX behind): it reads them from the store
        self.overflowed = False
        #: why the stream must end (its token was revoked), or None
        self.ended: str | None = None
        self._wake = asyncio.Event()

    def put(self, event: Event) -> None:
        if len(self.events) >= INBOX:
            self.events.clear()
            self.overflowed = True
        self.events.append(event)
        self._wake.set()

    def end(self, why: str) -> None:
        self.ended = why
        self._wake.set()

    def take(self) -> tuple[list[Event], bool]:
        """The events put since the last take, and whether some were dropped."""
        events, lost = self.events, self.overflowed
        self.events, self.overflowed = [], False
        self._wake.clear()
        return events, lost

    async def wait(self, timeout: float) -> None:
        """Until something was put (or the stream must end), or `timeout` seconds passed. Cancelling it at
        any point leaves the inbox as it was (Event.wait forgets its waiter)."""
        if self._wake.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass


class Poller:
    """Reads the store's change log for every stream of this process and hands each event to its inboxes."""

    def __init__(self, access: StoreAccess, interval: float, stuck: float | None = None):
        self.access, self.interval, self.stuck = access, interval, stuck or STUCK_SECONDS
        self.cursor = 0
        #: whether the store's change numbers are in commit order (Store.change_lag is 0)
        self.strict = True
        #: set once the cursor is known: a stream waits for it
        self.ready = asyncio.Event()
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self._users: dict[str, set[Inbox]] = {}
        self._jobs: dict[str, set[Inbox]] = {}
        self._admins: set[Inbox] = set()
        self._task: asyncio.Task[None] | None = None
        #: monotonic times: the last read that succeeded, the start of the read under way (None between)
        self.fresh_at = time.monotonic()
        self.reading_since: float | None = None
        # The poller's own threads: resuming streams and requests cannot queue ahead of its reads.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bulkgen-events")

    # -- the inboxes ---------------------------------------------------------------------------------

    def subscribe(self, inbox: Inbox) -> None:
        for group in self._groups(inbox.watch):
            group.add(inbox)

    def unsubscribe(self, inbox: Inbox) -> None:
        watch = inbox.watch
        for group in self._groups(watch):
            group.discard(inbox)
        if watch.bulk_id is not None and not self._jobs.get(watch.bulk_id, True):
            del self._jobs[watch.bulk_id]
        elif not watch.admin and not self._users.get(watch.user, True):
            del self._users[watch.user]

    def _groups(self, watch: Watch) -> list[set[Inbox]]:
        if watch.bulk_id is not None:
            return [self._jobs.setdefault(watch.bulk_id, set())]
        return [self._admins] if watch.admin else [self._users.setdefault(watch.user, set())]

    def _route(self, event: Event) -> None:
        change = event.change
        for group in (self._users.get(change.userId, ()), self._admins, self._jobs.get(change.bulk_job_id, ())):
            for inbox in group:
                if inbox.watch.shows(change):
                    inbox.put(event)

    # -- reading ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self.fresh_at = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="bulkgen-event-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, work: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.access.call, work)

    async def run(self) -> None:
        """Poll until cancelled; a store that fails is logged and read again (streams wait meanwhile)."""
        while True:
            try:
                if not self.ready.is_set():
                    self.cursor, lag = await self._call(lambda s: (s.last_change(), s.change_lag))
                    self.strict = lag == 0
                    self.ready.set()
                full = await self.poll_once()
            except BulkgenError as exc:
                LOG.warning("event poller: %s (trying again in %g s)", exc, RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if not full:
                await asyncio.sleep(self.interval)

    async def poll_once(self) -> bool:
        """Read what is new and hand it out; True when a whole page came (more may wait)."""
        self.reading_since = time.monotonic()
        try:
            changes, events = await self._call(self._read)
        finally:
            self.reading_since = None
        self.fresh_at = time.monotonic()
        for event in events:
            if self._first_time(event.key):
                self._route(event)
        if changes:
            self.cursor = max(self.cursor, max(c.seq for c in changes))
        return len(changes) >= PAGE

    def _read(self, store: Store) -> tuple[list[StateChange], list[Event]]:
        changes = store.changes_since(self.cursor, PAGE, now=utcnow())
        new = [c for c in changes if (c.seq, c.record_id) not in self._seen]
        return changes, to_events(store, new)

    def _first_time(self, key: Key) -> bool:
        """Whether a change is new; only a store whose numbers land late re-reads any (and needs the keys)."""
        if self.strict:
            return True
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return True

    # -- health ------------------------------------------------------------------------------------------

    def trouble(self) -> str | None:
        """Why live progress does not flow now (None: it does)."""
        now = time.monotonic()
        if self._task is not None and self._task.done():
            return "the poller stopped"
        if self.reading_since is not None and now - self.reading_since > self.stuck:
            return f"a read of the change log has not returned for {now - self.reading_since:.0f} s"
        if now - self.fresh_at > self.stuck:
            return f"no read of the change log succeeded for {now - self.fresh_at:.0f} s"
        return None

    def hung(self) -> bool:
        """Whether restarting may help: the task ended, or a read hangs (a failing store is retried anyway)."""
        reading = self.reading_since
        return (self._task is not None and self._task.done()) or (
            reading is not None and time.monotonic() - reading > self.stuck)

    def restart(self) -> None:
        """A new task from the same cursor (a read that hangs is left to its thread; its answer is dropped)."""
        if self._task is not None:
            self._task.cancel()
        self.reading_since = None
        self.start()

    async def store_ahead(self) -> bool | None:
        """Whether the store holds changes above the cursor (None: it did not say within a second)."""
        try:
            async with asyncio.timeout(1.0):
                top = await asyncio.to_thread(self.access.call, lambda s: s.last_change())
        except (TimeoutError, BulkgenError):
            return None
        return top > self.cursor


async def watchdog(poller: Poller, every: float | None = None) -> None:
    """Says when live progress stops and starts flowing; restarts a poller that stopped or hangs (after
    `stuck` seconds, then at growing intervals while it stays stuck)."""
    backoff, restarted, stuck = poller.stuck, -math.inf, False
    while True:
        await asyncio.sleep(every or WATCH_SECONDS)
        trouble = poller.trouble()
        if trouble is not None and not stuck:
            LOG.error("live progress is stuck: %s; /healthz answers 503", trouble)
        elif trouble is None and stuck:
            LOG.warning("live progress flows again (change %d)", poller.cursor)
            backoff = poller.stuck
        stuck = trouble is not None
        if poller.hung() and time.monotonic() - restarted >= backoff:
            ahead = await poller.store_ahead()
            said = {True: "has newer changes", False: "has nothing newer", None: "did not answer"}[ahead]
            LOG.error("event poller restarted at change %d: %s (the store %s)", poller.cursor, trouble, said)
            poller.restart()
            restarted, backoff = time.monotonic(), min(backoff * 2, 60.0)


async def prune_forever(access: StoreAccess, retention: float | None, every: float = PRUNE_SECONDS) -> None:
    """Drop changes older than `retention` seconds now and every `every` seconds, PRUNE_BATCH per write."""
    if retention is None:
        return
    while True:
        try:
            gone = await asyncio.to_thread(prune, access, utcnow() - dt.timedelta(seconds=retention))
        except BulkgenError as exc:
            LOG.warning("pruning the change log: %s (trying again in %g s)", exc, every)
        else:
            if gone:
                LOG.info("pruned %d changes older than %s from the change log", gone, iso(utcnow() - dt.timedelta(
                    seconds=retention)))
        await asyncio.sleep(every)


def prune(access: StoreAccess, before: dt.datetime) -> int:
    total = 0
    while True:
        gone = access.call(lambda s: s.prune_changes(before, PRUNE_BATCH))
        total += gone
        if gone < PRUNE_BATCH:
            return total


class Streams:
    """The open streams of each token (hashed): at most `cap` each, and a revoked token's end within about
    TOKEN_CHECK_SECONDS, wherever it was revoked: one lookup per token a second, shared by its streams."""

    def __init__(self, access: StoreAccess, cap: int):
        self.access, self.cap = access, cap
        self.open: dict[str, set[Inbox]] = {}

    def admit(self, token: str, inbox: Inbox) -> bool:
        mine = self.open.get(token, set())
        if len(mine) >= self.cap:
            return False
        self.open[token] = mine | {inbox}
        return True

    def release(self, token: str, inbox: Inbox) -> None:
        mine = self.open.get(token)
        if mine is not None:
            mine.discard(inbox)
            if not mine:
                del self.open[token]

    async def end_revoked(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_CHECK_SECONDS)
            hashes = list(self.open)
            if not hashes:
                continue
            try:
                live = await asyncio.to_thread(self.access.call, lambda s: {
                    h for h in hashes if s.token_by_hash(h) is not None})
            except BulkgenError as exc:
                LOG.warning("checking the tokens of open streams: %s", exc)
                continue
            for token in hashes:
                if token not in live:
                    for inbox in list(self.open.get(token, ())):
                        inbox.end("the token was revoked")


class Sent:
    """What a stream has sent: nothing at or below `floor` (the client has it), nothing twice.

    Where the store numbers changes in commit order (`strict`), the floor rises with every event sent;
    otherwise a late change can carry a lower number than one sent already, so keys are remembered.
    """

    def __init__(self, floor: int, strict: bool):
        self.floor, self.strict = floor, strict
        self.keys: OrderedDict[Key, None] = OrderedDict()

    def first_time(self, key: Key) -> bool:
        if key[0] <= self.floor or key in self.keys:
            return False
        if self.strict:
            self.floor = key[0]
            return True
        self.keys[key] = None
        if len(self.keys) > SEEN:
            self.keys.popitem(last=False)
        return True


def _send(events: Iterable[Event], watch: Watch, sent: Sent) -> bytes:
    return b"".join(e.encoded for e in events if watch.shows(e.change) and sent.first_time(e.key))


def read_page(store: Store, after: int, watch: Watch) -> tuple[list[StateChange], list[Event]]:
    """One page of the log after `after` (the watch's user's or job's changes only, by index), and its events."""
    changes = store.changes_since(after, PAGE, user=None if watch.admin else watch.user, bulk_id=watch.bulk_id,
                                  now=utcnow())
    return changes, to_events(store, [c for c in changes if watch.shows(c)])


async def catch_up(poller: Poller, watch: Watch, sent: Sent, upto: int, offload: Offload[Any]) -> AsyncIterator[bytes]:
    """What the stream missed from the store, from what it sent up to `upto`, a page at a time (memory bounded
    by PAGE whatever the backlog); a `reset` instead when pruning dropped some of it, or when the client's
    position is beyond every change of this store (it would otherwise wait for numbers it already holds)."""
    cursor = sent.floor
    floor, newest = await offload(lambda s: (s.changes_floor(), s.last_change()))
    if cursor < floor:
        sent.floor = max(sent.floor, upto)
        yield reset_event(upto)
        return
    newest = max(newest, floor)  # a log pruned whole still numbered up to its floor
    if cursor > newest:  # a number this store never gave (it was restored or swapped): start again from now
        sent.floor = newest
        yield reset_event(newest)
        return
    while cursor < upto:
        after = cursor
        changes, events = await offload(lambda s: read_page(s, after, watch))
        chunk = _send(events, watch, sent)
        if chunk:
            yield chunk
        cursor = max((c.seq for c in changes), default=cursor)
        if len(changes) < PAGE or cursor <= after:
            return


async def stream(poller: Poller, inbox: Inbox, last_id: int | None, heartbeat: float, stopping: Callable[[], bool],
                 offload: Offload[Any]) -> AsyncIterator[bytes]:
    """The SSE body: missed events (with `last_id`), then live ones, a heartbeat comment when idle. The inbox
    is subscribed before this starts, so nothing falls between what is read and what arrives."""
    yield f"retry: {RETRY_MS}\n: bulkgen events\n\n".encode()
    await poller.ready.wait()
    watch = inbox.watch
    sent = Sent(last_id or 0, poller.strict)
    if last_id is not None:
        async for chunk in catch_up(poller, watch, sent, max(poller.cursor, last_id), offload):
            yield chunk
    last_write = time.monotonic()
    while not stopping() and inbox.ended is None:
        events, lost = inbox.take()
        if lost:  # this stream fell behind its inbox: the gap comes from the store
            async for chunk in catch_up(poller, watch, sent, poller.cursor, offload):
                yield chunk
        chunk = _send(events, watch, sent)
        if chunk:
            yield chunk
            last_write = time.monotonic()
        elif time.monotonic() - last_write >= heartbeat:
            yield b": heartbeat\n\n"
            last_write = time.monotonic()
        await inbox.wait(min(1.0, max(0.05, heartbeat - (time.monotonic() - last_write))))
    if inbox.ended is not None:
        yield f": {inbox.ended}\n\n".encode()


class EventStream(Response):
    """A stream's answer: admitted under its token's cap (else `refusal`), subscribed for its whole life, ended
    when the client goes. Each write is followed by a turn of the event loop, so a connection that failed is
    seen before the next write (a send to a gone client is then dropped by the server, not written)."""

    media_type = "text/event-stream"

    def __init__(self, poller: Poller, streams: Streams, token: str, watch: Watch, last_id: int | None,
                 heartbeat: float, stopping: Callable[[], bool], offload: Offload[Any], refusal: Response):
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # no body: no Content-Length
        self.poller, self.streams, self.token, self.refusal = poller, streams, token, refusal
        self.inbox = Inbox(watch)
        self.body_of = functools.partial(stream, poller, self.inbox, last_id, heartbeat, stopping, offload)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.streams.admit(self.token, self.inbox):
            await self.refusal(scope, receive, send)
            return
        self.poller.subscribe(self.inbox)
        body = self.body_of()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_until_gone, receive, group.cancel_scope)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await anyio.lowlevel.checkpoint()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:
            pass  # a server that raises on a send to a gone client: the stream is over
        finally:
            self.poller.unsubscribe(self.inbox)
            self.streams.release(self.token, self.inbox)
            with contextlib.suppress(Exception):
                await body.aclose()


async def _until_gone(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()

