"""Templates: one article with {placeholders}, made into one item per row of a values file.

A template is a YAML (or JSON) file shaped like an articles file, with `item:`
(one article's fields, whose texts may hold `{placeholders}`) in place of
`items:`, and `values:` (default values of placeholders). `expand` fills it
from rows (CSV with a header, or a YAML/JSON list of mappings), then checks the
items with the articles file's own code (manifest.py), so a template's items
pass exactly the checks any file's items pass. Every problem is located: in the
template by line and field, in the values file by row, line and column.
Saved templates live in the store, per user (design.md, "Saved templates").

Nothing here prints, exits or stores anything but a saved template.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bulkgen_cli.input import manifest
from bulkgen_cli.core.errors import ManifestError, NameTaken, Problem, UsageError, none_named
from bulkgen_cli.input.manifest import MAX_PROBLEMS, STDIN, FieldValue, Manifest
from bulkgen_cli.core.model import (
    ITEMS_RANGE, MAX_SPLIT_ITEMS, REQUIRED_FIELD, Mode, SavedTemplate, SaveOutcome, utcnow,
)
from bulkgen_cli.core.text import quoted

#: A template's top-level keys.
TOP_KEYS = ("mode", "name", "defaults", "item", "values")
#: A placeholder's name: letters, digits, '_' and '-', starting with a letter or '_'.
PLACEHOLDER = re.compile(r"[^\W\d][\w-]{0,99}")
#: `{{` and `}}` (literal braces), `{name}`, and a brace left alone.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: A saved template's name.
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_HELP = "1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit (e.g. city-guides)"
#: The most characters one expansion may make (all rows, all fields): a bound on what a
#: placeholder used many times over large values could otherwise blow up to.
MAX_EXPANDED = 20_000_000
#: Values formats `expand` reads.
VALUES_FORMATS = ("csv", "yaml")
#: The articles checks' "used by item 3" names a row here.
_ROW_NOT_ITEM = re.compile(r"(already used by )item(?= \d+;)")
#: What the problems are in, for the error's heading (see cli.main).
OF_TEMPLATE = "the template"
OF_TEMPLATE_AND_ROWS = "the template with its rows"


# -- a template's text, compiled ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Ph:
    """A placeholder in a text."""

    name: str


@dataclass(frozen=True)
class _Text:
    """A text holding placeholders: literal pieces (escapes undone) and placeholders, in order."""

    parts: tuple[str | _Ph, ...]

    @property
    def single(self) -> str | None:
        """The placeholder's name when the text is exactly one placeholder (it then takes the value's type)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], _Ph):
            return self.parts[0].name
        return None


@dataclass
class _Slot:
    """One field of `item:`: its value with texts compiled, its line, and the placeholders it uses."""

    value: Any
    line: int | None
    uses: tuple[str, ...]


@dataclass
class Template:
    """A template, checked: what `expand` fills and `template save` stores."""

    source: str
    #: the mode its items get: --mode, else the template's `mode:`, else topic
    mode: Mode
    #: the template's own `mode:`, if it names one
    named_mode: Mode | None
    name: str | None
    defaults: dict[str, FieldValue]
    item: dict[str, _Slot]
    #: `values:`: each placeholder's default value (None: may be left empty) and its line
    values: dict[str, FieldValue]
    #: every placeholder, in the order of first use
    placeholders: list[str] = field(default_factory=list)


class _Problems(manifest.Problems):
    """Located problems of one file; several share one list (`found`) and are raised together.

    For a values file (`rows=True`) the articles checks' items are rows, and a field that
    one placeholder fills names that placeholder as its column.
    """

    def __init__(self, file: str, found: list[Problem], subject: str, rows: bool = False,
                 item: dict[str, _Slot] | None = None):
        super().__init__(file)
        self.items = found
        self.subject = subject
        self.rows = rows
        self.slots = item or {}

    def add(self, message: str, item: int | None = None, line: int | None = None,
            field: str | None = None) -> None:
        self.located(message, item, line, field)

    def located(self, message: str, row: int | None = None, line: int | None = None, field: str | None = None,
                column: str | None = None) -> None:
        if not self.rows:
            self.items.append(Problem(self.file, message, row, line, field))
            return
        message = _ROW_NOT_ITEM.sub(r"\1row", message)  # the articles checks count items; here they are rows
        uses = self.slots[field].uses if field in self.slots else ()
        if column is None and len(uses) == 1:
            column = uses[0]
        elif column is None and len(uses) > 1:
            message = f"{message} (filled from {', '.join('{' + u + '}' for u in uses)})"
        self.items.append(Problem(self.file, message, None, line, field, row=row, column=column))

    def raise_if_any(self, *others: _Problems) -> None:
        """Raise this file's problems, and those of `others` after them, together."""
        found = self.items + [p for other in others for p in other.items]
        if not found:
            return
        ordered = sorted(found, key=lambda p: p.row or 0)  # file-wide first, then rows in order
        shown = ordered[:MAX_PROBLEMS]
        if len(ordered) > MAX_PROBLEMS:
            shown.append(Problem(self.file, f"… and {len(ordered) - MAX_PROBLEMS} more problems."))
        raise ManifestError(shown, self.subject)


def _compile_text(text: str, problems: _Problems, line: int | None, fld: str) -> str | _Text:
    """A text with its escapes undone, or a _Text when it holds placeholders; bad braces noted once."""
    parts: list[str | _Ph] = []
    literal: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[pos:match.start()])
        pos = match.end()
        token, inner = match.group(), match.group(1)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif inner is not None and PLACEHOLDER.fullmatch(inner):
            parts.extend(["".join(literal), _Ph(inner)])
            literal = []
        elif inner is not None:
            problems.add(f"{quoted('{' + inner + '}')} is not a placeholder: a name is letters, digits, '_' and '-', "
                         "starting with a letter or '_' (write {{ and }} for literal braces).", None, line, fld)
            return text
        else:
            problems.add(f"has a single '{token}' at character {match.start() + 1}; write '{token * 2}' for a "
                         "literal brace, or {name} for a placeholder.", None, line, fld)
            return text
    literal.append(text[pos:])
    parts.append("".join(literal))
    if len(parts) == 1:
        return "".join(literal)  # no placeholder: plain text
    return _Text(tuple(p for p in parts if p != ""))


def _compile(value: Any, problems: _Problems, line: int | None, fld: str) -> Any:
    """A field's value with every text compiled, at any depth (mapping keys stay as written)."""
    if isinstance(value, str):
        return _compile_text(value, problems, line, fld)
    if isinstance(value, list):
        return [_compile(v, problems, line, fld) for v in value]
    if isinstance(value, dict):
        return {k: _compile(v, problems, line, fld) for k, v in value.items()}
    return value


def _uses(value: Any) -> Iterator[str]:
    """The placeholders in a compiled value, in order (repeats included)."""
    if isinstance(value, _Text):
        yield from (p.name for p in value.parts if isinstance(p, _Ph))
    elif isinstance(value, list):
        for v in value:
            yield from _uses(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _uses(v)


# -- reading a template --------------------------------------------------------------------------------

_SHAPE = ("a template is a mapping with 'item:' (one article's fields, with {placeholders}) and optional "
          "'mode:', 'name:', 'defaults:' and 'values:'")


@dataclass
class _Read:
    """A template's YAML as read, before any check: each part with its line."""

    mode: FieldValue | None = None
    name: FieldValue | None = None
    defaults: dict[str, FieldValue] = field(default_factory=dict)
    item: dict[str, FieldValue] = field(default_factory=dict)
    values: dict[str, FieldValue] = field(default_factory=dict)


def _fields(node: Node, conv: manifest.Converter, problems: _Problems, key: str) -> dict[str, FieldValue]:
    """A mapping's fields with their lines; a problem (and nothing) when it is not a mapping (null: empty)."""
    if isinstance(node, MappingNode):
        return {k: FieldValue(conv.value(v, None, k), manifest.node_line(v)) for k, v in conv.mapping(node, None, key)}
    if not (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
        problems.add(f"'{key}' must be a mapping.", line=manifest.node_line(node))
    return {}


def _template_document(root: Node | None, conv: manifest.Converter, problems: manifest.Problems) -> _Read | None:
    assert isinstance(problems, _Problems)
    if not isinstance(root, MappingNode):
        problems.add(f"is {'empty' if root is None else 'not a mapping'}; {_SHAPE}.",
                     line=None if root is None else manifest.node_line(root))
        return None
    top = dict(conv.mapping(root, None, None))
    if "items" in top and "item" not in top:
        problems.add("is an articles file (it has 'items:'), not a template (one article with {placeholders} "
                     "under 'item:'): use it as an articles FILE, without --values.")
        return None
    for key, node in top.items():
        if key not in TOP_KEYS:
            problems.add(f"unknown top-level key '{key}'{manifest.suggest(key, TOP_KEYS)}", line=manifest.node_line(node))
    read = _Read()
    for key in ("mode", "name"):
        if key in top:
            setattr(read, key, FieldValue(conv.value(top[key], None, key), manifest.node_line(top[key])))
    for key in ("defaults", "values"):
        if key in top:
            setattr(read, key, _fields(top[key], conv, problems, key))
    if "item" not in top:
        problems.add(f"has no 'item:'; {_SHAPE}.", line=manifest.node_line(root))
        return None
    read.item = _fields(top["item"], conv, problems, "item")
    return read


def _mode(read: _Read, flag: str | None, problems: _Problems) -> tuple[Mode, Mode | None]:
    """The items' mode (--mode, else the template's, else topic) and the template's own."""
    named = None
    if read.mode is not None and read.mode.value is not None:
        named = manifest.parse_mode(read.mode.value, problems, "mode", read.mode.line)
    chosen = manifest.parse_mode(flag, problems, "--mode") if flag is not None else None
    if chosen and named and chosen != named:
        problems.add(f"the template says mode '{named.value}' but --mode says '{chosen.value}'.")
    return chosen or named or Mode.topic, named


def _name(read: _Read, problems: _Problems) -> str | None:
    """The job's name from `name:`: text without placeholders (one name per bulk job, not one per row)."""
    if read.name is None or read.name.value is None:
        return None
    value, line = read.name.value, read.name.line
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        problems.add("'name' must be text.", line=line, field="name")
        return None
    text = _compile_text(str(value), problems, line, "name")
    if isinstance(text, _Text):
        names = ", ".join("{" + p + "}" for p in dict.fromkeys(_uses(text)))
        problems.add(f"holds {names}, but a bulk job has one name, not one per row: write it without "
                     "placeholders (or --name NAME; {{ and }} are literal braces).", line=line, field="name")
        return None
    return text.strip()[:200]


def _defaults(read: _Read, mode: Mode, problems: _Problems) -> dict[str, FieldValue]:
    """`defaults:`, checked once as in an articles file; placeholders belong in 'item:'."""
    plain = {}
    for key, fld in read.defaults.items():
        value = _compile(fld.value, problems, fld.line, key)
        if any(True for _ in _uses(value)):
            problems.add("in 'defaults': holds a placeholder; defaults are the same for every row, so "
                         "placeholders go in 'item:'.", line=fld.line, field=key)
        else:
            plain[key] = FieldValue(value, fld.line)
    return manifest.validate_defaults(plain, mode, problems)


def _item(read: _Read, mode: Mode, defaults: dict[str, FieldValue], problems: _Problems) -> dict[str, _Slot]:
    """`item:` compiled; each field known, and each without placeholders checked once, here."""
    slots = {}
    for key, fld in read.item.items():
        if fld.value is None:
            continue
        where = (None, fld.line, key)
        if not manifest.known_field(key, mode, problems, where):
            continue
        before = len(problems.items)
        value = _compile(fld.value, problems, fld.line, key)
        if len(problems.items) > before:
            continue  # a bad brace: said once, not again as a bad value
        uses = tuple(dict.fromkeys(_uses(value)))
        if not uses and key == "id":
            problems.add("must hold a placeholder, such as \"{slug}\": ids are unique per item, and a template "
                         "makes one item per row.", *where)
        elif not uses:
            manifest.validate_field(key, value, problems, where)
        slots[key] = _Slot(value, fld.line, uses)
    required = REQUIRED_FIELD[mode]
    if not any(name in read.item or name in defaults for name in required):
        missing = " or ".join(f"'{n}'" for n in required)
        problems.add(f"'item' has no {missing} (required in {mode.value} mode).")
    return slots


def _values(read: _Read, item: dict[str, _Slot], placeholders: list[str], problems: _Problems) -> None:
    """`values:`: names that some field uses; a default that fills a field whole is checked as that field."""
    for key, fld in read.values.items():
        if key not in placeholders:
            problems.add(f"in 'values': no field of 'item:' uses {{{key}}}"
                         f"{_close(key, placeholders)}", line=fld.line)
            continue
        if fld.value is None:
            continue  # may be left empty: a field that is exactly {key} is then left out
        for name, slot in item.items():
            if isinstance(slot.value, _Text) and slot.value.single == key:
                manifest.validate_field(name, fld.value, problems, (None, fld.line, name))


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {{{close[0]}}}?" if close else "."


def _check(text: str, problems: _Problems, mode: str | None) -> Template:
    """Read and check a template; every problem noted, raised at once when it cannot be used at all."""
    empty: _Read | None = None
    read = manifest.read_yaml(text, problems, _template_document, empty)
    if read is None:
        problems.raise_if_any()
        raise AssertionError("a template that is not read has a problem noted")
    chosen, named = _mode(read, mode, problems)
    name = _name(read, problems)
    defaults = _defaults(read, chosen, problems)
    item = _item(read, chosen, defaults, problems)
    placeholders = list(dict.fromkeys(p for slot in item.values() for p in slot.uses))
    _values(read, item, placeholders, problems)
    return Template(problems.file, chosen, named, name, defaults, item, read.values, placeholders)


def check(template_text: str, *, source: str, mode: str | None = None) -> Template:
    """A template checked on its own (what `template save` does): ManifestError with every problem found."""
    problems = _Problems(source, [], OF_TEMPLATE)
    template = _check(template_text, problems, mode)
    problems.raise_if_any()
    return template


# -- reading the rows ------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """A values file as read: its columns (each with the row and line where it is first named) and its rows."""

    csv: bool
    columns: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    rows: list[tuple[int | None, dict[str, Any]]] = field(default_factory=list)


def _blank(value: Any) -> bool:
    """A value left empty: an empty cell, a null, blank text."""
    return value is None or (isinstance(value, str) and not value.strip())


def _rows_document(root: Node | None, conv: manifest.Converter, problems: manifest.Problems) -> _Rows:
    out = _Rows(csv=False)
    if not isinstance(root, SequenceNode):
        problems.add(f"is {'empty' if root is None else 'not a list'}; values in YAML or JSON are a list of rows, "
                     "each a mapping of placeholder names to values (- {city: Lisbon, words: 1200}).",
                     line=None if root is None else manifest.node_line(root))
        return out
    for number, node in enumerate(root.value, start=1):
        line = manifest.node_line(node)
        row: dict[str, Any] = {}
        if not isinstance(node, MappingNode):
            problems.add("must be a mapping of placeholder names to values ({city: Lisbon, …}).", number, line)
        else:
            for key, child in conv.mapping(node, number, None):
                row[key] = conv.value(child, number, None)
                out.columns.setdefault(key, (number, manifest.node_line(child)))
        out.rows.append((line, row))
    return out


def _csv_columns(header: list[str], problems: _Problems) -> list[str]:
    """The header's column names; a refused one is kept as '' (and never read)."""
    columns: list[str] = []
    seen: set[str] = set()  # a set: a header may have 100,000 columns
    for index, raw in enumerate(header, start=1):
        name = raw.strip()
        reason = manifest.bad_key_reason(name) if name else None
        if not name:
            problems.located(f"header column {index} is empty.", line=1)
        elif reason:
            problems.located(reason, line=1)
        elif name in seen:
            problems.located("appears twice in the header.", line=1, column=name[:60])
        columns.append(name if name and not reason and name not in seen else "")
        seen.add(name)
        if len(problems.items) > MAX_PROBLEMS:
            break
    return columns


def _csv_rows(text: str, problems: _Problems) -> _Rows:
    out = _Rows(csv=True)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            problems.located("is empty; a CSV values file needs a header row naming its columns (city,words,…).")
            return out
        columns = _csv_columns(header, problems)
        out.columns = {c: (None, 1) for c in columns if c}
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            number = len(out.rows) + 1
            if len(cells) > len(columns):
                problems.located(f"has {len(cells)} cells but the header has {len(columns)}.", number, line)
            out.rows.append((line, {c: cell.strip() for c, cell in zip(columns, cells) if c}))
    except csv.Error as exc:
        problems.located(f"is not valid CSV: {exc}.", line=reader.line_num)
        return _Rows(csv=True)
    return out


def _read_rows(text: str, fmt: str, problems: _Problems) -> _Rows:
    if len(text) > manifest.MAX_FILE_BYTES:
        problems.located(f"is over {manifest.MAX_FILE_BYTES:,} characters (1 MiB).")
        return _Rows(csv=fmt == "csv")
    if fmt == "csv":
        return _csv_rows(text, problems)
    return manifest.read_yaml(text, problems, _rows_document, _Rows(csv=False))


def _first_use(template: Template, name: str) -> tuple[str, int | None]:
    return next((key, slot.line) for key, slot in template.item.items() if name in slot.uses)


def _unknown_placeholders(template: Template, rows: _Rows, tp: _Problems, values_source: str) -> None:
    """Every placeholder has a column or a default: a problem of the template, located where it is first used."""
    for name in template.placeholders:
        if name not in rows.columns and name not in template.values:
            key, line = _first_use(template, name)
            tp.add(f"{{{name}}} is not a column of {values_source} and 'values:' gives it no default"
                   f"{_close(name, list(rows.columns))}", None, line, key)


def _unused_columns(template: Template, rows: _Rows, vp: _Problems) -> None:
    """Every column is used by a placeholder: a misspelt column would otherwise leave its default in every row."""
    unused = [c for c in rows.columns if c not in template.placeholders]
    if len(unused) > 5:  # a wide file is one mistake (the wrong file), not thousands
        shown = ", ".join(quoted(c, 30) for c in unused[:5])
        vp.located(f"has {len(unused):,} columns that no placeholder of the template uses ({shown}, …); the "
                   f"template's placeholders are {_listing(template.placeholders)}.", line=1 if rows.csv else None)
        return
    for name in unused:
        row, line = rows.columns[name]
        vp.located(f"no placeholder of the template uses this column{_close(name, template.placeholders)} "
                   f"Remove it, or use it in the template's 'item:'.", row, line, column=name[:60])


def _listing(names: list[str]) -> str:
    return ", ".join("{" + n + "}" for n in names) if names else "none"


def _check_count(count: int, split: bool, problems: _Problems) -> None:
    """The articles file's count rule, applied to rows: 10-50, or up to MAX_SPLIT_ITEMS with --split."""
    low, high = ITEMS_RANGE
    if split:
        high = MAX_SPLIT_ITEMS
    if not low <= count <= high:
        hint = " Use --split to make several bulk jobs of them." if count > ITEMS_RANGE[1] and not split else ""
        problems.located(f"has {count} rows; a bulk job takes {low} to {high} (one article per row).{hint}")


# -- filling the template, row by row --------------------------------------------------------------------

#: A value that could not be made (its problem is noted): never stored.
_MISSING: Any = object()


def _as_text(value: Any) -> str:
    """A typed value inside a longer text: as YAML would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class _Expander:
    """One item per row: each placeholder takes the row's value, else its default, exactly once.

    Values are inserted as they are and never read for placeholders again, so a
    value holding "{x}" stays "{x}" (design.md, "Expansion").
    """

    def __init__(self, template: Template, rows: _Rows, problems: _Problems):
        self.template, self.rows, self.problems = template, rows, problems
        self.budget = MAX_EXPANDED
        self.line: int | None
        # the row being filled
        self.number, self.line = 0, None
        self.row: dict[str, Any] = {}
        self.said: set[str] = set()

    def items(self) -> list[tuple[int | None, dict[str, FieldValue]]]:
        out = []
        for number, (line, row) in enumerate(self.rows.rows, start=1):
            self.number, self.line, self.row, self.said = number, line, row, set()
            fields = {}
            for key, slot in self.template.item.items():
                value = self.fill(slot.value, key, whole=True)
                if value is not None:  # None: left empty on purpose, so the field is left out
                    fields[key] = FieldValue(None if value is _MISSING else value, line)
            out.append((line, fields))
        return out

    def fill(self, value: Any, key: str, whole: bool = False) -> Any:
        if isinstance(value, _Text):
            name = value.single
            return self.whole(name, key if whole else None) if name else self.text(value, key)
        if isinstance(value, list):
            filled = [self.fill(v, key) for v in value]
            return [None if v is _MISSING else v for v in filled if v is not None]
        if isinstance(value, dict):
            return {k: None if (v := self.fill(child, key)) is _MISSING else v for k, child in value.items()}
        return value

    def value_of(self, name: str) -> tuple[Any, bool]:
        """The row's value (and whether it is a CSV cell), else the default; _MISSING with a problem noted."""
        value = self.row.get(name)
        if not _blank(value):
            return value, self.rows.csv
        if name in self.template.values:
            return self.template.values[name].value, False
        if name in self.rows.columns and name not in self.said:  # no column at all: said once, in the template
            self.said.add(name)
            what = "its cell is empty" if self.rows.csv else ("it is empty" if name in self.row else "this row has none")
            self.problems.located(f"no value for {{{name}}}: {what}, and the template's 'values:' gives no default.",
                                  self.number, self.line, column=name)
        return _MISSING, False

    def whole(self, name: str, key: str | None) -> Any:
        """A field that is exactly one placeholder: the value with its type (a CSV cell read as that field)."""
        value, from_cell = self.value_of(name)
        if value is _MISSING or value is None:
            return value
        self.charge(value)
        if from_cell and key is not None:
            return manifest.csv_value(key, value, self.problems, self.number, self.line or 0)
        return value

    def text(self, value: _Text, key: str) -> Any:
        pieces = []
        for part in value.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            filled, _ = self.value_of(part.name)
            if filled is _MISSING:
                return _MISSING
            if isinstance(filled, (list, dict)):
                kind = "list" if isinstance(filled, list) else "mapping"
                self.problems.located(f"{{{part.name}}} holds a {kind}, which cannot go inside a text; only a "
                                      f"field that is exactly \"{{{part.name}}}\" takes it whole.",
                                      self.number, self.line, key, column=part.name)
                return _MISSING
            pieces.append(_as_text(filled))
            self.charge(pieces[-1])
        return "".join(pieces)

    def charge(self, value: Any) -> None:
        """Count what a value adds; past MAX_EXPANDED, stop with that one problem added."""
        self.budget -= len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        if self.budget < 0:
            self.problems.located(f"the template and its rows make more than {MAX_EXPANDED:,} characters of "
                                  "articles; no bulk job needs that many (a placeholder used over and over?).")
            self.problems.raise_if_any()


# -- the entry points --------------------------------------------------------------------------------------


def expand(template_text: str, values_text: str, values_format: str, *, template_source: str, values_source: str,
           mode: str | None = None, split: bool = False, default_name: str | None = None) -> Manifest:
    """One item per row of `values_text` ("csv" or "yaml" `values_format`), checked as any articles file.

    Returns the validated Manifest, ready for jobs.submit. Raises ManifestError with
    every problem found, in the template (by line and field) and in the rows (by row,
    line and column), nothing stored. `mode` is --mode; `split` allows up to
    MAX_SPLIT_ITEMS rows. The name is the template's `name:`, else `default_name`,
    else `template_source`.
    """
    if values_format not in VALUES_FORMATS:
        raise UsageError(f"values must be csv or yaml, got {quoted(values_format)}.")
    tp = _Problems(template_source, [], OF_TEMPLATE_AND_ROWS)
    template = _check(template_text, tp, mode)
    vp = _Problems(values_source, [], OF_TEMPLATE_AND_ROWS, rows=True, item=template.item)
    rows = _read_rows(values_text, values_format, vp)
    readable = bool(rows.rows) or not vp.items  # when nothing could be read, the rest would only add noise
    if readable:
        _unknown_placeholders(template, rows, tp, values_source)
        _unused_columns(template, rows, vp)
        _check_count(len(rows.rows), split, vp)
    if tp.items or not readable:  # rows are filled only from a template that is right
        tp.raise_if_any(vp)
    articles = manifest.validate_articles(_Expander(template, rows, vp).items(), template.defaults, template.mode, vp)
    vp.raise_if_any()
    request = len(template_text.encode("utf-8", "surrogatepass")) + len(values_text.encode("utf-8", "surrogatepass"))
    manifest.check_stored(articles, request, vp)
    vp.raise_if_any()
    return Manifest(template_source, template.mode, template.name or default_name or template_source, articles)


def check_inputs(file: str | None, template: str | None, values: str | None) -> None:
    """What `submit` and `schedule add` take, by shape: an articles FILE, a template FILE with --values ROWS,
    or a saved --template NAME with --values ROWS; UsageError (one sentence) for anything else."""
    if file is not None and template is not None:
        raise UsageError("give either an articles FILE or --template NAME, not both.")
    if file is None and template is None:
        raise UsageError("give an articles FILE, or a template: --template NAME (or a template FILE) with --values ROWS.")
    if values is None and template is not None:
        raise UsageError(f"template {quoted(template)} needs its rows: add --values ROWS (a CSV file, or a YAML "
                         "list of rows), one article per row.")
    if file == STDIN and values == STDIN:
        raise UsageError("the template and its --values cannot both come from standard input.")


def display(path: str | Path) -> str:
    """A file as messages name it."""
    return "standard input" if str(path) == STDIN else str(path)


def read_file(path: str | Path, subject: str) -> str:
    """A template's or a values file's text (`-`: standard input): UTF-8, at most 1 MiB; ManifestError if not."""
    problems = _Problems(display(path), [], subject)
    text = manifest.read_text(Path(path), problems)
    problems.raise_if_any()
    assert text is not None
    return text


def template_file(path: str | Path) -> None:
    """Refuse a template file that is not YAML or JSON by its name (standard input is YAML)."""
    suffix = Path(path).suffix.lower()
    if str(path) == STDIN or suffix in (".yaml", ".yml", ".json"):
        return
    message = ("is CSV, but a template is YAML or JSON: a CSV file has no place for 'item:' with {placeholders}, "
               "'defaults:' and 'values:' (the rows can be CSV: --values rows.csv)." if suffix == ".csv" else
               "unknown file type for a template: use .yaml, .yml or .json.")
    raise ManifestError([Problem(display(path), message)], OF_TEMPLATE)


def values_format(path: str | Path, fmt: str | None = None) -> str:
    """The values file's format: `fmt` (--format), else by its name; standard input is YAML unless told csv."""
    if fmt is not None:
        return fmt
    suffix = Path(path).suffix.lower()
    if str(path) == STDIN or suffix in (".yaml", ".yml", ".json"):
        return "yaml"
    if suffix == ".csv":
        return "csv"
    raise ManifestError([Problem(display(path), "unknown file type for values: use .csv, .yaml, .yml or .json "
                                                "(or --format csv|yaml).")], "the values file")


# -- saved templates ---------------------------------------------------------------------------------------


class Shelf(Protocol):
    """The part of a store that keeps saved templates (store.base.Store has it); the input layer sits below
    the store and names only what it uses."""

    def save_template(self, template: SavedTemplate, replace: bool = False, max_count: int = 0) -> SaveOutcome: ...

    def get_template(self, user: str, name: str) -> SavedTemplate | None: ...

    def list_templates(self, user: str) -> list[SavedTemplate]: ...

    def remove_template(self, user: str, name: str) -> bool: ...


def check_name(name: str) -> str:
    """A saved template's name, or UsageError (exit 2) saying the rule."""
    if not NAME_RULE.fullmatch(name):
        raise UsageError(f"template name {quoted(name)} is not allowed: use {NAME_HELP}.")
    return name


def save(store: Shelf, user: str, name: str, template_text: str, *, source: str,
         replace: bool = False, max_count: int = 0) -> tuple[SavedTemplate, SaveOutcome]:
    """Check the template and keep it as `user`'s `name`; NameTaken (exit 4) when that name is used, unless `replace`.
    `max_count` (a user's over HTTP; 0: none): a new name past that many templates is QuotaExceeded."""
    check_name(name)
    template_text = template_text.replace("\r\n", "\n")  # kept as written, but `template show` prints no \x0d
    template = check(template_text, source=source)
    now = utcnow()
    saved = SavedTemplate(name=name, userId=user, text=template_text,
                          mode=template.named_mode.value if template.named_mode else None,
                          placeholders=template.placeholders, source=source, created_at=now, updated_at=now)
    outcome = store.save_template(saved, replace, max_count)
    if outcome is SaveOutcome.exists:
        raise NameTaken(f"you have a template named '{name}' already; nothing was saved.",
                        cli=f" `bulkgen template save {name} FILE --replace` replaces it.",
                        http=' {"replace": true} replaces it.')
    if outcome is SaveOutcome.replaced:  # as stored: a replacement keeps when the name was first saved
        saved = store.get_template(user, name) or saved
    return saved, outcome


def load_saved(store: Shelf, user: str, name: str) -> SavedTemplate:
    """`user`'s saved template `name`; NotFound (exit 3) when there is none (another user's is never found)."""
    saved = store.get_template(user, name)
    if saved is None:
        raise none_named("template", name)
    return saved


def list_saved(store: Shelf, user: str) -> list[SavedTemplate]:
    """`user`'s saved templates, by name."""
    return store.list_templates(user)


def remove(store: Shelf, user: str, name: str) -> None:
    """Delete `user`'s saved template `name`; NotFound (exit 3) when there is none."""
    if not store.remove_template(user, name):
        raise none_named("template", name)


def expand_saved(saved: SavedTemplate, values_text: str, values_format: str, *, values_source: str,
                 mode: str | None = None, split: bool = False) -> Manifest:
    """`expand` a saved template: its problems name it `template 'NAME'` (lines as `template show` prints it)."""
    return expand(saved.text, values_text, values_format, template_source=f"template '{saved.name}'",
                  values_source=values_source, mode=mode, split=split, default_name=saved.name)
