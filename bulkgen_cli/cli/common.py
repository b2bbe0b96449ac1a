"""What every command module shares: the common options, messages on stderr, JSON on stdout, the store.

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Callable, Optional, Sequence, TypeVar

import typer

from bulkgen_cli.core import settings
from bulkgen_cli.core.errors import NoStore
from bulkgen_cli.core.settings import DEFAULTS
from bulkgen_cli.core.text import visible

if TYPE_CHECKING:
    from bulkgen_cli.store.base import OpenMode, Store

EXIT_CODES = """\
Exit codes: 0 success; 1 a waited-for bulk job ended with failed or cancelled
items, or `doctor` found jobs it did not repair; 2 bad input or usage, nothing stored; 3 no such job, item, template or schedule; 4 not allowed
in the job's current state, or no store at the path (none is created); 5 store
unreachable, read-only or on a full disk, or content service unreachable; 6 `serve`
cannot listen on the address and port; 124 `watch --timeout` ran out; 130/143 stopped by Ctrl-C / SIGTERM, store left consistent."""

StoreOpt = Annotated[
    Optional[str],
    typer.Option("--store", metavar="URL", help="Where jobs live: sqlite:///PATH or mongodb://HOST/DB. [env: BULKGEN_STORE; "
                 "default: sqlite file under $XDG_DATA_HOME/bulkgen/]", show_default=False),
]
UserOpt = Annotated[
    Optional[str],
    typer.Option("--user", metavar="NAME", help="Who you are: jobs are stored and listed per user. [env: BULKGEN_USER; "
                 "default: your login name]", show_default=False),
]
AllUsersOpt = Annotated[bool, typer.Option("--all-users", help="Act on any user's jobs, not only yours.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Say nothing per item: only errors and the final "
                                        "line.")]


class InputFormat(str, Enum):
    """--format of `submit` and `schedule add`: an articles file's (or a template's rows') format."""

    yaml = "yaml"
    csv = "csv"


# The job options (ops/options.py, `JobOptions`) as `submit` and `schedule add` take them; where the two word
# a help differently (a schedule's says "each job"), each command declares its own alias, and
# tests/test_fields.py checks that both take every option.
ModeOpt = Annotated[Optional[str], typer.Option("--mode", metavar="MODE", help="topic, keywords, trends or spin, when "
                    "the file names none. [default: topic]", show_default=False)]


T = TypeVar("T")

ANSI = {"red": "31", "yellow": "33", "dim": "2"}


def paint(text: str, style: str) -> str:
    """Colour for a terminal (not with NO_COLOR): plain escapes, so messages need not load rich."""
    if not style or not sys.stderr.isatty() or os.environ.get("NO_COLOR"):
        return text
    return f"\x1b[{ANSI[style]}m{text}\x1b[0m"


def quiet_note(message: str, style: str = "") -> None:
    """--quiet: informational messages are not said."""


def note(message: str, style: str = "") -> None:
    """A message on stderr; what came from a file, the store or a service is shown as it is (text.visible)."""
    sys.stderr.write(paint(visible(message), style) + "\n")
    sys.stderr.flush()


def open_db(store_flag: str | None, mode: OpenMode) -> Store:
    """The store for a command. mode: "read" (reading commands: never creates or writes it),
    "write" (an existing store) or "create" (submit and run: made when missing)."""
    from bulkgen_cli.store import open_store

    return open_store(settings.store_url(store_flag), mode)


def open_or_create(store_flag: str | None) -> Store:
    """`open_db(store_flag, "create")` for `template save` and `schedule add`, saying on stderr when there was no
    store and one was made, so that a mistyped --store shows at once."""
    try:
        return open_db(store_flag, "write")
    except NoStore:
        db = open_db(store_flag, "create")
        note(f"There was no store at {db.display_url}: a new one was created there.", "dim")
        return db


def ratio(text: str | float) -> float:
    """--quality-ratio: a share from 0 to 1 (0.7) or a percentage (70%)."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise typer.BadParameter(f"{raw!r} is not a share from 0 to 1 (such as 0.7) or a percentage (such as "
                                 "70%).") from None
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{raw} is not in the range 0.0<=x<=1.0 (or 0% to 100%).")
    return value


def render_json(doc: object) -> None:
    from bulkgen_cli.cli.render import print_json

    print_json(doc)


def listed(found: Sequence[T], json_: bool, document: Callable[[T], object], empty: str) -> bool:
    """A list command's first say: with --json every record's document, with none found `empty`; True when that
    was all (else the caller prints its table)."""
    if json_:
        render_json([document(record) for record in found])
        return True
    if not found:
        note(empty)
        return True
    return False


# -- a processor's options (run, submit --wait, serve) -------------------------------------------------------------

ApiUrlOpt = Annotated[
    Optional[str],
    typer.Option("--api-url", metavar="URL", help="Content service base URL. [env: BULKGEN_API_URL; default: none, "
                 "offline drafts] The token comes only from BULKGEN_API_TOKEN.", show_default=False),
]
DelayOpt = Annotated[Optional[float], typer.Option("--delay", min=0, metavar="SECONDS", help="Seconds between two requests to the "
                     f"content service. [env: BULKGEN_DELAY; default: {DEFAULTS.delay:g}; none offline]", show_default=False)]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", min=0.001, metavar="SECONDS", help="Seconds to wait for one "
                       f"generation. [env: BULKGEN_TIMEOUT; default: {DEFAULTS.timeout:g}]", show_default=False)]
RetriesOpt = Annotated[Optional[int], typer.Option("--max-retries", min=0, metavar="N", help="Retries of a transient "
                       f"failure per item. [env: BULKGEN_MAX_RETRIES; default: {DEFAULTS.max_retries:g}]", show_default=False)]
BackoffOpt = Annotated[Optional[float], typer.Option("--backoff", min=0, metavar="SECONDS", help="First retry backoff in seconds, "
                       f"doubling, with jitter. [env: BULKGEN_BACKOFF; default: {DEFAULTS.backoff:g}]", show_default=False)]
LeaseOpt = Annotated[Optional[float], typer.Option("--lease", min=1, metavar="SECONDS", help="Seconds a processor's claim lasts "
                     f"unless renewed. [env: BULKGEN_LEASE_SECONDS; default: {DEFAULTS.lease:g}]", show_default=False)]
GraceOpt = Annotated[Optional[float], typer.Option("--grace", min=0, metavar="SECONDS", help="After Ctrl-C or "
                     "SIGTERM, how long the request in flight may still finish (a second Ctrl-C aborts it). "
                     f"[env: BULKGEN_GRACE; default: {DEFAULTS.grace:g}]", show_default=False)]
OnCompleteOpt = Annotated[Optional[str], typer.Option("--on-complete", metavar="CMD", help="Shell command this "
                          "processor runs once per ended job, with the event as JSON on stdin and "
                          "BULKGEN_BULK_ID, BULKGEN_STATUS in its environment. [env: BULKGEN_ON_COMPLETE]",
                          show_default=False)]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--concurrency", min=1, max=16, metavar="N",
                           help="Items in flight at most, across the whole store and every processor. "
                           f"[env: BULKGEN_CONCURRENCY; default: {DEFAULTS.concurrency:g}, one at a time]", show_default=False)]
GiveUpOpt = Annotated[Optional[float], typer.Option("--give-up", min=0, metavar="SECONDS", help="Exit 5 after the content service "
                      f"is unreachable this long. [env: BULKGEN_GIVE_UP; default: {DEFAULTS.give_up:g}]", show_default=False)]


#: A processor's options, declared once: `run` and `submit --wait` both take them (see `run_options`).
RUN_OPTIONS = {"api_url": ApiUrlOpt, "delay": DelayOpt, "timeout": TimeoutOpt, "max_retries": RetriesOpt,
               "backoff": BackoffOpt, "lease": LeaseOpt, "give_up": GiveUpOpt, "grace": GraceOpt,
               "on_complete": OnCompleteOpt, "concurrency": ConcurrencyOpt}
RunFlags = dict[str, Optional[object]]


def run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the processor's options; it receives them together as `run_flags`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "run_flags"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=alias)
             for name, alias in RUN_OPTIONS.items()]

    @functools.wraps(command)
    def with_run_options(**kwargs: object) -> None:
        flags = {name: kwargs.pop(name) for name in RUN_OPTIONS}
        command(run_flags=flags, **kwargs)

    with_run_options.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    with_run_options.__annotations__ = {p.name: p.annotation for p in own + added}
    return with_run_options
