"""Commands on single items: `show ITEM`, `item retry ITEM`, `item cancel ITEM` (library: items.py).

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from bulkgen_cli.cli.common import EXIT_CODES, AllUsersOpt, JsonOpt, StoreOpt, UserOpt, note, open_db, render_json
from bulkgen_cli.core import settings
from bulkgen_cli.core.errors import InvalidTransition, UsageError
from bulkgen_cli.core.model import turned_down
from bulkgen_cli.core.text import visible

if TYPE_CHECKING:
    from bulkgen_cli.ops.items import Result, Shown
    from bulkgen_cli.delivery.notify import Delivery

ItemArg = Annotated[str, typer.Argument(metavar="ITEM", help="The item's id, or its first 4 or more digits "
                                        "(the ID column of `bulkgen status BULK_ID --items`).", show_default=False)]
RawOpt = Annotated[bool, typer.Option("--raw", help="Only the article's text, byte for byte as stored.")]

item_app = typer.Typer(name="item", help="Retry or cancel one item (article) of a bulk job.", no_args_is_help=True,
                       epilog=EXIT_CODES, rich_markup_mode=None)


def show(ref: ItemArg, raw: RawOpt = False, store: StoreOpt = None, user: UserOpt = None,
         all_users: AllUsersOpt = False, json_: JsonOpt = False) -> None:
    """Print one article: its text, front matter, tries, timings, status and error.

    On a terminal the text is rendered as Markdown and paged ($PAGER, else
    less) when longer than the screen. Example: bulkgen show 3f2a91c4 --raw > article.md
    """
    from bulkgen_cli.ops import items

    if raw and json_:
        raise UsageError("give --raw (the article's text) or --json (the item's record), not both.")
    with open_db(store, "read") as db:
        shown = items.show(db, ref, settings.user(user), all_users)
    if json_:
        render_json(items.record(shown))
    elif raw:
        _raw(shown)
    elif sys.stdout.isatty():
        _terminal(shown)
    else:
        _plain(shown)


def _raw(shown: Shown) -> None:
    text = shown.text
    if text is None:
        raise InvalidTransition(f"item {shown.short_id} is {shown.item.status}; it has no article text"
                                + (f" ({shown.item.error})." if shown.item.error else "."))
    if turned_down(shown.item):
        note(f"Item {shown.short_id}: this article was turned down by the quality gate ({shown.item.error}).", "dim")
    sys.stdout.write(text)
    sys.stdout.flush()


def _plain(shown: Shown) -> None:
    """For a pipe or a file: one `Label: value` line per fact, then the text, control characters escaped."""
    from bulkgen_cli.ops import items

    lines = [f"{label}: {' '.join(value.split())}" for label, value in items.facts(shown)]
    text = shown.text
    print("\n".join(lines) + ("\n\n" + visible(text).rstrip("\n") if text else ""))


def _terminal(shown: Shown) -> None:
    """Facts as a grid, the text as Markdown (never rich markup, control characters escaped); paged when long."""
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.rule import Rule
    from rich.table import Table
    from rich.text import Text

    from bulkgen_cli.ops import items
    from bulkgen_cli.cli.render import STATUS_STYLE

    console = Console(highlight=False, emoji=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in items.facts(shown):
        grid.add_row(Text(label), Text(value, style=STATUS_STYLE.get(value, "") if label == "Status" else ""))
    with console.capture() as captured:
        console.print(grid)
        if shown.text is not None:
            console.print(Rule())
            console.print(Markdown(visible(shown.text), hyperlinks=False))
    out = captured.get()
    if out.count("\n") < console.height or not _page(out):
        sys.stdout.write(out)
        sys.stdout.flush()


def _page(text: str) -> bool:
    """Show `text` through $PAGER (else `less`, with LESS=FRX unless set, as git does); False when there is none."""
    pager = os.environ.get("PAGER", "less" if shutil.which("less") else "").strip()
    if not pager or pager == "cat":
        return False
    env = os.environ | ({} if "LESS" in os.environ else {"LESS": "FRX"})
    # Ctrl-C belongs to the pager while it runs (a handler, not SIG_IGN: the pager must not inherit the ignore).
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        done = subprocess.run(pager, shell=True, input=text.encode("utf-8", "replace"), env=env, check=False)
    except OSError:
        return False
    finally:
        signal.signal(signal.SIGINT, previous)
    return done.returncode != 127  # 127: the shell found no such pager; print instead


def _act(action_name: str, ref: str, store: str | None, user: str | None, all_users: bool, json_: bool) -> None:
    from bulkgen_cli.delivery.notify import AtOnce
    from bulkgen_cli.ops import items

    action = items.ItemAction(action_name)
    with open_db(store, "write") as db:
        result = items.apply(db, action, ref, settings.user(user), all_users,
                             notifier=AtOnce(db, settings.smtp, settings.notify_retry_delays, _report_delivery))
        if json_:
            render_json(items.record(items.Shown(result.item, result.bulk, result.short_id)))
            return
    _say(action, result)


def _say(action: object, result: Result) -> None:
    from bulkgen_cli.ops import items
    from bulkgen_cli.cli.render import summary_line

    item = result.item
    where = f"Item {result.short_id} (#{item.queue_position} of bulk job {result.bulk.id})"
    if not result.changed:
        note(f"{where} is already {item.status}; nothing to do.")
        return
    follow_up = {
        items.ItemAction.retry: "It is back in the queue at its place; `bulkgen run` processes it.",
        items.ItemAction.cancel: ("Its request is being aborted: its processor closes it within about a second."
                                  if result.previous.value == "processing" else
                                  "It will not be generated."),
    }[action]  # type: ignore[index]
    note(f"{where}: {result.previous.value} -> {item.status}. {follow_up}")
    if result.ended_now:
        note(f"That was its last pending item: bulk job {summary_line(result.bulk)}.", "dim")


def _report_delivery(delivery: Delivery) -> None:
    state = "sent" if delivery.ok else f"not sent yet ({delivery.error}); a processor will retry"
    note(f"Notification {delivery.channel}: {state}", "dim")


def retry(ref: ItemArg, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
          json_: JsonOpt = False) -> None:
    """Put one failed or cancelled item back in the queue, at its place (a new round of tries).

    When its job had completed, the job is queued again (exit 4 while the
    notification of that end is still being delivered); an item of a cancelled
    job stays as it is (exit 4). Example: bulkgen item retry 3f2a91c4 && bulkgen run
    """
    _act("retry", ref, store, user, all_users, json_)


def cancel(ref: ItemArg, store: StoreOpt = None, user: UserOpt = None, all_users: AllUsersOpt = False,
           json_: JsonOpt = False) -> None:
    """Cancel one queued item, or abort it in flight (as a job cancel does).

    When that leaves nothing pending, its job completes (and is notified).
    Example: bulkgen item cancel 3f2a91c4
    """
    _act("cancel", ref, store, user, all_users, json_)


def register(app: typer.Typer) -> None:
    """Add `show` and the `item` sub-commands to the bulkgen app."""
    app.command("show", epilog=EXIT_CODES)(show)
    item_app.command("retry", epilog=EXIT_CODES)(retry)
    item_app.command("cancel", epilog=EXIT_CODES)(cancel)
    app.add_typer(item_app, name="item")
