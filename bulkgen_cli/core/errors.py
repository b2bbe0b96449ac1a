"""Exceptions raised by the library; the CLI maps each to one exit code (cli/main.py); the server to one HTTP problem (server/problems.py)."""

from __future__ import annotations

from dataclasses import dataclass

from bulkgen_cli.core.text import quoted

MIB = 1024 * 1024


class BulkgenError(Exception):
    """Root of every error bulkgen raises on purpose.

    `cli` ends the message where the CLI prints it (a flag or command to try); `http` ends it in an HTTP
    answer instead, which names no flag or command (server/problems.py).
    """

    exit_code = 1
    cli = ""
    http = ""

    def __init__(self, *args: object, cli: str = "", http: str = "") -> None:
        super().__init__(*args)
        if cli:
            self.cli = cli
        if http:
            self.http = http

    def __str__(self) -> str:
        return super().__str__() + self.cli

    def fact(self) -> str:
        """The message alone, for a record any front end shows (a schedule's last error): no ending."""
        return super().__str__()

    def for_http(self) -> str:
        """The message as an HTTP answer says it: without the CLI's ending."""
        return super().__str__() + self.http


class UsageError(BulkgenError):
    """A flag, setting or argument is not acceptable; nothing was stored."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One located problem in an articles file."""

    file: str
    message: str
    item: int | None = None  # 1-based position in the file
    line: int | None = None
    field: str | None = None
    #: a template's values file: the 1-based row (one item per row) and the column, when the problem has them
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.item is not None:
            where.append(f"item {self.item}" + (f" (line {self.line})" if self.line else ""))
        elif self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        elif self.line:
            where.append(f"line {self.line}")
        if self.column:
            where.append(f"column '{self.column}'")
        if self.field:
            where.append(f"field '{self.field}'")
        return ", ".join(where) + ": " + self.message


class ManifestError(UsageError):
    """The articles file (or a template and its rows) is not acceptable; carries every problem found."""

    def __init__(self, problems: list[Problem], subject: str = "the articles file"):
        self.problems = problems
        #: what the problems are in, for the heading ("the articles file has 2 problems")
        self.subject = subject
        super().__init__("\n".join(str(p) for p in problems))


class NotFound(BulkgenError):
    """No bulk job with that id is visible to this user."""

    exit_code = 3


def none_named(kind: str, name: str) -> NotFound:
    """No `kind` (template, schedule) of that name is the user's: where to list theirs, on the CLI and over HTTP."""
    return NotFound(f"no {kind} {quoted(name)} for this user", cli=f" (see `bulkgen {kind} list`).",
                    http=f" (GET /api/{kind}s lists yours).")


class InvalidTransition(BulkgenError):
    """The operation is not allowed in the bulk job's current state."""

    exit_code = 4


class NameTaken(BulkgenError):
    """A name is already used (a saved template without --replace); nothing was written."""

    exit_code = 4


class NoStore(BulkgenError):
    """A command that does not create the store found none at its path; nothing was created."""

    exit_code = 4


class TimedOut(BulkgenError):
    """A wait ran out (`watch --timeout`); exit 124, as `timeout` does."""

    exit_code = 124


class StoreUnavailable(BulkgenError):
    """The store cannot be opened, reached or used."""

    exit_code = 5


class StoreReadOnly(StoreUnavailable):
    """A writing command met a store it may not write; nothing was changed."""


class StoreFull(StoreUnavailable):
    """The disk holding the store is full; nothing was changed."""


class ServiceUnavailable(BulkgenError):
    """The content service stayed unreachable past the give-up time."""

    exit_code = 5


class CannotListen(BulkgenError):
    """`bulkgen serve`: the address and port cannot be bound (in use, or not an address of this machine)."""

    exit_code = 6


class QuotaExceeded(BulkgenError):
    """A new bulk job would put its user over a per-user limit (store.rules.Quota); nothing was stored.

    `which`: "active_jobs" (`have` jobs active, the limit `limit`), "stored_bytes" (`have` bytes stored, the
    new job adding `adds`, the limit `limit` bytes), "templates" or "schedules" (`have` of them, a new one
    refused).
    Only a server (or a schedule made over HTTP) sets limits.
    Exit 2, as for a request that is not acceptable: nothing was stored.
    """

    exit_code = 2

    def __init__(self, which: str, have: int, limit: int, adds: int = 0) -> None:
        self.which, self.have, self.limit, self.adds = which, have, limit, adds
        if which == "active_jobs":
            text = (f"over the active-jobs limit: {have} active jobs (queued, processing or paused), "
                    f"the limit is {limit} per user")
            flag = "--max-active-jobs"
        elif which in ("templates", "schedules"):
            text = f"over the {which} limit: {have} {'saved templates' if which == 'templates' else which}, " \
                   f"the limit is {limit} per user"
            flag = f"--max-{which}"
        else:
            text = (f"over the stored-bytes limit: {have / MIB:.1f} MiB stored, this job adds {adds / MIB:.1f} MiB, "
                    f"the limit is {limit // MIB} MiB per user")
            flag = "--max-stored-mb"
        super().__init__(text, cli=f" (the server's operator raises it with `bulkgen serve {flag} N`).")
