"""`bulkgen template save | list | show | remove`, and what `submit --template/--values` reads (templates.py).

Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from bulkgen_cli.cli.common import (
    EXIT_CODES, JsonOpt, StoreOpt, UserOpt, listed, note, open_db, open_or_create, render_json,
)
from bulkgen_cli.core import settings
from bulkgen_cli.core.model import SaveOutcome, iso
from bulkgen_cli.core.text import visible

if TYPE_CHECKING:
    from bulkgen_cli.input.manifest import Manifest
    from bulkgen_cli.core.model import SavedTemplate

app = typer.Typer(
    name="template",
    help="Saved templates: an article with {placeholders}, kept in the store for `submit --template`.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The template's name: 1 to 64 lowercase letters, "
                                        "digits, - and _, starting with a letter or digit.", show_default=False)]
TemplateFileArg = Annotated[Path, typer.Argument(metavar="FILE", help="The template: .yaml, .yml or .json; - reads "
                                                 "standard input.", show_default=False)]
#: `template list` in a pipe and on a terminal alike: one aligned line per template.
COLUMNS = (("Name", None), ("Mode", None), ("Placeholders", None), ("Saved", None), ("From", None))


def template_dict(saved: SavedTemplate, with_text: bool = False) -> dict[str, Any]:
    """A saved template as `--json` prints it."""
    doc: dict[str, Any] = {"name": saved.name, "userId": saved.userId, "mode": saved.mode,
                           "placeholders": list(saved.placeholders), "source": saved.source,
                           "created_at": iso(saved.created_at), "updated_at": iso(saved.updated_at)}
    if with_text:
        doc["text"] = saved.text
    return doc


@app.command("save", epilog=EXIT_CODES)
def save(
    name: NameArg,
    file: TemplateFileArg,
    replace: Annotated[bool, typer.Option("--replace", help="Replace your template of that name if you have one "
                       "(without it, a taken name is refused: exit 4).")] = False,
    store: StoreOpt = None,
    user: UserOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Check a template and keep it in the store under NAME, for you alone.

    The template is checked as `submit` checks it, rows aside; nothing is saved
    when it has a problem. Example: bulkgen template save city-guides examples/city-guides.yaml
    """
    from bulkgen_cli.input import templates

    templates.check_name(name)
    templates.template_file(file)
    text = templates.read_file(file, templates.OF_TEMPLATE)
    with open_or_create(store) as db:
        saved, outcome = templates.save(db, settings.user(user), name, text, source=templates.display(file),
                                        replace=replace)
    if json_:
        render_json(template_dict(saved) | {"outcome": outcome.value})
        return
    verb = "Replaced" if outcome is SaveOutcome.replaced else "Saved"
    placeholders = ", ".join("{" + p + "}" for p in saved.placeholders) or "none"
    note(f"{verb} template {name} (placeholders: {placeholders}).")
    note(f"Next: `bulkgen submit --template {name} --values ROWS.csv` makes one article per row.", "dim")


@app.command("list", epilog=EXIT_CODES)
def list_(store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """List your saved templates, by name.

    Example: bulkgen template list --json
    """
    from bulkgen_cli.cli import render
    from bulkgen_cli.input import templates

    with open_db(store, "read") as db:
        saved = templates.list_saved(db, settings.user(user))
    if listed(saved, json_, template_dict, "No saved templates yet: `bulkgen template save NAME FILE` keeps one."):
        return
    rows = [[t.name, t.mode or "-", ", ".join("{" + p + "}" for p in t.placeholders), render.when(t.updated_at),
             t.source] for t in saved]
    print(render.plain_table(COLUMNS, rows))


@app.command("show", epilog=EXIT_CODES)
def show(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Print one of your saved templates as it was saved (line numbers in errors refer to it).

    Example: bulkgen template show city-guides > city-guides.yaml
    """
    from bulkgen_cli.input import templates

    with open_db(store, "read") as db:
        saved = templates.load_saved(db, settings.user(user), name)
    if json_:
        render_json(template_dict(saved, with_text=True))
        return
    sys.stdout.write(visible(saved.text) if saved.text.endswith("\n") else visible(saved.text) + "\n")


@app.command("remove", epilog=EXIT_CODES)
def remove(name: NameArg, store: StoreOpt = None, user: UserOpt = None, json_: JsonOpt = False) -> None:
    """Delete one of your saved templates (jobs made from it are not touched).

    Example: bulkgen template remove city-guides
    """
    from bulkgen_cli.ops import schedules
    from bulkgen_cli.input import templates

    with open_db(store, "write") as db:
        saved = templates.load_saved(db, settings.user(user), name)
        templates.remove(db, settings.user(user), name)
        using = schedules.using_template(db, settings.user(user), name)
    if json_:  # as `schedule remove --json`: the record removed
        render_json(template_dict(saved) | {"used_by_schedules": using})
    else:
        note(f"Removed template {name}.")
    if using:
        note(f"Warning: schedule{'s' if len(using) > 1 else ''} {', '.join(using)} use{'' if len(using) > 1 else 's'} "
             f"template {name}: each run fails until you save it again (`bulkgen template save {name} FILE`) or "
             f"remove the schedule (`bulkgen schedule remove NAME`).", "yellow")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="template")


# -- submit --template / --values ---------------------------------------------------------------------------


def submission(file: Path | None, template: str | None, values: Path | None, *, fmt: str | None,
               mode: str | None, split: bool, store: str | None, user: str | None) -> tuple[Manifest, str]:
    """What `submit` validates: an articles FILE, a template FILE with --values, or --template NAME with
    --values (input/sources.py); and how to name where it came from. Every refusal is one sentence (exit 2)."""
    from bulkgen_cli.core import settings
    from bulkgen_cli.input import sources, templates

    source = sources.read(None if file is None else str(file), template, None if values is None else str(values),
                          fmt, mode)

    def saved(name: str) -> SavedTemplate:
        with open_db(store, "read") as db:
            return templates.load_saved(db, settings.user(user), name)

    return sources.manifest_of(source, saved, mode=mode, split=split), sources.describe(source)
