"""Everything the user sees in a terminal: Rich tables, plain tables, the live progress view.

The JSON documents are built in ops/documents.py (the server answers with the same); they are
re-exported here for the CLI's commands.

rich is imported in the functions that draw (cold start: cli/__init__.py); `status --json` and a pipe never
load it.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence, TextIO

from bulkgen_cli.core.model import BulkJob, Item, utcnow
from bulkgen_cli.core.text import duration, visible  # noqa: F401  (duration: re-exported)
from bulkgen_cli.core.zones import local_time
from bulkgen_cli.ops.documents import (  # noqa: F401  (re-exported for the CLI's commands)
    bulk_dict, group_document, item_dict, notifications, progress_dict, status_document, when,
)
from bulkgen_cli.store.repair import UNRECORDED_END, unrecorded_end
from bulkgen_cli.core import events


def print_json(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# -- human text -----------------------------------------------------------------

STATUS_STYLE = {
    "queued": "cyan",
    "processing": "yellow",
    "paused": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "dim",
}


def short(text: str, width: int = 60) -> str:
    """One line of at most `width` characters, control characters escaped (text.visible)."""
    text = " ".join(visible(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def status_head(bulk: BulkJob) -> list[tuple[str, str]]:
    """A bulk job's facts, as (label, value) rows."""
    rows = [
        ("Bulk job", f"{bulk.id}  {bulk.name}"),
        ("Status", bulk.status),
        ("Progress", f"{bulk.completed_items} of {bulk.total_items} completed ({bulk.percentage}% done)"),
        ("Failed / cancelled", f"{bulk.failed_items} / {bulk.cancelled_items}"),
        ("Remaining", str(bulk.pending)),
        ("Mode / user", f"{bulk.mode} / {bulk.userId}"),
        ("Priority", bulk.priority),
    ]
    if bulk.not_before and not bulk.started_at:
        rows.append(("Starts", "not before " + when(bulk.not_before)))
    rows += [("Created", when(bulk.created_at)), ("Started", when(bulk.started_at))]
    if bulk.completed_at:
        rows.append(("Ended", when(bulk.completed_at)))
    elif unrecorded_end(bulk):
        rows.append(("Ended", UNRECORDED_END))
    elif bulk.status == "paused":
        rows.append(("ETA", "none while paused (`bulkgen resume` continues it)"))
    elif bulk.estimated_completion:
        rows.append(("ETA", when(bulk.estimated_completion)))
    rows.append(("Quality", f"{bulk.quality} (ratio {bulk.quality_ratio:g}): {flagged_count(bulk)}"))
    for n in notifications(bulk):
        detail = n["state"] + (f" after {n['attempts']} tries: {n['last_error']}" if n["last_error"] else "")
        rows.append(("Notify", f"{n['channel']}: {detail}"))
    return rows


#: The items table: its columns, and how wide each may be on a terminal (None: as wide as it needs).
ITEM_COLUMNS = (("#", None), ("ID", None), ("Item", 50), ("Status", None), ("Tries", None), ("Error", 60),
                ("Quality", 40))
#: The list table's columns and widths, the same way.
LIST_COLUMNS = (("ID", None), ("Name", 30), ("Priority", None), ("Mode", None), ("Status", None),
                ("Done", None), ("Failed", None), ("Created", None))


def item_rows(items: list[Item], short_ids: dict[str, str] | None = None) -> list[list[str]]:
    """One row per item; ID is its short id (`items.short_ids`), else its whole id."""
    return [[str(item.queue_position), (short_ids or {}).get(item.id, item.id),
             f"{item.item_id}: {item.label}" if item.item_id else item.label,
             item.status, str(item.attempts), item.error or "", quality_cell(item)] for item in items]


def quality_cell(item: Item) -> str:
    """The quality gate's verdict on an ended item's article: passed, or flagged with its reasons."""
    verdict = item.verdict
    if verdict is None or item.status not in ("completed", "failed"):
        return ""
    reasons = verdict.get("reasons") or []
    return verdict.get("status", "") + (": " + ", ".join(reasons) if reasons else "")


def flagged_count(bulk: BulkJob) -> str:
    """"3 articles turned down, 1 article flagged": what the gate failed, then what it flagged and kept."""
    parts = [f"{n} article{'s' if n > 1 else ''} {what}"
             for n, what in ((bulk.turned_down_items, "turned down"), (bulk.flagged_items, "flagged")) if n]
    return ", ".join(parts) or "none flagged"


def flagged_line(bulk: BulkJob) -> str | None:
    """"3 articles flagged: #4 612 of 1500 words; #7 …" for a job whose articles the quality gate flagged.

    Turned-down articles are counted here; their reasons are the items' errors (error_summary).
    """
    if not bulk.flagged_items and not bulk.turned_down_items:
        return None
    return flagged_count(bulk) + (f": {'; '.join(bulk.quality_summary)}" if bulk.quality_summary else "")


def quality_hint(bulk: BulkJob) -> str | None:
    """When the gate turned down every article that came back: what to look at, and what to change."""
    if not bulk.turned_down_items or bulk.completed_items:
        return None
    return (f"the quality gate turned down every article: see why with `bulkgen status {bulk.id} --items`; a lower "
            "--quality-ratio or --quality warn at submit keeps more, and `bulkgen retry-failed` asks again.")


def list_rows(bulks: list[BulkJob]) -> list[list[str]]:
    return [[bulk.id, bulk.name, bulk.priority, bulk.mode, bulk.status, f"{bulk.completed_items}/{bulk.total_items}",
             str(bulk.failed_items), bulk.created_at.astimezone().strftime("%Y-%m-%d %H:%M %Z") if bulk.created_at else ""]
            for bulk in bulks]


def plain_table(columns: Sequence[tuple[str, int | None]], rows: list[list[str]]) -> str:
    """Every column whole, aligned with two spaces, one line per row: for pipes, grep, awk and cut."""
    cells = [[name for name, _ in columns]] + [[" ".join(visible(c).split()) or "-" for c in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def plain_status(bulk: BulkJob, items: list[Item] | None, short_ids: dict[str, str] | None = None) -> str:
    """`status` for a pipe: one `label: value` line per fact, then the items table whole."""
    lines = [f"{label}: {' '.join(visible(value).split())}" for label, value in status_head(bulk)]
    lines += [f"Error: {' '.join(visible(line).split())}" for line in bulk.error_summary]
    lines += [f"Flagged: {' '.join(visible(line).split())}" for line in bulk.quality_summary]
    if items is not None:
        lines += ["", plain_table(ITEM_COLUMNS, item_rows(items, short_ids))]
    return "\n".join(lines)


def rich_table(columns: Sequence[tuple[str, int | None]], rows: list[list[str]], styled: int | None = None) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for name, width in columns:
        right = name in ("#", "Tries", "Done", "Failed")
        table.add_column(name, justify="right" if right else "left", no_wrap=name in ("ID", "Item"),
                         overflow="ellipsis", max_width=width)
    for row in rows:
        table.add_row(*(Text(short(cell, width or 10_000), style=STATUS_STYLE.get(cell, "") if n == styled else "")
                        for n, (cell, (_, width)) in enumerate(zip(row, columns))))
    return table


def status_renderables(bulk: BulkJob, items: list[Item] | None, short_ids: dict[str, str] | None = None) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, value in status_head(bulk):
        style = STATUS_STYLE.get(bulk.status, "") if label == "Status" else ""
        head.add_row(label, Text(visible(value), style=style))
    out: list[Any] = [head]
    if bulk.error_summary:
        errors = Table(title="Errors", title_justify="left", show_header=False, box=None)
        for line in bulk.error_summary:
            errors.add_row(Text(visible(line), style="red"))
        out.append(errors)
    if bulk.quality_summary:
        flagged = Table(title="Flagged by the quality gate", title_justify="left", show_header=False, box=None)
        for line in bulk.quality_summary:
            flagged.add_row(Text(visible(line), style="yellow"))
        out.append(flagged)
    if items is not None:
        out.append(rich_table(ITEM_COLUMNS, item_rows(items, short_ids), styled=3))
    return out


def list_table(bulks: list[BulkJob]) -> Any:
    return rich_table(LIST_COLUMNS, list_rows(bulks), styled=4)


# -- the processor's live view ------------------------------------------------------


class PlainView:
    """One line per event, for logs (stderr is not a terminal)."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stderr
        self.items_done = 0
        self.seen: dict[str, tuple[str, int, int, int]] = {}
        #: bulk jobs whose end this view saw recorded, for the summary
        self.ended: list[str] = []

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def line(self, text: str) -> None:
        self.out.write(visible(text) + "\n")
        self.out.flush()

    def delivery(self, event: Any) -> None:
        if event.ok:
            self.line(f"notified {event.channel} ({event.bulk_id})")
        else:
            later = "" if event.final else "; trying again later"
            self.line(f"notification {event.channel} ({event.bulk_id}) failed: {short(event.error or '', 160)}{later}")

    def __call__(self, event: Any) -> None:
        from bulkgen_cli.delivery.notify import Delivery

        if isinstance(event, events.ItemFinished):
            self.items_done += 1
            b = event.bulk
            reason = f": {short(event.outcome.error or '', 120)}" if event.outcome.error else ""
            reason = reason or flagged_reason(event.outcome)
            self.line(
                f"[{b.total_items - b.pending}/{b.total_items}] {b.id} #{event.item.queue_position} "
                f"{short(event.item.label, 50)!r} {event.outcome.status.value} in {event.seconds:.1f}s"
                f"{f' (after waiting {event.waited:.1f}s)' if event.waited >= 0.05 else ''}{reason}"
                f" (completed {b.completed_items}, failed {b.failed_items})"
            )
        elif isinstance(event, events.ItemRetrying):
            charged = "" if event.charged else ", not counted as a try"
            when = f"retrying in {event.wait:.1f}s" if event.wait >= 0.05 else "retrying now"
            self.line(f"  #{event.item.queue_position} {short(event.error, 120)}; {when}{charged}")
        elif isinstance(event, events.BulkEnded):
            self.ended.append(event.bulk.id)
            self.line(f"bulk job {summary_line(event.bulk)}")
        elif isinstance(event, Delivery):
            self.delivery(event)
        elif isinstance(event, events.Stopping):
            self.line(event.message)
        elif isinstance(event, events.JobChanged):
            if event.bulk.status in ("cancelled", "completed"):
                self.ended.append(event.bulk.id)
            self.line(changed_line(event.bulk))
        elif isinstance(event, events.Waiting):
            self.line(f"waiting: {event.reason} (next check in {event.seconds:.1f}s)")
        elif isinstance(event, events.ItemLost):
            self.line(f"#{event.item.queue_position} {short(event.item.label, 50)!r} stopped: {event.reason}")
        elif isinstance(event, events.ScheduleFired):
            self.line(schedule_fired_line(event))
        elif isinstance(event, events.Snapshot):
            for b in event.bulks:
                state = (b.status, b.completed_items, b.failed_items, b.cancelled_items)
                if self.seen.get(b.id) != state:
                    self.seen[b.id] = state
                    self.line(f"{b.id} {b.status}: {b.completed_items} of {b.total_items} completed, "
                              f"{b.failed_items} failed, {b.cancelled_items} cancelled")


def flagged_reason(outcome: Any) -> str:
    """", flagged: 612 of 1500 words" for a kept article the quality gate flagged, else ""."""
    verdict = outcome.verdict or {}
    if verdict.get("status") != "flagged":
        return ""
    return f", flagged: {short(', '.join(verdict.get('reasons') or []), 120)}"


def schedule_fired_line(event: Any) -> str:
    """A line about a schedule's occurrence that `run --forever` submitted (or could not)."""
    head = f"schedule {event.schedule!r} ({event.user}), run of {local_time(event.at, event.zone)}"
    done = f"failed: {short(event.error or '', 200)}" if event.error else f"queued as bulk job {event.bulk_job_id}"
    missed = (f"; {event.skipped} earlier run{'s' if event.skipped > 1 else ''} skipped (no `run --forever` was "
              "running then)" if event.skipped else "")
    return f"{head}: {done}{missed}"


def changed_line(bulk: BulkJob) -> str:
    """A line about a job someone paused, resumed or cancelled while this processor ran."""
    said = "resumed" if bulk.status in MOVING else bulk.status
    hint = "; `bulkgen resume` puts it back in the queue" if bulk.status == "paused" else ""
    return (f"bulk job {bulk.id} {short(bulk.name, 40)!r} {said}: {bulk.completed_items} of {bulk.total_items} "
            f"completed, {bulk.failed_items} failed, {bulk.cancelled_items} cancelled{hint}")
#: Job states in which a progress row moves.
MOVING = ("queued", "processing")


class LiveView(PlainView):
    """A Rich progress bar per bulk job on a terminal; retries and waits as lines above."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        super().__init__()
        self.console = Console(stderr=True)
        class StateSpinner(SpinnerColumn):
            """Spins only for a job that moves: a paused, cancelled or completed one shows a still mark."""

            def render(self, task: Any) -> Any:
                from rich.text import Text

                state = task.fields.get("state", "processing")
                if state in MOVING:
                    return super().render(task)
                return Text({"paused": "‖", "cancelled": "✗", "completed": "✓"}.get(state, " "))

        self.progress = Progress(
            StateSpinner(),
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.fields[done]} of {task.total:.0f} completed"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[current]}", style="dim", markup=False),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        self.progress.console.print(visible(text), markup=False, highlight=False, emoji=False)

    def _task(self, bulk: BulkJob) -> Any:
        if bulk.id not in self.tasks:
            self.tasks[bulk.id] = self.progress.add_task(
                short(bulk.name, 30), total=bulk.total_items, done=0, failed=0, eta="—", current="",
                state=bulk.status,
            )
        return self.tasks[bulk.id]

    def _update(self, bulk: BulkJob, current: str) -> None:
        eta = "—"
        if bulk.status in MOVING and bulk.estimated_completion and bulk.pending:
            eta = duration(max((bulk.estimated_completion - utcnow()).total_seconds(), 0))
        if bulk.status not in MOVING:
            current = {"paused": "paused: `bulkgen resume` continues it"}.get(bulk.status, bulk.status)
        self.progress.update(
            self._task(bulk),
            completed=bulk.total_items - bulk.pending,
            done=bulk.completed_items,
            failed=bulk.failed_items,
            eta=eta,
            current=current,
            state=bulk.status,
        )

    def __call__(self, event: Any) -> None:
        if isinstance(event, events.ItemStarted):
            self._update(event.bulk, f"#{event.item.queue_position} {short(event.item.label, 40)}")
        elif isinstance(event, events.ItemFinished):
            self._update(event.bulk, "")
            if event.outcome.error:
                self.line(f"#{event.item.queue_position} {short(event.item.label, 40)} failed: "
                          f"{short(event.outcome.error, 120)}")
            elif flagged_reason(event.outcome):
                self.line(f"#{event.item.queue_position} {short(event.item.label, 40)} completed"
                          f"{flagged_reason(event.outcome)}")
        elif isinstance(event, events.BulkEnded):
            self.ended.append(event.bulk.id)
            self._update(event.bulk, event.bulk.status)
        elif isinstance(event, events.JobChanged):
            if event.bulk.status in ("cancelled", "completed"):
                self.ended.append(event.bulk.id)
            self._update(event.bulk, "resumed" if event.bulk.status in MOVING else event.bulk.status)
            self.line(changed_line(event.bulk))
        elif isinstance(event, events.Queue):
            for bulk in event.bulks:  # the whole queue, as rows: what waits shows as waiting
                starts = bulk.not_before is not None and bulk.not_before > utcnow()
                label = f"starts {when(bulk.not_before)}" if starts else "waiting in the queue"
                self._update(bulk, label if bulk.status == "queued" else "")
        elif isinstance(event, events.Snapshot):
            current = {i.bulk_job_id: f"#{i.queue_position} {short(i.label, 40)}" for i in event.in_flight}
            for bulk in event.bulks:
                label = current.get(bulk.id) or (bulk.status if bulk.status != "processing" else "")
                self._update(bulk, label)
        else:
            super().__call__(event)


class QuietView(PlainView):
    """`--quiet`: nothing per item; only what a stop does, errors and the final line are said."""

    def line(self, text: str) -> None:
        pass

    def __call__(self, event: Any) -> None:
        if isinstance(event, events.Stopping) or (isinstance(event, events.ScheduleFired) and event.error):
            PlainView.line(self, event.message if isinstance(event, events.Stopping) else schedule_fired_line(event))
        else:
            super().__call__(event)  # keeps counting items and ended jobs for the summary


def run_view(quiet: bool = False) -> PlainView:
    """The live view on a terminal, plain lines otherwise, nearly nothing with --quiet."""
    if quiet:
        return QuietView()
    return LiveView() if sys.stderr.isatty() else PlainView()


def summary_line(bulk: BulkJob) -> str:
    return (f"{bulk.id} {bulk.status}: {bulk.completed_items} of {bulk.total_items} completed, "
            f"{bulk.failed_items} failed, {bulk.cancelled_items} cancelled")


def print_summary(bulks: Sequence[BulkJob | None], plain: bool = False) -> None:
    """The end of a run: a panel per ended job on a terminal, plain lines otherwise (or when `plain`)."""
    done = [b for b in bulks if b is not None]
    if not done:
        return
    if not sys.stderr.isatty() or plain:
        for b in done:
            flagged = flagged_line(b)
            sys.stderr.write(f"summary: {summary_line(b)}{'; ' + visible(flagged) if flagged else ''}; "
                             f"results: bulkgen results {b.id} --out articles/\n")
            hint = quality_hint(b)
            if hint:
                sys.stderr.write(f"hint: {hint}\n")
        return
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(stderr=True, highlight=False)
    for b in done:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("Completed", f"{b.completed_items} of {b.total_items}")
        grid.add_row("Failed", str(b.failed_items))
        grid.add_row("Cancelled", str(b.cancelled_items))
        started = b.started_at or b.created_at
        if started and b.completed_at:
            grid.add_row("Duration", duration((b.completed_at - started).total_seconds()))
        for line in b.error_summary:
            grid.add_row("", Text(visible(line)))
        flagged = flagged_line(b)
        if flagged:
            grid.add_row("Quality", Text(visible(flagged), style="yellow"))
        hint = quality_hint(b)
        if hint:
            grid.add_row("Hint", Text(hint))
        grid.add_row("Results", f"bulkgen results {b.id} --out articles/")
        style = "green" if b.status == "completed" and not b.failed_items and not b.flagged_items else "yellow"
        console.print(Panel(grid, title=Text(f"{short(b.name, 80)} — {b.status}"), border_style=style, expand=False))
