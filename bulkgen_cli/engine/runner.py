"""Running processors: the role huey's Consumer plays (design.md, "The processor").

`Runner` starts `--concurrency` processors (threads, each with its own store
connection and its own notifier), turns SIGINT/SIGTERM into a stop (the first
lets the request in flight finish within `--grace`, the second aborts it), and
decides when a `submit --wait` is over: its jobs ended and their
notifications were delivered or given up. It prints nothing; events go to
`on_event`, and the caller renders them.

It reads no settings of its own: the front end passes the processor's settings,
the SMTP settings and retry delays of its notifier, and, for `run --forever`,
how to make the schedules' ticker (ops.schedules.Ticker; the engine does not
import the operations).
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from bulkgen_cli.content import Generator
from bulkgen_cli.content.http import HttpGenerator
from bulkgen_cli.content.offline import OfflineGenerator
from bulkgen_cli.core.channels import RETRY_DELAYS, SmtpSettings
from bulkgen_cli.core.events import Event, Queue, Stopping
from bulkgen_cli.core.model import ACTIVE_BULK, ENDED_BULK, BulkJob, outbox_open
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.delivery.notify import Delivery, Notifier
from bulkgen_cli.engine.processor import Processor
from bulkgen_cli.store.base import Store

ENDED = {s.value for s in ENDED_BULK}
#: At most this many jobs are shown as rows when a run starts.
QUEUE_ROWS = 20
#: How long the main thread waits on a worker before looking again (signals reach it between waits).
JOIN_POLL = 0.2


class Ticking(Protocol):
    """What `run --forever` runs beside its processors in a thread: the schedules' ticker (ops.schedules.Ticker)."""

    thread: threading.Thread | None

    def run(self) -> None: ...

    def stop(self) -> None: ...

    def next_due(self) -> dt.datetime | None: ...


@dataclass(frozen=True)
class RunResult:
    #: the exit code a signal asked for (130, 143), or None when the run ended by itself
    stopped: int | None
    #: with `until_bulks`: those jobs as they ended
    finals: list[BulkJob]
    #: items handed back to the queue because of the stop (their try not counted)
    handed_back: int = 0
    #: this run only watched another processor: it held no slot when it stopped
    attached: bool = False


def generator_for(run_settings: RunSettings) -> Generator:
    """The content service client, or the offline draft writer when no service is set."""
    if run_settings.api_url:
        return HttpGenerator(run_settings.api_url, run_settings.api_token, run_settings.timeout)
    return OfflineGenerator()


class Runner:
    def __init__(self, store: Store, run_settings: RunSettings, open_store: Callable[[], Store],
                 on_event: Callable[[Event | Delivery], None], *, smtp: SmtpSettings | None = None,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS, ticker: Callable[[str], Ticking] | None = None):
        """`store` serves the first processor; `open_store()` gives each further one its own connection.
        `smtp` and `retry_delays` are each processor's notifier's; `ticker(owner)` makes the schedules' ticker
        that `run(forever=True)` runs (None: no schedules are looked at)."""
        self.store, self.settings, self.open_store, self.on_event = store, run_settings, open_store, on_event
        self.smtp, self.retry_delays, self.ticker = smtp, retry_delays, ticker
        self.workers: list[Processor] = []
        self.errors: list[BaseException] = []
        self._attached = False

    def run(self, forever: bool = False, until_bulks: list[str] | None = None) -> RunResult:
        """Process until the queue is idle (or forever, or until `until_bulks` are over)."""
        waiting = self.store.list_bulks(None, QUEUE_ROWS, ACTIVE_BULK)
        self.on_event(Queue(sorted(waiting, key=lambda b: (b.created_at, b.id))))
        self.workers = [self._processor(self.store if n == 0 else self.open_store())
                        for n in range(self.settings.concurrency)]
        schedules = self._schedules() if forever and self.ticker is not None else None
        try:
            with self._signals() as received:
                self._work(forever, until_bulks)
        finally:
            if schedules is not None:
                schedules.stop()
            for processor in self.workers[1:]:
                processor.store.close()
        if self.errors and not received:
            raise self.errors[0]
        finals = [b for b in (self.store.get_bulk(i) for i in until_bulks or []) if b is not None]
        return RunResult(received.get("code"), finals, sum(p.handed_back for p in self.workers), self._attached)

    def _schedules(self) -> Ticking:
        """`run --forever` submits the schedules' occurrences: a thread with its own connection (schedules.Ticker)."""
        assert self.ticker is not None
        ticker = self.ticker(f"{self.workers[0].owner}:schedules")
        thread = threading.Thread(target=ticker.run, name="schedules", daemon=True)
        ticker.thread = thread
        for processor in self.workers:
            processor.wake_at = ticker.next_due  # an idle processor wakes up for the next occurrence
        thread.start()
        return ticker

    def _processor(self, store: Store) -> Processor:
        processor = Processor(store, generator_for(self.settings), self.settings, on_event=self.on_event)
        processor.notifier = Notifier(store, processor.owner, self.smtp, self.settings.on_complete,
                                      on_delivery=self.on_event, retry_delays=self.retry_delays)
        return processor

    def _work(self, forever: bool, until_bulks: list[str] | None) -> None:
        if len(self.workers) == 1:
            self._one(self.workers[0], forever, until_bulks)
            return
        threads = [threading.Thread(target=self._one, args=(p, forever, until_bulks), daemon=True)
                   for p in self.workers]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=JOIN_POLL)

    def _one(self, processor: Processor, forever: bool, until_bulks: list[str] | None) -> None:
        until = (lambda: bulks_over(processor.store, until_bulks)) if until_bulks else None
        try:
            processor.run(until_idle=not forever, until=until)
        except BaseException as exc:  # noqa: BLE001  re-raised by run() in the main thread
            self.errors.append(exc)
            self.stop()
        finally:
            processor.generator.close()

    def stop(self) -> None:
        """Ask every processor to stop (safe from a signal handler); a second call aborts requests in flight."""
        for processor in self.workers:
            processor.stop()

    def _stopping_message(self, again: bool) -> str:
        """What a stop does, said at once."""
        in_flight = [p for p in self.workers if p.working_on is not None]
        if again:
            return ("stopping now: aborting the request in flight; its item goes back to the queue, "
                    "the try not counted" if in_flight else "stopping now")
        if not any(p.holding for p in self.workers):
            self._attached = True
            return "stopping: this run only watches another processor, which goes on; nothing of it is in flight"
        if in_flight:
            return (f"stopping: waiting up to {self.settings.grace:g} s for the request in flight to finish; "
                    "press Ctrl-C again to abort it")
        return "stopping: nothing is in flight"

    @contextmanager
    def _signals(self) -> Iterator[dict[str, int]]:
        """SIGINT/SIGTERM stop the processors; the exit code follows the signal. Main thread only."""
        received: dict[str, int] = {}
        if threading.current_thread() is not threading.main_thread():
            yield received
            return

        def handler(signum: int, frame: object) -> None:
            again = "code" in received
            received["code"] = 128 + signum
            self.on_event(Stopping(self._stopping_message(again)))
            self.stop()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield received
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def bulks_over(store: Store, bulk_ids: list[str]) -> bool:
    """Over when they ended and their notifications were delivered (or given up)."""
    for bulk_id in bulk_ids:
        bulk = store.get_bulk(bulk_id)
        if bulk is not None and (bulk.status not in ENDED or outbox_open(bulk.outbox)):
            return False
    return True
