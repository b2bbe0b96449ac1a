"""The command line: parse, call, render. No queue logic lives here.

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional

import typer

from bulkgen_cli import __version__
from bulkgen_cli.core.errors import BulkgenError, ManifestError, NotFound, Problem
from bulkgen_cli.cli.interrupts import exit_on_signals
from bulkgen_cli.core.model import DEFAULT_QUALITY_RATIO, BulkJob, BulkStatus, Item, Priority, QualityPolicy
from bulkgen_cli.cli import doctor as cli_doctor
from bulkgen_cli.cli import items as cli_items
from bulkgen_cli.cli import schedules as cli_schedules
from bulkgen_cli.cli import serve as cli_serve
from bulkgen_cli.cli import templates as cli_templates
from bulkgen_cli.cli.common import (  # noqa: F401
    EXIT_CODES, RUN_OPTIONS, AllUsersOpt, InputFormat, JsonOpt, ModeOpt, QuietOpt, RunFlags, StoreOpt, UserOpt,
    note, open_db, paint, quiet_note, ratio, render_json, run_options,
)
from bulkgen_cli.core import settings
from bulkgen_cli.core.model import utcnow
from bulkgen_cli.core.text import visible

if TYPE_CHECKING:
    import datetime as dt

    from bulkgen_cli.ops.jobs import Submitted
    from bulkgen_cli.delivery.notify import Delivery
    from bulkgen_cli.core.settings import RunSettings
    from bulkgen_cli.store.base import OpenMode, Store



def _plain_usage() -> None:
    """Usage lines name a required argument as its metavar (FILE), not Typer's {FILE}."""
    from typer.core import TyperArgument

    braced = TyperArgument.make_metavar

    def make_metavar(self: TyperArgument, ctx: object, *, usage: bool = False) -> str:
        var = braced(self, ctx, usage=usage)  # type: ignore[arg-type]
        if usage and self.metavar is not None and var == f"{{{self.metavar}}}":
            return self.metavar
        return var

    TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign]


_plain_usage()

app = typer.Typer(
    name="bulkgen",
    help="Queue 10-50 articles as one bulk job; a content service generates them one at a time.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich's Markdown stack would cost ~60 ms per --help
    context_settings={"help_option_names": ["-h", "--help"]},
)

# -- submit's own options --------------------------------------------------------------


FileArg = Annotated[Optional[Path], typer.Argument(metavar="FILE", help="Articles file: .yaml/.yml/.json or .csv; - "
                                         "reads standard input (YAML, or CSV with --format csv). With --values: a "
                                         "template (.yaml/.yml/.json).", show_default=False)]
FormatOpt = Annotated[Optional[InputFormat], typer.Option("--format", help="The file's format, when its name does not "
                      "say (standard input is YAML unless this says csv); with --values, the values' format.",
                      show_default=False)]
TemplateOpt = Annotated[Optional[str], typer.Option("--template", metavar="NAME", help="A saved template (`bulkgen "
                        "template list`), instead of FILE; needs --values.", show_default=False)]
ValuesOpt = Annotated[Optional[Path], typer.Option("--values", metavar="ROWS", help="Rows that fill the template "
                      "(FILE or --template), one article per row: CSV with a header, or a YAML/JSON list of "
                      "mappings; - reads standard input.", show_default=False)]
NameOpt = Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Name of the bulk job. [default: the "
                    "file's name: or its file name]", show_default=False)]
KeyOpt = Annotated[Optional[str], typer.Option("--idempotency-key", metavar="KEY", help="Submitting again with the "
                   "same key (same user) prints the existing job's id and stores nothing.", show_default=False)]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Then process it (or attach to the running processor) until it "
                    "ends; exit 0 if every item completed, 1 otherwise.")]
SplitOpt = Annotated[bool, typer.Option("--split", help="A file of more than 50 items becomes several bulk jobs of "
                     "balanced sizes (each 10-50, in file order), linked by a group id; one id per line.")]
PriorityOpt = Annotated[Priority, typer.Option("--priority", help="Orders this user's own jobs (high, normal, low; "
                        "then first in, first out) while users take turns; urgent, the operator's, goes ahead of "
                        "everyone's.")]
NotBeforeOpt = Annotated[Optional[str], typer.Option("--not-before", metavar="WHEN", help="Queue it now, start it "
                         "then: ISO 8601 (local time without a zone) or +30m, +2h, +1d.", show_default=False)]
QualityOpt = Annotated[QualityPolicy, typer.Option("--quality", help="The quality gate on each returned article "
                       "(words, keywords, title, body, near-duplicates): warn keeps a flagged article, fail fails "
                       "its item, retry generates it again up to the try limit.")]
QualityRatioOpt = Annotated[float, typer.Option("--quality-ratio", parser=ratio, metavar="RATIO", help="Share of "
                            "the word_count asked that an article must reach: 0.7 or 70% (0 turns the words check off).")]
NotifyOpt = Annotated[Optional[list[str]], typer.Option("--notify", metavar="CHANNEL", help="Tell someone when it "
                      "ends: webhook:https://… or email:someone@example.com; repeatable. [env: BULKGEN_NOTIFY, "
                      "comma-separated]", show_default=False)]


# -- commands -----------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        print(f"bulkgen {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Queue 10-50 articles as one bulk job; a content service generates them one at a time."""


@app.command(epilog=EXIT_CODES)
@run_options
def submit(
    file: FileArg = None,
    template: TemplateOpt = None,
    values: ValuesOpt = None,
    format_: FormatOpt = None,
    mode: ModeOpt = None,
    name: NameOpt = None,
    idempotency_key: KeyOpt = None,
    wait: WaitOpt = False,
    split: SplitOpt = False,
    priority: PriorityOpt = Priority.normal,
    not_before: NotBeforeOpt = None,
    notify: NotifyOpt = None,
    quality: QualityOpt = QualityPolicy.warn,
    quality_ratio: QualityRatioOpt = DEFAULT_QUALITY_RATIO,
    store: StoreOpt = None,
    user: UserOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    run_flags: RunFlags | None = None,
) -> None:
    """Validate an articles file and queue it as one bulk job; print its id.

    A template (FILE or --template NAME) with --values ROWS makes one article per row.
    Example: id=$(bulkgen submit examples/articles.yaml) && bulkgen status "$id"
    """
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.ops.options import JobOptions
    from bulkgen_cli.core import settings
    from bulkgen_cli.cli.templates import submission

    parsed, source = submission(file, template, values, fmt=format_.value if format_ else None, mode=mode,
                                split=split, store=store, user=user)
    channels = settings.notify_channels(notify)
    start = settings.parse_when(not_before, utcnow()) if not_before else None
    options = JobOptions(name=name, mode=mode, priority=priority, notify=channels, quality=quality,
                         quality_ratio=quality_ratio, not_before=start)
    run_settings = settings.RunSettings.resolve(**(run_flags or {})) if wait else None  # type: ignore[arg-type]
    with open_db(store, "create") as db:
        done = jobs.submit(db, parsed, settings.user(user), idempotency_key=idempotency_key, split=split,
                           **options.submit_args())
        _report_submitted(done, source, start, wait, json_, quiet)
        if run_settings is not None:
            _wait_for(db, done, run_settings, store, json_, quiet)


def _wait_for(db: Store, done: Submitted, run_settings: RunSettings, store_flag: str | None, json_: bool,
              quiet: bool) -> NoReturn:
    """`submit --wait`: process the submitted jobs until they end, and exit as they ended."""
    finals = _process(db, run_settings, until_bulks=done.ids, store_flag=store_flag, quiet=quiet)
    if json_:
        docs = [{"bulk_job_id": f.id, "total_items": f.total_items, "status": f.status,
                 "completed_items": f.completed_items, "failed_items": f.failed_items,
                 "cancelled_items": f.cancelled_items, "flagged_items": f.flagged_items} for f in finals]
        render_json(docs if done.group is not None else docs[0])
    raise typer.Exit(max(_ended_code(f) for f in finals))


def _report_submitted(done: Submitted, source: str, start: dt.datetime | None, wait: bool, json_: bool,
                      quiet: bool = False) -> None:
    from bulkgen_cli.cli.render import when

    say = quiet_note if quiet else note
    for bulk, created in done.jobs:
        if created:
            say(f"Queued bulk job {bulk.id}: {bulk.total_items} {bulk.mode} articles from {source}.")
        else:
            say(f"Idempotency key {bulk.idempotency_key!r} was already used: bulk job {bulk.id} exists; "
                 "nothing new stored.")
    if done.group is not None:
        say(f"{len(done.jobs)} bulk jobs of {done.sizes} items, group {done.group}: "
             f"`bulkgen status --group {done.group}`.")
    if start is not None:
        say(f"Nothing starts before {when(start)}.")
    if json_ and not wait:
        docs = [{"bulk_job_id": b.id, "total_items": b.total_items, "status": b.status, "group_id": b.group_id}
                for b, _ in done.jobs]
        render_json(docs if done.group is not None else {k: v for k, v in docs[0].items() if k != "group_id"})
    elif not json_:
        print("\n".join(done.ids), flush=True)
        if not wait:
            say(f"Next: `bulkgen run` processes it; `bulkgen status {done.ids[0]}` shows progress.", "dim")


@app.command(epilog=EXIT_CODES)
@run_options
def run(
    forever: Annotated[bool, typer.Option("--forever", help="Keep waiting for new work instead of exiting "
                       "when the queue is empty.")] = False,
    store: StoreOpt = None,
    quiet: QuietOpt = False,
    run_flags: RunFlags | None = None,
) -> None:
    """Process queued items one at a time until none is left.

    Only one processor works at a time across the whole store: a second
    `bulkgen run` waits while another holds the lease, and takes over if that
    one dies.

    Example: BULKGEN_API_URL=http://127.0.0.1:8000 bulkgen run --delay 2
    """

    run_settings = settings.RunSettings.resolve(**(run_flags or {}))  # type: ignore[arg-type]
    with open_db(store, "create") as db:
        _process(db, run_settings, forever=forever, store_flag=store, quiet=quiet)


GroupOpt = Annotated[Optional[str], typer.Option("--group", metavar="GROUP", help="All bulk jobs of one "
                     "`submit --split` (the group id it printed).", show_default=False)]


@app.command(epilog=EXIT_CODES)
def status(
    bulk_id: Annotated[Optional[str], typer.Argument(metavar="BULK_ID", help="The bulk job's id (from submit or "
                       "list).", show_default=False)] = None,
    group: GroupOpt = None,
    items: Annotated[bool, typer.Option("--items", help="Also one row per item.")] = False,
    store: StoreOpt = None,
    user: UserOpt = None,
    all_users: AllUsersOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Show a bulk job: X of Y completed, failed, remaining, ETA, errors.

    With --group, every job of a `submit --split` and their totals.
    Example: bulkgen status 6650c0ffee0123456789abcd --json
    """
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.cli import render

    with open_db(store, "read") as db:
        found = jobs.status(db, bulk_id, group, settings.user(user), all_users, with_items=items or json_)
        shorts = _short_ids(db, found) if items and not json_ else {}
    bulks = [bulk for bulk, _ in found]
    rows = {bulk.id: bulk_items for bulk, bulk_items in found}
    if json_:
        if group is None:
            render.print_json(render.status_document(bulks[0], rows[bulks[0].id] or []))
        else:
            render.print_json(render.group_document(group, bulks))
        return
    if not sys.stdout.isatty():  # a pipe or a file: every value whole, nothing cut
        print("\n\n".join(render.plain_status(bulk, rows.get(bulk.id) if items else None, shorts) for bulk in bulks))
        if group is not None:
            total = render.group_document(group, bulks)["progress"]
            print(f"\nGroup {visible(group)}: {total['completed']} of {total['total']} completed, {total['failed']} failed, "
                  f"{total['cancelled']} cancelled, {total['remaining']} remaining")
        return
    from rich.console import Console

    console = Console(highlight=False)
    for bulk in bulks:
        for part in render.status_renderables(bulk, rows.get(bulk.id) if items else None, shorts):
            console.print(part)
    if group is not None:
        total = render.group_document(group, bulks)["progress"]
        console.print(f"Group {group}: {total['completed']} of {total['total']} completed, "
                      f"{total['failed']} failed, {total['cancelled']} cancelled, {total['remaining']} remaining",
                      markup=False, emoji=False)


def _next_schedule(db: Store, at: dt.datetime) -> str:
    """"Schedule 'weekly' (alice)'s": which schedule runs next, at `at`, for plain `run`'s note."""
    found = next((s for s in db.list_schedules() if s.next_at == at), None)
    return "A schedule's" if found is None else f"Schedule {found.name!r} ({found.userId}):"


def _short_ids(db: Store, found: list[tuple[BulkJob, list[Item] | None]]) -> dict[str, str]:
    """The short id of every item shown (items.short_ids)."""
    from bulkgen_cli.ops.items import short_ids

    return short_ids(db, [item for _, bulk_items in found for item in bulk_items or []])


@app.command("list", epilog=EXIT_CODES)
def list_(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, metavar="N", help="How many, newest first.")] = 20,
    status_filter: Annotated[Optional[BulkStatus], typer.Option("--status", help="Only jobs in this state.",
                             show_default=False)] = None,
    store: StoreOpt = None,
    user: UserOpt = None,
    all_users: AllUsersOpt = False,
    json_: JsonOpt = False,
) -> None:
    """List your bulk jobs, newest first.

    Example: bulkgen list --status processing --json
    """
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.cli import render

    with open_db(store, "read") as db:
        bulks = jobs.list_jobs(db, settings.user(user), all_users, limit, status_filter)
    if json_:
        render.print_json([render.bulk_dict(b) for b in bulks])
        return
    if not bulks:
        note("No bulk jobs yet: `bulkgen submit examples/articles.yaml` queues one.")
        return
    if not sys.stdout.isatty():  # a pipe or a file: every column whole, for grep, awk and cut
        print(render.plain_table(render.LIST_COLUMNS, render.list_rows(bulks)))
        return
    from rich.console import Console

    Console(highlight=False).print(render.list_table(bulks))


def _control(action_name: str, bulk_id: str, store: str | None, user: str | None, all_users: bool,
             json_: bool) -> None:
    from bulkgen_cli.cli import render
    from bulkgen_cli.delivery.notify import AtOnce
    from bulkgen_cli.ops import control, jobs

    action = control.Action(action_name)
    with open_db(store, "write") as db:
        result = jobs.apply(db, action, bulk_id, settings.user(user), all_users,
                            notifier=AtOnce(db, settings.smtp, settings.notify_retry_delays, _report_delivery))
        items = db.list_items(bulk_id) if json_ else []
    if json_:
        render.print_json(render.status_document(result.bulk, items))
        return
    bulk = result.bulk
    if not result.changed:
        note(f"Bulk job {bulk.id} is already {bulk.status}; nothing to do.")
        return
    follow_up = {
        control.Action.pause: "No new item of it starts; an item in flight finishes and is recorded.",
        control.Action.resume: "It is back in the queue at its old place; `bulkgen run` continues it.",
        control.Action.cancel: "Its queued items are cancelled; an item in flight is aborted.",
        control.Action.retry_failed: "Its failed items are queued again; `bulkgen run` processes them.",
    }[action]
    note(f"Bulk job {bulk.id}: {result.previous.value} -> {bulk.status}. {follow_up}")
    note(render.summary_line(bulk), "dim")


def _report_delivery(delivery: Delivery) -> None:
    state = "sent" if delivery.ok else f"not sent yet ({delivery.error}); a processor will retry"
    note(f"Notification {delivery.channel}: {state}", "dim")


ControlId = Annotated[str, typer.Argument(metavar="BULK_ID", help="The bulk job's id.", show_default=False)]


@app.command(epilog=EXIT_CODES)
def pause(bulk_id: ControlId, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
          json_: JsonOpt = False) -> None:
    """Pause a bulk job: no new item of it starts; the one in flight finishes.

    Pausing a paused job does nothing (exit 0); a completed or cancelled job
    cannot be paused (exit 4). Example: bulkgen pause 6650c0ffee0123456789abcd
    """
    _control("pause", bulk_id, store, user, all_users, json_)


@app.command(epilog=EXIT_CODES)
def resume(bulk_id: ControlId, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
           json_: JsonOpt = False) -> None:
    """Resume a paused bulk job at its old place in the queue.

    Example: bulkgen resume 6650c0ffee0123456789abcd && bulkgen run
    """
    _control("resume", bulk_id, store, user, all_users, json_)


@app.command(epilog=EXIT_CODES)
def cancel(bulk_id: ControlId, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
           json_: JsonOpt = False) -> None:
    """Cancel a bulk job: queued items are cancelled, the one in flight is aborted.

    Cancel is final. Example: bulkgen cancel 6650c0ffee0123456789abcd --json
    """
    _control("cancel", bulk_id, store, user, all_users, json_)


@app.command("retry-failed", epilog=EXIT_CODES)
def retry_failed(bulk_id: ControlId, store: StoreOpt = None, user: UserOpt = None,
                 all_users: AllUsersOpt = False, json_: JsonOpt = False) -> None:
    """Queue the failed items of a completed bulk job again.

    Example: bulkgen retry-failed 6650c0ffee0123456789abcd && bulkgen run
    """
    _control("retry-failed", bulk_id, store, user, all_users, json_)


@app.command(epilog=EXIT_CODES)
def watch(bulk_id: Annotated[Optional[str], typer.Argument(metavar="BULK_ID", help="The bulk job's id.",
                             show_default=False)] = None,
          group: GroupOpt = None, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
          json_: JsonOpt = False, quiet: QuietOpt = False,
          timeout: Annotated[Optional[float], typer.Option("--timeout", min=0, metavar="SECONDS", help="Stop "
                             "watching after this long and exit 124, as `timeout` does.", show_default=False)] = None,
          ) -> None:
    """Show one bulk job's (or a --split group's) progress until it ends, processing nothing.

    Exit 0 when every item completed, 1 otherwise, 124 when --timeout ran out.
    With --json, prints the final status document. Example: bulkgen watch 6650c0ffee0123456789abcd
    """
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.cli import render
    from bulkgen_cli.ops.watch import follow

    with open_db(store, "read") as db:
        ids = [b.id for b in jobs.targets(db, bulk_id, group, settings.user(user), all_users)]
        with render.run_view(quiet) as view:
            finals = follow(db, ids, view, timeout=timeout)
        render.print_summary(list(finals), plain=quiet)
        if json_:
            if group is None:
                render.print_json(render.status_document(finals[0], db.list_items(finals[0].id)))
            else:
                render.print_json(render.group_document(group, finals))
    raise typer.Exit(max(_ended_code(f) for f in finals))


class ResultFormat(str, Enum):
    markdown = "markdown"
    jsonl = "jsonl"


@app.command(epilog=EXIT_CODES)
def results(
    bulk_id: ControlId,
    out: Annotated[Optional[Path], typer.Option("--out", metavar="PATH", help="Folder for Markdown files "
                   "[default: articles]; file for jsonl [default: stdout, or -].", show_default=False)] = None,
    format_: Annotated[ResultFormat, typer.Option("--format", help="markdown: a file per article with YAML "
                       "front matter; jsonl: one JSON object per item, all items.")] = ResultFormat.markdown,
    include_failed: Annotated[bool, typer.Option("--include-failed", help="Markdown: also a file per failed "
                              "or cancelled item, with its error.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files of another job in --out.")] = False,
    store: StoreOpt = None,
    user: UserOpt = None,
    all_users: AllUsersOpt = False,
) -> None:
    """Write the generated articles to files.

    Names are NN-slug.md from the item's position and its id or title; a
    re-export of the same job overwrites its own files, never another job's
    (unless --force). Example: bulkgen results 6650c0ffee0123456789abcd --out articles/
    """
    from bulkgen_cli.ops import export, jobs

    with open_db(store, "read") as db:
        bulk = jobs.visible(db, bulk_id, settings.user(user), all_users)
        items = db.list_items(bulk.id)
    if format_ is ResultFormat.jsonl:
        if out is None or str(out) == "-":
            export.write_jsonl(bulk, items, sys.stdout)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8") as fh:
                export.write_jsonl(bulk, items, fh)
            note(f"Wrote {len(items)} items to {out}.")
        return
    folder = out if out is not None else Path("articles")
    written = export.write_markdown(bulk, items, folder, include_failed, force)
    here = Path.cwd().resolve()
    for path in written.files:  # as the user named the folder: relative to here when it lies below
        print(path.relative_to(here) if path.is_relative_to(here) else path)
    left = len(written.skipped)
    extra = f"; {left} not completed (--include-failed writes them too)" if left and not include_failed else ""
    note(f"Wrote {len(written.files)} files to {folder}{extra}.")


def _ended_code(bulk: BulkJob) -> int:
    ok = bulk.status == BulkStatus.completed.value and bulk.completed_items == bulk.total_items
    return 0 if ok else 1


# -- processing ---------------------------------------------------------------------


class _Stopped(Exception):
    def __init__(self, code: int):
        self.code = code


def runner(db: Store, run_settings: RunSettings, open_store: Callable[[], Store], on_event: Any) -> Runner:
    """The processors as `run` starts them, wired here: the notifier's settings from the environment and,
    for `--forever`, the schedules' ticker (the engine does not import the operations)."""
    from bulkgen_cli.engine.runner import Runner
    from bulkgen_cli.ops.schedules import Ticker

    return Runner(db, run_settings, open_store, on_event, smtp=settings.smtp(),
                  retry_delays=settings.notify_retry_delays(),
                  ticker=lambda owner: Ticker(open_store(), owner, on_event))


def _process(db: Store, run_settings: RunSettings, forever: bool = False, until_bulks: list[str] | None = None,
             store_flag: str | None = None, quiet: bool = False) -> list[BulkJob]:
    """Run the processors (runner.Runner) with the live view; render how the run ended."""
    from bulkgen_cli.cli import render

    say = (lambda message, style="": None) if quiet else note
    if run_settings.api_url:
        say(f"Content service: {run_settings.api_url}")
    else:
        say("No content service set (--api-url / BULKGEN_API_URL): writing offline drafts.", "yellow")
    if run_settings.concurrency > 1:
        say(f"Up to {run_settings.concurrency} items in flight at once, across the whole store.")
    with render.run_view(quiet) as view:
        outcome = runner(db, run_settings, lambda: open_db(store_flag, "create"), view).run(forever, until_bulks)
    if outcome.stopped is not None:
        if outcome.attached:
            note("Stopped watching; the other processor goes on.", "yellow")
        elif outcome.handed_back:
            note("Stopped. The unfinished item went back to the queue (its try not counted); "
                 "nothing is left in flight.", "yellow")
        else:
            note("Stopped. Nothing is left in flight.", "yellow")
        raise _Stopped(outcome.stopped)
    if until_bulks:
        render.print_summary(outcome.finals, plain=quiet)
        return outcome.finals
    if not quiet:
        render.print_summary([b for b in (db.get_bulk(i) for i in dict.fromkeys(view.ended)) if b is not None])
    scheduled = db.next_start(utcnow())
    if scheduled is not None:
        say(f"A scheduled job starts {render.when(scheduled)}; `bulkgen run --forever` waits for it.")
    upcoming = None if forever else db.next_schedule_at()
    if upcoming is not None:
        due = "was due" if upcoming <= utcnow() else "is"
        say(f"{_next_schedule(db, upcoming)} next run {due} {render.when(upcoming)}; only `bulkgen run --forever` "
            "queues scheduled runs.")
    if view.items_done:
        note(f"Processed {view.items_done} item{'' if view.items_done == 1 else 's'}; the queue is empty.")
    else:
        note("Nothing to process: the queue is empty.")
    paused = db.list_bulks(None, 100, [BulkStatus.paused])
    if paused and not quiet:
        first = paused[-1]
        note(f"{len(paused)} bulk job{'s are' if len(paused) > 1 else ' is'} paused, {'their' if len(paused) > 1 else 'its'} items waiting "
             f"(oldest: {first.id} {first.name}): `bulkgen resume {first.id}` puts it back in the queue.")
    return []


# -- the other command modules: each adds its commands with `register(app)` --------------------

#: Command modules beside this one (single items, templates, schedules, serve, doctor), in --help's order.
COMMAND_MODULES = (cli_items, cli_templates, cli_schedules, cli_serve, cli_doctor)

for _module in COMMAND_MODULES:
    _module.register(app)


# -- entry point ----------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    for number, line in enumerate(message.splitlines()):
        note(("Error: " if number == 0 else "       ") + line, "red" if number == 0 else "")
    sys.exit(code)


def _wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON (before any `--`)."""
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def _json_error(code: int, message: str, problems: list[Problem] | None = None) -> None:
    """With --json, an error is JSON on stdout too: one format for CI scripts to parse."""
    from bulkgen_cli.cli.render import print_json

    print_json({"error": {"code": code, "message": message,
                          "problems": [dataclasses.asdict(p) for p in problems or []]}})


def main() -> None:
    # Outside processing (which installs its own handlers), a signal ends the
    # command at once: SystemExit unwinds through open SQLite transactions,
    # which roll back, so the store stays consistent.
    exit_on_signals()
    as_json = _wants_json(sys.argv[1:])
    try:
        code = app(prog_name="bulkgen", standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # Typer's (vendored click's) usage errors: exit 2
        exit_code = int(getattr(exc, "exit_code", 2))
        if as_json and exit_code:
            _json_error(exit_code, exc.format_message() if hasattr(exc, "format_message") else str(exc))
        if hasattr(exc, "show"):
            exc.show()
        else:
            note(str(exc))
        sys.exit(exit_code)
    except ManifestError as exc:
        count = len(exc.problems)
        message = f"{exc.subject} has {count} problem{'s' if count > 1 else ''}; nothing was stored."
        if as_json:
            _json_error(exc.exit_code, message, exc.problems)
        _fail(message + "\n" + "\n".join(str(p) for p in exc.problems), exc.exit_code)
    except BulkgenError as exc:
        if as_json:
            _json_error(exc.exit_code, str(exc))
        _fail(str(exc), exc.exit_code)
    except _Stopped as exc:
        sys.exit(exc.code)
    sys.exit(code if isinstance(code, int) else 0)
