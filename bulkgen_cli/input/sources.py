"""Where a bulk job's articles come from, typed, and the one function that makes them articles.

A source is an articles file's text (a file, standard input, an upload, a JSON body), a template file's text
with its rows, or a saved template (by name) with its rows. `submit`, `schedule add` and a schedule's runs, and
the server's submits all read their articles through `manifest_of`, which checks them exactly as an articles
file is checked (input/manifest.py, input/templates.py). A schedule stores its source as `record(source)`
(design.md, "Recurring schedules"); `from_record` reads it back, old stored schedules included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from bulkgen_cli.core.model import SavedTemplate
from bulkgen_cli.input import manifest, templates
from bulkgen_cli.input.manifest import Manifest


@dataclass(frozen=True)
class Text:
    """A text read from somewhere: the text, its format ("yaml" or "csv"), and how problems name where it was."""

    text: str
    format: str
    file: str


class ArticlesText(Text):
    """An articles file's text: a file, standard input, an upload or a JSON body."""


class Rows(Text):
    """The rows that fill a template, one article each."""


@dataclass(frozen=True)
class TemplateText:
    """A template file's text (YAML or JSON) and how problems name it, with its rows."""

    text: str
    file: str
    rows: Rows


@dataclass(frozen=True)
class SavedTemplateRows:
    """A saved template by name (read each time it is used, so a replace reaches later runs), with its rows."""

    template: str
    rows: Rows


Source = Union[ArticlesText, TemplateText, SavedTemplateRows]
#: Reads a saved template by name for the caller (NotFound worded for it) when a source names one.
SavedLookup = Callable[[str], SavedTemplate]


def read(file: str | None, template: str | None, values: str | None, fmt: str | None = None,
         mode: str | None = None) -> Source:
    """What `submit` and `schedule add` take, read from the paths: an articles FILE, a template FILE with --values
    ROWS, or a saved --template NAME with --values ROWS (`-`: standard input). One sentence for a wrong shape
    (UsageError); located problems (ManifestError) for a file that cannot be read."""
    templates.check_inputs(file, template, values)
    if values is None:
        assert file is not None
        manifest.check_mode(mode, templates.display(file))
        text, kind = manifest.read_source(file, fmt)
        return ArticlesText(text, kind, templates.display(file))
    rows_format = templates.values_format(values, fmt)
    rows = Rows(templates.read_file(values, "the values file"), rows_format, templates.display(values))
    if template is not None:
        return SavedTemplateRows(template, rows)
    assert file is not None
    templates.template_file(file)
    return TemplateText(templates.read_file(file, templates.OF_TEMPLATE), templates.display(file), rows)


def manifest_of(source: Source, saved: SavedLookup | None = None, *, mode: str | None = None,
                split: bool = False) -> Manifest:
    """The source's validated articles (ManifestError with every problem, located); `saved` reads a saved
    template the source names."""
    if isinstance(source, ArticlesText):
        return manifest.load_text(source.text, source.file, source.format, mode, split=split)
    rows = source.rows
    if isinstance(source, SavedTemplateRows):
        assert saved is not None, "a saved template's source needs a lookup"
        return templates.expand_saved(saved(source.template), rows.text, rows.format, values_source=rows.file,
                                      mode=mode, split=split)
    stem = "standard input" if source.file == "standard input" else Path(source.file).stem
    return templates.expand(source.text, rows.text, rows.format, template_source=source.file,
                            values_source=rows.file, mode=mode, split=split, default_name=stem)


def describe(source: Source) -> str:
    """Where the articles came from, as a message says it: `articles.yaml`, `template weekly with rows.csv`."""
    if isinstance(source, ArticlesText):
        return source.file
    if isinstance(source, SavedTemplateRows):
        return f"template {source.template} with {source.rows.file}"
    return f"{source.file} with {source.rows.file}"


#: A stored source's `kind`, by its class.
KINDS: dict[type, str] = {ArticlesText: "file", TemplateText: "template-file", SavedTemplateRows: "template"}


def record(source: Source) -> dict[str, Any]:
    """The source as a schedule stores it: {"kind": "file", "text", "format", "file"}, or
    {"kind": "template-file", "text", "file", "values_…"}, or {"kind": "template", "template", "values_…"}."""
    out: dict[str, Any] = {"kind": KINDS[type(source)]}
    if isinstance(source, ArticlesText):
        return out | {"text": source.text, "format": source.format, "file": source.file}
    if isinstance(source, TemplateText):
        out |= {"text": source.text, "file": source.file}
    else:
        out["template"] = source.template
    return out | {"values_text": source.rows.text, "values_format": source.rows.format,
                  "values_file": source.rows.file}


def from_record(stored: dict[str, Any]) -> Source | None:
    """A stored source read back; None for a kind this version does not know."""
    kind = stored.get("kind")
    if kind == "file":
        return ArticlesText(stored["text"], stored["format"], stored["file"])
    rows = Rows(stored.get("values_text", ""), stored.get("values_format", "yaml"), stored.get("values_file", ""))
    if kind == "template":
        return SavedTemplateRows(stored["template"], rows)
    if kind == "template-file":
        return TemplateText(stored["text"], stored["file"], rows)
    return None
