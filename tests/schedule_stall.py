"""Test-only: bulkgen with a stall point and a shifted schedule clock (never part of the product).

    python -m tests.schedule_stall run --forever

STALL_AT names a function of `bulkgen_cli.ops.schedules`: `_still_owed` (the process stops right after its
first check that passes) or `submit_for` (right before its first job is made, after the decision). There
it writes its pid to STALL_FILE and stops itself (SIGSTOP); continued (SIGCONT), it goes on once the file
STALL_FILE + ".go" exists.
CLOCK_SHIFT (seconds) moves the clock `run --forever` reads the schedules by, so that a test need not wait
for the next occurrence: a processor a day ahead finds the next daily run due.

The process stops only between SQLite write transactions of its threads (its processors keep polling the
queue): stopped inside one, it would hold the store's write lock, and every other process would wait for
it, which is not what these tests are about.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bulkgen_cli.ops import schedules
from bulkgen_cli.core.model import utcnow
from bulkgen_cli.store.sqlite import SqliteStore

#: held by every write transaction of this process, and while it is stopped
WRITES = threading.RLock()


def stop_here() -> None:
    """Say so (STALL_FILE), stop (SIGSTOP), and go on once continued and told to (STALL_FILE + ".go").

    A SIGSTOP that a thread sends its own process takes effect only once the main thread handles it, so
    the test waits until the process is stopped, and this thread waits for the word, given after SIGCONT."""
    stall = Path(os.environ["STALL_FILE"])
    with WRITES:
        stall.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
        go = stall.with_name(stall.name + ".go")
        while not go.exists():
            time.sleep(0.01)


def one_writer_at_a_time() -> None:
    real = SqliteStore._tx

    @contextmanager
    def tx(self: SqliteStore) -> Iterator[Any]:
        with WRITES, real(self) as db:
            yield db

    SqliteStore._tx = tx  # type: ignore[method-assign]


def hooked(real: Callable[..., Any], after: bool) -> Callable[..., Any]:
    """`real`, stopping the process once: after a call that returned something true, or before the call."""
    stopped: list[bool] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not after and not stopped:
            stopped.append(True)
            stop_here()
        result = real(*args, **kwargs)
        if after and result and not stopped:
            stopped.append(True)
            stop_here()
        return result
    return call


def install() -> None:
    one_writer_at_a_time()
    shift = dt.timedelta(seconds=float(os.environ.get("CLOCK_SHIFT", "0")))
    init = schedules.Ticker.__init__

    def shifted(self: schedules.Ticker, store: Any, owner: str, on_event: Any, clock: Any = None) -> None:
        init(self, store, owner, on_event, clock=lambda: utcnow() + shift)

    schedules.Ticker.__init__ = shifted  # type: ignore[method-assign]
    name = os.environ.get("STALL_AT")
    if name:
        setattr(schedules, name, hooked(getattr(schedules, name), after=name == "_still_owed"))


if __name__ == "__main__":
    install()
    from bulkgen_cli.cli.main import main

    sys.argv = ["bulkgen", *sys.argv[1:]]
    main()
