"""`bulkgen doctor [--fix] [--json]`: bulk jobs whose state disagrees with their items, listed and repaired
(library: repair.py; design.md, "Repair").

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bulkgen_cli.cli.common import EXIT_CODES, JsonOpt, StoreOpt, note, open_db, render_json
from bulkgen_cli.core import settings
from bulkgen_cli.core.model import utcnow

if TYPE_CHECKING:
    from bulkgen_cli.store.repair import Finding

FixOpt = Annotated[bool, typer.Option("--fix", help="Repair what is found, through the same steps as a normal "
                                      "run, and deliver the notifications of every end it records.")]
#: The exit code when jobs disagree with their items and were not (all) repaired.
PROBLEMS_LEFT = 1


def doctor(fix: FixOpt = False, store: StoreOpt = None, json_: JsonOpt = False) -> None:
    """Find bulk jobs (every user's) whose state disagrees with their items, and with --fix repair them.

    Such a job is one a stopped process left half-recorded: running with nothing
    left to run (its end never recorded), cancelled with items still waiting,
    or counters that do not match its items. Every processor repairs the active
    ones by itself at start and every third of a lease; doctor looks at every
    job. Exit 0 when nothing is wrong or all was repaired, 1 when something is
    left. Example: bulkgen doctor --fix
    """
    from bulkgen_cli.store import repair

    with open_db(store, "write" if fix else "read") as db:
        if fix:
            findings = repair.repair(db, utcnow(), thorough=True)
            _deliver(db, findings)
        else:
            findings = repair.look(db, thorough=True)
    left = [f for f in findings if not f.fixed]
    if json_:
        render_json({"problems": [_record(f) for f in findings], "fixed": fix, "left": len(left)})
    else:
        _say(findings, fix)
    if left:
        sys.exit(PROBLEMS_LEFT)


def _deliver(db: Any, findings: list[Finding]) -> None:
    """Every end a repair recorded is notified at once, as the processor that records an end does."""
    from bulkgen_cli.delivery.notify import AtOnce
    from bulkgen_cli.ops import control

    notifier = AtOnce(db, settings.smtp, settings.notify_retry_delays, _report_delivery)
    for finding in findings:
        if finding.counts is not None and finding.counts.ended_now:
            control.notify_end(db, finding.bulk.id, notifier)


def _report_delivery(delivery: Any) -> None:
    state = "sent" if delivery.ok else f"not sent yet ({delivery.error}); a processor will retry"
    note(f"Notification {delivery.channel} of bulk job {delivery.bulk_id}: {state}", "dim")


def _record(finding: Finding) -> dict[str, Any]:
    bulk = finding.bulk
    return {"bulk_job_id": bulk.id, "userId": bulk.userId, "name": bulk.name, "status": bulk.status,
            "problem": finding.problem, "fixed": finding.fixed,
            "ended_now": bool(finding.counts is not None and finding.counts.ended_now)}


def _say(findings: list[Finding], fix: bool) -> None:
    if not findings:
        note("Every bulk job agrees with its items: nothing to repair.")
        return
    for finding in findings:
        bulk = finding.bulk
        line = f"Bulk job {bulk.id} ({bulk.userId}, {bulk.name!r}): {finding.problem}."
        if fix:
            line += " Repaired." if finding.fixed else " Not repaired: it changed meanwhile; run doctor again."
        print(line)
    left = sum(not f.fixed for f in findings)
    if not fix:
        them = "it" if len(findings) == 1 else "them"
        note(f"{_jobs(len(findings))} to repair: `bulkgen doctor --fix` repairs {them} "
             "(so does any `bulkgen run`, for jobs not yet ended).")
    elif left:
        note(f"{_jobs(left)} not repaired.", "red")
    else:
        note(f"{_jobs(len(findings))} repaired.")


def _jobs(n: int) -> str:
    return "1 bulk job" if n == 1 else f"{n} bulk jobs"


def register(app: typer.Typer) -> None:
    """Add `doctor` to the bulkgen app."""
    app.command("doctor", epilog=EXIT_CODES)(doctor)
