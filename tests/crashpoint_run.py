"""Test harness, not part of the product: `bulkgen` that SIGKILLs itself after a chosen store call.

    python -m tests.crashpoint_run --last N --kill-after K --calls FILE -- run -q

runs `bulkgen run -q` with every store method of `SqliteStore` wrapped. Once
`claim_next` returns the item at queue position N (the job's last), every
store call that returns is counted, nested ones too (a verb made of verbs
counts each: a kill there falls inside its transaction), and its name
appended to FILE. After the K-th the process kills itself with SIGKILL, as a
crash at that point would. K = 0 never kills: FILE then lists the whole path.

A step that a killed sender left locked is taken back when its lock ends (a
webhook's: its send deadline plus a margin, 15 s), so a kill there costs the
next run that long.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from typing import Any, Callable

from bulkgen_cli.store.base import Store
from bulkgen_cli.store.sqlite import SqliteStore

#: Store methods that are not verbs (connections, transactions, helpers) are not crash points.
NOT_CALLS = {"close", "_write_held"}


def verbs() -> list[str]:
    """The contract's methods (and the one conditional write they share), as SqliteStore has them."""
    names = {n for n, f in inspect.getmembers(Store, inspect.isfunction) if not n.startswith("_")}
    return sorted((names - NOT_CALLS) | {"_write_held"})


class Path:
    def __init__(self, last: int, kill_after: int, log: Any) -> None:
        self.last, self.kill_after, self.log = last, kill_after, log
        self.armed, self.count = False, 0

    def returned(self, name: str, result: Any) -> None:
        if name == "claim_next" and result is not None and result.queue_position == self.last:
            self.armed = True
        if not self.armed:
            return
        self.count += 1
        self.log.write(name + "\n")
        self.log.flush()
        if self.count == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def wrap(name: str, method: Callable[..., Any], path: Path) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        path.returned(name, result)
        return result

    return call


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    options, command = dict(zip(args[:split:2], args[1:split:2])), args[split + 1:]
    path = Path(int(options["--last"]), int(options["--kill-after"]), open(options["--calls"], "a"))
    for name in verbs():
        setattr(SqliteStore, name, wrap(name, getattr(SqliteStore, name), path))
    sys.argv = ["bulkgen", *command]
    from bulkgen_cli.cli.main import main as bulkgen

    bulkgen()


if __name__ == "__main__":
    main()
