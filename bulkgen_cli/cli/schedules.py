"""`bulkgen schedule …`: recurring bulk jobs. Parse, call `bulkgen_cli.ops.schedules`, render; nothing else.

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from bulkgen_cli.cli.common import (
    EXIT_CODES, AllUsersOpt, InputFormat, JsonOpt, ModeOpt, StoreOpt, UserOpt, listed, note, open_db, open_or_create,
    ratio, render_json,
)
from bulkgen_cli.core import settings
from bulkgen_cli.core.model import DEFAULT_QUALITY_RATIO, Priority, QualityPolicy, ScheduleStatus, utcnow
from bulkgen_cli.core.text import duration
from bulkgen_cli.core.zones import local_time

if TYPE_CHECKING:
    from bulkgen_cli.core.model import SavedTemplate, Schedule

schedule_app = typer.Typer(
    name="schedule",
    help="Recurring bulk jobs: the same articles file queued at the times of a cron expression, in a time zone. "
         "Only `bulkgen run --forever` submits them.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode=None,
)


NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name (yours; lowercase letters, digits, - _).",
                                        show_default=False)]
FileArg = Annotated[Optional[Path], typer.Argument(metavar="FILE", help="Articles file (.yaml/.yml/.json or .csv; - "
                    "reads standard input), or a template file with --values; checked as `submit` does; its text is "
                    "stored.", show_default=False)]
TemplateOpt = Annotated[Optional[str], typer.Option("--template", metavar="NAME", help="A saved template (`bulkgen "
                        "template save`) instead of FILE, with --values; each run reads it as it is then.",
                        show_default=False)]
ValuesOpt = Annotated[Optional[Path], typer.Option("--values", metavar="ROWS", help="The template's rows, one article "
                      "each: CSV with a header, or a YAML/JSON list; its text is stored.", show_default=False)]
QualityOpt = Annotated[QualityPolicy, typer.Option("--quality", help="Each job's quality gate (as `submit "
                       "--quality`): warn, fail or retry.")]
QualityRatioOpt = Annotated[float, typer.Option("--quality-ratio", parser=ratio, metavar="RATIO", help="Each "
                            "job's share of the word_count asked that an article must reach: 0.7 or 70%.")]
CronOpt = Annotated[str, typer.Option("--cron", metavar="EXPR", help="When: minute hour day-of-month month "
                    "day-of-week, e.g. \"0 6 * * MON\" (or @daily, @weekly, …).", show_default=False)]
ZoneOpt = Annotated[str, typer.Option("--zone", metavar="ZONE", help="The IANA time zone the cron times are in, e.g. "
                    "Europe/Berlin; daylight saving follows it.")]
JobNameOpt = Annotated[Optional[str], typer.Option("--name", "--job-name", metavar="TEXT", help="Each job's name, as "
                       "`submit --name`, before the schedule's name and the run's time (--job-name is the same). "
                       "[default: the file's name: or its file name]",
                       show_default=False)]
FormatOpt = Annotated[Optional[InputFormat], typer.Option("--format", help="The articles file's (or, with a "
                      "template, the rows') format, when its name does not say.", show_default=False)]
PriorityOpt = Annotated[Priority, typer.Option("--priority", help="Each job's priority (urgent goes ahead of every "
                        "user's turn).")]
NotifyOpt = Annotated[Optional[list[str]], typer.Option("--notify", metavar="CHANNEL", help="Tell someone when each "
                      "job ends: webhook:https://… or email:someone@example.com; repeatable. [env: BULKGEN_NOTIFY, "
                      "read when the schedule is added]", show_default=False)]


def register(app: typer.Typer) -> None:
    app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add", epilog=EXIT_CODES)
def add(
    name: NameArg,
    cron: CronOpt,
    file: FileArg = None,
    template: TemplateOpt = None,
    values: ValuesOpt = None,
    zone: ZoneOpt = "UTC",
    job_name: JobNameOpt = None,
    mode: ModeOpt = None,
    format_: FormatOpt = None,
    priority: PriorityOpt = Priority.normal,
    notify: NotifyOpt = None,
    quality: QualityOpt = QualityPolicy.warn,
    quality_ratio: QualityRatioOpt = DEFAULT_QUALITY_RATIO,
    store: StoreOpt = None,
    user: UserOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Add a recurring schedule: FILE (or --template NAME with --values ROWS) is queued at each time of --cron.

    Everything is checked first (the cron expression field by field, the zone,
    the file or template as `submit` checks it); on any error nothing is stored
    (exit 2). Example: bulkgen schedule add weekly --cron "0 6 * * MON" --zone Europe/Berlin examples/articles.yaml
    """
    from bulkgen_cli.ops import schedules
    from bulkgen_cli.ops.options import JobOptions
    from bulkgen_cli.core import settings
    from bulkgen_cli.input import templates

    schedules.check_name(name)
    schedules.zone_of(zone)
    schedules.parse_cron(cron)
    me = settings.user(user)

    def saved(template_name: str) -> SavedTemplate:
        with open_db(store, "read") as db:
            return templates.load_saved(db, me, template_name)

    source = schedules.source_of(None if file is None else str(file), template, None if values is None else str(values),
                                 format_.value if format_ else None, mode, saved)
    options = JobOptions(name=job_name, mode=mode, priority=priority, notify=settings.notify_channels(notify),
                         quality=quality, quality_ratio=quality_ratio)
    with open_or_create(store) as db:
        added = schedules.add(db, me, name, cron, zone, source, options.record())
    if json_:
        render_json(schedules.document(added))
        return
    note(f"Schedule {added.name} added: \"{added.cron}\" in {added.zone}; next run {_next_run(added)}. "
         "`bulkgen run --forever` queues each run.")


@schedule_app.command("list", epilog=EXIT_CODES)
def list_(store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False, json_: JsonOpt = False) -> None:
    """List your schedules: each one's next run in its own zone, its last job, and runs skipped.

    A run is skipped when no `bulkgen run --forever` was running at its time
    and a later one was due by the time one ran: only the latest is queued.
    Example: bulkgen schedule list --json
    """
    from bulkgen_cli.ops import schedules

    with open_db(store, "read") as db:
        found = schedules.list_for(db, settings.user(user), all_users)
    if listed(found, json_, schedules.document,
              "No schedules yet: `bulkgen schedule add NAME --cron \"0 6 * * MON\" FILE` adds one."):
        return
    columns, rows = _table(found, all_users)
    from bulkgen_cli.cli import render

    if not sys.stdout.isatty():  # a pipe or a file: every column whole, for grep, awk and cut
        print(render.plain_table(columns, rows))
        return
    from rich.console import Console

    Console(highlight=False).print(render.rich_table(columns, rows, styled=3))


def _last_error(schedule: Schedule) -> str:
    """The last run's error; a run that paused the schedule says why (design.md, "Quotas")."""
    if not schedule.last_error:
        return "-"
    return schedule.last_error if schedule.last_error.startswith("paused: ") else f"failed: {schedule.last_error}"


def _table(found: list[Schedule], all_users: bool) -> tuple[list[tuple[str, int | None]], list[list[str]]]:
    columns: list[tuple[str, int | None]] = [("Name", 30), ("Cron", None), ("Zone", None), ("Status", None),
                                             ("Next run", None), ("Last job", 60), ("Skipped", None)]
    rows = [[s.name, s.cron, s.zone, s.status, _next_run(s),
             s.last_bulk_job_id or _last_error(s), str(s.skipped_count)]
            for s in found]
    if all_users:
        columns.insert(1, ("User", None))
        for row, s in zip(rows, found):
            row.insert(1, s.userId)
    return columns, rows


def _next_run(schedule: Schedule) -> str:
    """The next run in the schedule's own zone, and how far off it is."""
    if schedule.status != ScheduleStatus.active.value or schedule.next_at is None:
        return schedule.status
    delta = (schedule.next_at - utcnow()).total_seconds()
    when = f"in {duration(delta)}" if delta >= 0 else f"due {duration(-delta)} ago"
    return f"{local_time(schedule.next_at, schedule.zone)} ({when})"


def _set_state(action: str, name: str, store: str | None, user: str | None, json_: bool) -> None:
    from bulkgen_cli.ops import schedules

    with open_db(store, "write") as db:
        schedule, changed = schedules.set_state(db, settings.user(user), name, action)
    if json_:
        render_json(schedules.document(schedule))
        return
    if not changed:
        note(f"Schedule {schedule.name} is already {schedule.status}; nothing to do.")
    elif action == "pause":
        note(f"Schedule {schedule.name}: active -> paused. Nothing is queued until "
             f"`bulkgen schedule resume {schedule.name}`.")
    else:
        note(f"Schedule {schedule.name}: paused -> active; next run {_next_run(schedule)} (runs that fell in the "
             "pause are not made up).")


@schedule_app.command("pause", epilog=EXIT_CODES)
def pause(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Pause a schedule: none of its runs is queued until it is resumed.

    Pausing a paused schedule does nothing (exit 0). Example: bulkgen schedule pause weekly
    """
    _set_state("pause", name, store, user, json_)


@schedule_app.command("resume", epilog=EXIT_CODES)
def resume(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Resume a paused schedule from its next run after now (runs missed while paused are not made up).

    Example: bulkgen schedule resume weekly
    """
    _set_state("resume", name, store, user, json_)


@schedule_app.command("remove", epilog=EXIT_CODES)
def remove(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Remove a schedule and its record of runs; the bulk jobs it queued stay.

    Example: bulkgen schedule remove weekly
    """
    from bulkgen_cli.ops import schedules

    with open_db(store, "write") as db:
        removed = schedules.remove(db, settings.user(user), name)
    if json_:
        render_json(schedules.document(removed))
        return
    note(f"Schedule {removed.name} removed; the bulk jobs it queued stay.")


@schedule_app.command("run", epilog=EXIT_CODES)
def run(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Queue the schedule's articles now, once (paused or not); its times do not change. Prints the job's id.

    Example: id=$(bulkgen schedule run weekly) && bulkgen run
    """
    from bulkgen_cli.ops import schedules

    with open_db(store, "write") as db:
        done = schedules.run_now(db, settings.user(user), name)
    bulk = done.jobs[0][0]
    if json_:
        render_json({"bulk_job_id": bulk.id, "total_items": bulk.total_items, "status": bulk.status})
        return
    print(bulk.id, flush=True)
    note(f"Queued bulk job {bulk.id}: {bulk.total_items} {bulk.mode} articles from schedule {name}; "
         "`bulkgen run` processes it.")
