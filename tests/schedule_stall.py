"""Test-only: bulkgen with a stall point and a shifted schedule clock (never part of the product).

    python -m tests.schedule_stall run --forever

STALL_AT names a function of `bulkgen_cli.schedules`: `_still_owed` (the process stops right after its
first check that passes) or `submit_for` (right before its first job is made, after the decision). There
it writes its pid to STALL_FILE and stops itself (SIGSTOP) until continued (SIGCONT).
CLOCK_SHIFT (seconds) moves the clock `run --forever` reads the schedules by, so that a test need not wait
for the next occurrence: a processor a day ahead finds the next daily run due.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from bulkgen_cli import schedules
from bulkgen_cli.model import utcnow


def stop_here() -> None:
    Path(os.environ["STALL_FILE"]).write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)


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
    from bulkgen_cli.cli import main

    sys.argv = ["bulkgen", *sys.argv[1:]]
    main()
