"""Live progress as Server-Sent Events, read from the store's change log (design.md, "Live progress").

One `Poller` per server process reads the log every POLL_SECONDS with one
indexed query and keeps the recent events in memory; every open stream reads
from there, so a hundred streams cost the store what one does. A stream that
resumes (`Last-Event-ID`) first reads what it missed from the store itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable

from bulkgen_cli.errors import BulkgenError
from bulkgen_cli.model import ChangeKind, ItemStatus, StateChange, iso
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.store.base import Store

#: Events kept in memory for the streams of this process.
BUFFER = 20_000
#: Changes read per store query.
PAGE = 1_000
#: Keys remembered to drop a change read twice (a store whose numbers may land late re-reads a window).
SEEN = 100_000
#: Seconds before the poller reads a failing store again.
RETRY_AFTER = 2.0
LOG = logging.getLogger("bulkgen.events")
#: The browser's reconnection delay, sent once per stream (milliseconds).
RETRY_MS = 2_000

Key = tuple[int, str]


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

    def encode(self) -> bytes:
        name = event_name(self.change)
        return f"id: {self.change.seq}\nevent: {name}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n".encode()


def to_events(store: Store, changes: list[StateChange]) -> list[Event]:
    """Events for changes, each with its job's progress as read now."""
    from bulkgen_cli.render import progress_dict

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


class Poller:
    """Reads the store's change log for every stream of this process."""

    def __init__(self, access: StoreAccess, interval: float):
        self.access, self.interval = access, interval
        self.buffer: deque[tuple[int, Event]] = deque(maxlen=BUFFER)
        #: the index the next event appended gets
        self.next_index = 0
        self.cursor = 0
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self._changed = asyncio.Condition()
        #: whether the store's change numbers are in commit order (Store.change_lag is 0)
        self.strict = True
        #: set once the cursor is known: a stream that started earlier would not know where the buffer begins
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Poll until cancelled; a store that fails is logged and read again (streams wait meanwhile)."""
        self.cursor, lag = await asyncio.to_thread(self.access.call, lambda s: (s.last_change(), s.change_lag))
        self.strict = lag == 0
        self.ready.set()
        while True:
            try:
                full = await self.poll_once()
            except BulkgenError as exc:
                LOG.warning("event poller: %s (trying again in %g s)", exc, RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if not full:
                await asyncio.sleep(self.interval)

    async def poll_once(self) -> bool:
        """Read what is new; True when a whole page came (more may wait)."""
        changes, events = await asyncio.to_thread(self.access.call, self._read)
        fresh = [e for e in events if self._first_time(e.key)]
        if fresh:
            async with self._changed:
                for event in fresh:
                    self.buffer.append((self.next_index, event))
                    self.next_index += 1
                self._changed.notify_all()
        if changes:
            self.cursor = max(self.cursor, max(c.seq for c in changes))
        return len(changes) >= PAGE

    def _read(self, store: Store) -> tuple[list[StateChange], list[Event]]:
        changes = store.changes_since(self.cursor, PAGE)
        new = [c for c in changes if (c.seq, c.record_id) not in self._seen]
        return changes, to_events(store, new)

    def _first_time(self, key: Key) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return True

    def since(self, index: int) -> tuple[list[Event], bool, int]:
        """Events appended at `index` or later, whether some of them already left the buffer, and the
        index to ask from next time."""
        first = self.buffer[0][0] if self.buffer else self.next_index
        return [e for i, e in self.buffer if i >= index], index < first, self.next_index

    async def wait(self, index: int, timeout: float) -> None:
        """Until an event with `index` or later exists, or `timeout` seconds passed."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.next_index > index), timeout)
            except asyncio.TimeoutError:
                pass


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


def read_missed(store: Store, after: int, upto: int, watch: Watch) -> list[Event]:
    """A resuming stream's events: the log after `after`, up to `upto` (where the poller took over)."""
    out: list[StateChange] = []
    cursor = after
    while cursor < upto:
        page = store.changes_since(cursor, PAGE)
        if not page:
            break
        out.extend(c for c in page if c.seq > after and watch.shows(c))
        cursor = max(c.seq for c in page)
        if len(page) < PAGE:
            break
    return to_events(store, out)


async def stream(poller: Poller, watch: Watch, last_id: int | None, heartbeat: float,
                 stopping: Callable[[], bool]) -> AsyncIterator[bytes]:
    """The SSE body: missed events (with `last_id`), then live ones, a heartbeat comment when idle."""
    yield f"retry: {RETRY_MS}\n: bulkgen events\n\n".encode()
    await poller.ready.wait()
    index = poller.next_index
    sent = Sent(last_id or 0, poller.strict)
    if last_id is not None:
        upto = max(poller.cursor, last_id)
        missed = await asyncio.to_thread(poller.access.call, lambda s: read_missed(s, last_id, upto, watch))
        for chunk in _send(missed, watch, sent):
            yield chunk
    last_write = time.monotonic()
    while not stopping():
        events, lost, index = poller.since(index)
        if lost:  # this stream fell behind the buffer: read the gap from the store
            after = sent.floor
            gap = await asyncio.to_thread(poller.access.call, lambda s: read_missed(s, after, poller.cursor, watch))
            events = gap + events
        chunks = list(_send(events, watch, sent))
        for chunk in chunks:
            yield chunk
        if chunks:
            last_write = time.monotonic()
        elif time.monotonic() - last_write >= heartbeat:
            yield b": heartbeat\n\n"
            last_write = time.monotonic()
        await poller.wait(index, min(1.0, max(0.05, heartbeat - (time.monotonic() - last_write))))


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


def _send(events: Iterable[Event], watch: Watch, sent: Sent) -> Iterable[bytes]:
    for event in events:
        if watch.shows(event.change) and sent.first_time(event.key):
            yield event.encode()
