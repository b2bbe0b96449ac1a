"""Outside processing, a signal ends the command at once.

SystemExit unwinds through open SQLite transactions, which roll back, so the
store stays consistent. Processing installs its own handlers (runner.Runner).
"""

from __future__ import annotations

import signal
import sys


def exit_on_signals() -> None:
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
