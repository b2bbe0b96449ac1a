"""Articles files (YAML or CSV) -> validated article specs, with located errors.

YAML is read through PyYAML's safe loader only, as a node tree: the nodes carry
line numbers for messages, and no tag outside the safe set is ever constructed.
Every problem in the file is collected and raised together as one
ManifestError; nothing here prints, exits or stores.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bulkgen_cli.core.errors import ManifestError, Problem
from bulkgen_cli.core.model import (
    ARTICLE_FIELDS,
    DEFAULT_WORD_COUNT,
    ITEMS_RANGE,
    MAX_KEYWORDS,
    MAX_SPLIT_ITEMS,
    OPTIONAL_FIELDS,
    REQUIRED_FIELD,
    WORD_COUNT_RANGE,
    Mode,
)
from bulkgen_cli.core.text import quoted

MAX_FILE_BYTES = 1024 * 1024
#: An item's `extra`, as JSON (UTF-8), may be at most this many bytes: it is copied into every item it is a
#: default of (design.md, "Size caps").
MAX_EXTRA_BYTES = 16 * 1024
#: A job's articles as stored (JSON) may be at most STORED_FACTOR times its request (the file, or a template
#: and its rows), or STORED_FLOOR bytes when that is more (design.md, "Size caps").
STORED_FACTOR = 4
STORED_FLOOR = 64 * 1024
#: The file name that means standard input.
STDIN = "-"
#: Bounds on the YAML node tree: an alias "bomb" or a deep nest stops here.
MAX_NODES = 100_000
MAX_DEPTH = 32
#: Beyond this many problems the rest are counted, not listed.
MAX_PROBLEMS = 100
TOP_KEYS = ("mode", "name", "defaults", "items")
TEXT_LIMITS = {"source_text": 200_000, "instructions": 5_000}
TEXT_LIMIT = 1_000
TEXT_FIELDS = ("topic", "trend", "source_text", "tone", "language", "title", "audience", "instructions")
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
MODE_OF_FIELD = {name: mode for mode, names in REQUIRED_FIELD.items() for name in names}
T = TypeVar("T")


@dataclass
class Manifest:
    """A validated articles file: one mode, 10-50 article specs in file order."""

    path: str
    mode: Mode
    name: str
    articles: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Field:
    value: Any
    line: int | None


_Rows = list[tuple[int | None, dict[str, "_Field"]]]
#: What a reader gives back: mode, name, defaults, and (line, fields) per item.
_Read = tuple[Mode | None, str | None, dict[str, "_Field"], _Rows]


class _TooBig(Exception):
    pass


class _Problems:
    def __init__(self, file: str):
        self.file = file
        self.items: list[Problem] = []

    def add(self, message: str, item: int | None = None, line: int | None = None,
            field: str | None = None) -> None:
        self.items.append(Problem(self.file, message, item, line, field))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        ordered = sorted(self.items, key=lambda p: p.item or 0)  # file order
        shown = ordered[:MAX_PROBLEMS]
        if len(self.items) > MAX_PROBLEMS:
            shown.append(Problem(self.file, f"… and {len(self.items) - MAX_PROBLEMS} more problems."))
        raise ManifestError(shown)


def suggest(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(known)}."


def bad_key_reason(key: str) -> str | None:
    """Why a mapping key is refused anywhere in the file (it would be a MongoDB operator or path)."""
    if key.startswith("$"):
        return f"key '{key}' starts with '$', which is not allowed (it would be read as a database operator)."
    if "." in key:
        return f"key '{key}' contains '.', which is not allowed (it would be read as a database path)."
    return None


def _articles(rows: list[tuple[int | None, dict[str, _Field]]], defaults: dict[str, _Field], mode: Mode,
              problems: _Problems) -> list[dict[str, Any]]:
    """Each row validated (defaults first), with unique ids."""
    articles = []
    seen_ids: dict[str, int] = {}
    required = REQUIRED_FIELD[mode]
    # One problem, not one per row, when no row has the mode's field (a CSV file without its column).
    none_have = len(rows) > 1 and not any(name in {**defaults, **fields} for _, fields in rows for name in required)
    for number, (line, fields) in enumerate(rows, start=1):
        article = _validate_article({**defaults, **fields}, mode, number, line, problems, not none_have)
        item_id = article.get("id")
        if item_id is not None:
            if item_id in seen_ids:
                problems.add(
                    f"id '{item_id}' is already used by item {seen_ids[item_id]}; ids must be unique.",
                    number, fields["id"].line or line, "id",
                )
            else:
                seen_ids[item_id] = number
        articles.append(article)
    if none_have:
        missing = " or ".join(f"'{n}'" for n in required)
        problems.add(f"no item has {missing} (required in {mode.value} mode; in a CSV file, a {missing} column).")
    return articles


def _read_text(path: Path, problems: _Problems) -> str | None:
    try:
        if str(path) == STDIN:
            raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                problems.add(f"the file is {size:,} bytes; the limit is {MAX_FILE_BYTES:,} (1 MiB).")
                return None
            with path.open("rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        problems.add("no such file.")
        return None
    except IsADirectoryError:
        problems.add("is a folder, not an articles file.")
        return None
    except OSError as exc:
        problems.add(f"cannot be read: {exc.strerror or exc}.")
        return None
    if len(raw) > MAX_FILE_BYTES:
        problems.add(f"the file is over {MAX_FILE_BYTES:,} bytes (1 MiB).")
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.add(f"is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); save it as UTF-8.", line=line)
        return None


def load(path: str | Path, mode: str | None = None, split: bool = False, fmt: str | None = None) -> Manifest:
    """Read and validate an articles file (`-`: standard input). Raises ManifestError with every problem found.

    `fmt` ("yaml" or "csv") overrides the file's suffix; standard input is YAML
    unless it says csv. With `split`, more than 50 items (up to MAX_SPLIT_ITEMS)
    are accepted: the caller makes several bulk jobs of them.
    """
    path = Path(path)
    problems = _Problems("standard input" if str(path) == STDIN else str(path))
    flag_mode = _parse_mode(mode, problems, "--mode") if mode is not None else None
    problems.raise_if_any()
    suffix = {"yaml": ".yaml", "csv": ".csv"}.get(fmt or "", "") or (".yaml" if str(path) == STDIN else path.suffix.lower())
    if suffix not in (".yaml", ".yml", ".json", ".csv"):
        problems.add("unknown file type: use .yaml, .yml, .json or .csv (or --format yaml|csv).")
        problems.raise_if_any()
    text = _read_text(path, problems)
    problems.raise_if_any()
    assert text is not None
    stdin = str(path) == STDIN
    return _parse(text, suffix, flag_mode, split, problems, "standard input" if stdin else path.stem)


def check_mode(mode: str | None, source: str) -> None:
    """ManifestError naming `source` when --mode names no mode: said before the file is read, as `load` says it."""
    problems = _Problems(source)
    if mode is not None:
        _parse_mode(mode, problems, "--mode")
    problems.raise_if_any()


def read_source(path: str | Path, fmt: str | None = None) -> tuple[str, str]:
    """An articles file's text and its format ("yaml" or "csv"), checked as `load` reads it (size, UTF-8).

    For callers that keep the text itself (a schedule stores what it submits);
    `load_text` then validates it exactly as `load` would have.
    """
    path = Path(path)
    problems = _Problems("standard input" if str(path) == STDIN else str(path))
    suffix = {"yaml": ".yaml", "csv": ".csv"}.get(fmt or "", "") or (".yaml" if str(path) == STDIN else path.suffix.lower())
    if suffix not in (".yaml", ".yml", ".json", ".csv"):
        problems.add("unknown file type: use .yaml, .yml, .json or .csv (or --format yaml|csv).")
    text = None if problems.items else _read_text(path, problems)
    problems.raise_if_any()
    assert text is not None
    return text, "csv" if suffix == ".csv" else "yaml"


def load_text(text: str, source: str, fmt: str, mode: str | None = None, split: bool = False) -> Manifest:
    """Validate an articles file's text (`fmt`: "yaml" or "csv") as `load` validates a file; `source` names it."""
    problems = _Problems(source)
    flag_mode = _parse_mode(mode, problems, "--mode") if mode is not None else None
    problems.raise_if_any()
    return _parse(text, ".csv" if fmt == "csv" else ".yaml", flag_mode, split, problems, Path(source).stem)


def _parse(text: str, suffix: str, flag_mode: Mode | None, split: bool, problems: _Problems,
           stem: str) -> Manifest:
    """The validation shared by `load` and `load_text`: every problem at once, or the manifest."""
    reader = _read_csv if suffix == ".csv" else _read_yaml
    file_mode, name, defaults, rows = reader(text, problems)
    if not rows:
        problems.raise_if_any()  # nothing readable: the count would only add noise
    if flag_mode and file_mode and flag_mode != file_mode:
        problems.add(f"the file says mode '{file_mode.value}' but --mode says '{flag_mode.value}'.")
        problems.raise_if_any()
    chosen = flag_mode or file_mode or Mode.topic
    low, high = ITEMS_RANGE
    if split:
        high = MAX_SPLIT_ITEMS
    if not low <= len(rows) <= high:
        hint = " Use --split to make several bulk jobs of it." if len(rows) > ITEMS_RANGE[1] and not split else ""
        problems.add(f"has {len(rows)} item{'' if len(rows) == 1 else 's'}; a bulk job takes {low} to {high}.{hint}")
    valid = _validate_defaults(defaults, chosen, problems)
    refused = {key: fld for key, fld in defaults.items() if key not in valid}  # said once, in 'defaults'
    rows = [(line, {k: f for k, f in fields.items() if refused.get(k) is not f}) for line, fields in rows]
    articles = _articles(rows, valid, chosen, problems)
    problems.raise_if_any()
    check_stored(articles, len(text.encode("utf-8", "surrogatepass")), problems)
    problems.raise_if_any()
    return Manifest(problems.file, chosen, name or stem, articles)


def _validate_defaults(defaults: dict[str, _Field], mode: Mode, problems: _Problems) -> dict[str, _Field]:
    """Check `defaults:` once, so a bad default is one problem, not one per item."""
    allowed = REQUIRED_FIELD[mode] + OPTIONAL_FIELDS
    valid = {}
    for key, fld in defaults.items():
        if fld.value is None:
            continue
        if key == "id":
            problems.add("in 'defaults': cannot set 'id'; ids are per item.", line=fld.line)
        elif key not in allowed:
            problems.add(f"in 'defaults': unknown field '{key}'{suggest(key, allowed)}", line=fld.line)
        elif _validate_field(key, fld.value, problems, (None, fld.line, key)) is not None:
            valid[key] = fld
    return valid


def _parse_mode(value: Any, problems: _Problems, where: str, line: int | None = None,
                item: int | None = None) -> Mode | None:
    modes = tuple(m.value for m in Mode)
    if isinstance(value, str) and value.strip().lower() in modes:
        return Mode(value.strip().lower())
    problems.add(f"{where} must be one of {', '.join(modes)}, got {quoted(value)}.", item, line,
                 "mode" if where != "--mode" else None)
    return None


# -- YAML ---------------------------------------------------------------------


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _check_tags(root: Node | None) -> None:
    """Refuse any collection tag beyond plain map and seq, anywhere, before use.

    Each node is visited once, so aliases cost nothing here. Scalar tags are
    checked when constructed (SafeConstructor refuses unknown ones).
    """
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            continue
        if node.tag not in (SEQ_TAG, MAP_TAG):
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag} is not allowed", node.start_mark
            )
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        else:
            for key, value in node.value:
                stack.extend((key, value))


def _check_expansion(root: Node | None) -> None:
    """Refuse, in one sentence, a file whose aliases expand to more values than any articles file holds."""
    count, distinct = 0, set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        count += 1
        distinct.add(id(node))
        if count > MAX_NODES:
            if len(distinct) < count // 2:  # the same nodes over and over: aliases
                raise _TooBig(f"its YAML aliases (*name) expand to more than {MAX_NODES:,} values, which no "
                              "articles file needs (an alias bomb?); write the items out or use fewer aliases.")
            raise _TooBig(f"the file expands to more than {MAX_NODES:,} values.")
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


class _Converter:
    """Node tree -> plain values, refusing unsafe tags, bad keys, bombs and deep nests."""

    def __init__(self, loader: yaml.SafeLoader, problems: _Problems):
        self.loader = loader
        self.problems = problems
        self.budget = MAX_NODES

    def mapping(self, node: MappingNode, item: int | None, fld: str | None) -> Iterator[tuple[str, Node]]:
        """(key, value node) pairs of a mapping, merge keys applied; bad keys reported."""
        if node.tag != MAP_TAG:
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag} is not allowed", node.start_mark
            )
        self.loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
                self.problems.add("keys must be plain text.", item, _line(key_node), fld)
                continue
            reason = bad_key_reason(key)
            if reason:
                self.problems.add(reason, item, _line(key_node), fld)
                continue
            yield key, value_node

    def value(self, node: Node, item: int | None, fld: str | None, depth: int = 0) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig(f"the file expands to more than {MAX_NODES:,} values (aliases?).")
        if depth > MAX_DEPTH:
            raise _TooBig(f"the file nests deeper than {MAX_DEPTH} levels.")
        if isinstance(node, ScalarNode):
            if node.tag == "tag:yaml.org,2002:timestamp":
                return node.value  # a date stays the text the user wrote
            try:
                return self.loader.construct_object(node, deep=True)
            except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
                self.problems.add(f"the number {_show(node.value)} has too many digits.", item, _line(node), fld)
                return None
        if node.tag not in (SEQ_TAG, MAP_TAG):
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag} is not allowed", node.start_mark
            )
        if isinstance(node, SequenceNode):
            return [self.value(child, item, fld, depth + 1) for child in node.value]
        assert isinstance(node, MappingNode)
        out = {}
        for key, child in self.mapping(node, item, fld):
            out[key] = self.value(child, item, fld, depth + 1)
        return out


def _read_yaml(text: str, problems: _Problems) -> _Read:
    nothing: _Read = (None, None, {}, [])
    return read_yaml(text, problems, _yaml_document, nothing)


def read_yaml(text: str, problems: _Problems, document: Callable[[Node | None, _Converter, _Problems], T],
              empty: T) -> T:
    """Parse YAML safely (tags, aliases, depth and size checked) and hand its root node to `document`.

    `empty` is what comes back when the text is no usable YAML (the problem noted).
    Articles files and templates (templates.py) are both read through here.
    """
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        problems.add(f"is not valid YAML: {str(exc).splitlines()[0]}.")
        return empty
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problems.add(f"is not valid YAML: {exc.problem or exc.context}.",
                         line=mark.line + 1 if mark else None)
            return empty
        except yaml.YAMLError as exc:
            problems.add(f"is not valid YAML: {str(exc).splitlines()[0]}.")
            return empty
        except RecursionError:  # PyYAML composes nested collections recursively
            problems.add(f"nests deeper than {MAX_DEPTH} levels.")
            return empty
        conv = _Converter(loader, problems)
        try:
            _check_tags(root)
            _check_expansion(root)
            return document(root, conv, problems)
        except _TooBig as exc:
            problems.add(str(exc))
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            problems.add(f"unsupported YAML: {exc.problem}.", line=mark.line + 1 if mark else None)
        return empty
    finally:
        loader.dispose()


def _is_template(top: dict[str, Node], problems: _Problems) -> bool:
    """A template (templates.py) given as an articles file: one sentence rather than a list of unknown keys."""
    if "item" in top and "items" not in top:
        problems.add("is a template (it has 'item:', one article with {placeholders}), not an articles "
                     "file: give it with its rows (a CSV file or a YAML list of rows: `--values` on the command line, "
                     "`values` over HTTP), or save it as a template and submit that by name.")
        return True
    return False


def _yaml_document(root: Node | None, conv: _Converter, problems: _Problems) -> _Read:
    shape = "an articles file is a mapping with 'items:' (and optional 'mode:', 'name:', 'defaults:') or a list of items"
    if root is None:
        problems.add(f"is empty; {shape}.")
        return None, None, {}, []
    mode = name = None
    defaults: dict[str, _Field] = {}
    items_node: Node | None = root
    if isinstance(root, MappingNode):
        top = dict(conv.mapping(root, None, None))
        if "bulk_config" in top and isinstance(top["bulk_config"], MappingNode):
            if len(top) > 1:
                problems.add("'bulk_config' must be the only top-level key.", line=_line(root))
            root = top["bulk_config"]
            top = dict(conv.mapping(root, None, None))
        if _is_template(top, problems):
            return None, None, {}, []
        for key, node in top.items():
            if key not in TOP_KEYS:
                problems.add(f"unknown top-level key '{key}'{suggest(key, TOP_KEYS)}", line=_line(node))
        if "mode" in top:
            mode = _parse_mode(conv.value(top["mode"], None, "mode"), problems, "mode", _line(top["mode"]))
        if "name" in top:
            name = _yaml_name(top["name"], conv, problems)
        if "defaults" in top:
            defaults = _yaml_defaults(top["defaults"], conv, problems)
        items_node = top.get("items")
        if items_node is None:
            problems.add(f"has no 'items:' list; {shape}.", line=_line(root))
            return mode, name, defaults, []
    if not isinstance(items_node, SequenceNode):
        problems.add(f"'items' must be a list; {shape}.", line=_line(items_node))
        return mode, name, defaults, []
    return mode, name, defaults, _yaml_rows(items_node, defaults, conv, problems)


def _yaml_name(node: Node, conv: _Converter, problems: _Problems) -> str | None:
    value = conv.value(node, None, "name")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
        return str(value).strip()[:200]
    problems.add("'name' must be text.", line=_line(node))
    return None


def _yaml_defaults(node: Node, conv: _Converter, problems: _Problems) -> dict[str, _Field]:
    if isinstance(node, MappingNode):
        return {k: _Field(conv.value(v, None, k), _line(v)) for k, v in conv.mapping(node, None, "defaults")}
    if not (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
        problems.add("'defaults' must be a mapping of article fields.", line=_line(node))
    return {}


def _yaml_rows(items_node: SequenceNode, defaults: dict[str, _Field], conv: _Converter,
               problems: _Problems) -> list[tuple[int | None, dict[str, _Field]]]:
    """Each item's line and fields (the defaults, then its own)."""
    rows: list[tuple[int | None, dict[str, _Field]]] = []
    for number, node in enumerate(items_node.value, start=1):
        if not isinstance(node, MappingNode):
            problems.add("must be a mapping of article fields (topic: …, word_count: …).", number, _line(node))
            rows.append((_line(node), {}))
            continue
        fields = dict(defaults)
        for key, child in conv.mapping(node, number, None):
            fields[key] = _Field(conv.value(child, number, key), _line(child))
        rows.append((_line(node), fields))
    return rows


# -- CSV ----------------------------------------------------------------------


def _read_csv(text: str, problems: _Problems) -> _Read:
    rows: list[tuple[int | None, dict[str, _Field]]] = []
    mode: Mode | None = None
    mode_line: int | None = None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        columns = _csv_header(reader, problems)
        if columns is None:
            return None, None, {}, []
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            number = len(rows) + 1
            if len(cells) > len(columns):
                problems.add(f"has {len(cells)} cells but the header has {len(columns)}.", number, line)
            fields: dict[str, _Field] = {}
            for column, cell in zip(columns, cells):
                cell = cell.strip()
                if not cell:
                    continue
                if column == "mode":
                    row_mode = _parse_mode(cell, problems, "mode", line, number)
                    if row_mode and mode and row_mode != mode:
                        problems.add(f"mode '{row_mode.value}' differs from mode '{mode.value}' on line {mode_line}; one mode per bulk job.", number, line, "mode")
                    elif row_mode and not mode:
                        mode, mode_line = row_mode, line
                    continue
                fields[column] = _Field(_csv_value(column, cell, problems, number, line), line)
            rows.append((line, fields))
    except csv.Error as exc:
        problems.add(f"is not valid CSV: {exc}.", line=reader.line_num)
        return None, None, {}, []
    return mode, None, {}, rows


def _csv_header(reader: Any, problems: _Problems) -> list[str] | None:
    """The header's columns, or None (with the problems noted) when it is unusable."""
    header = next(reader, None)
    if header is None:
        problems.add("is empty; a CSV articles file needs a header row (topic,word_count,…).")
        return None
    columns = [h.strip() for h in header]
    known = ARTICLE_FIELDS + ("mode",)
    unknown = [c for c in columns if c and not bad_key_reason(c) and c not in known]
    if len(unknown) > 5:
        # A wide file is one mistake (wrong file, wrong delimiter), not thousands.
        shown = ", ".join(f"'{c[:30]}'" for c in unknown[:5])
        problems.add(f"has {len(unknown):,} unknown columns ({shown}, …); known columns: "
                     f"{', '.join(known)}.", line=1)
        return None
    for index, column in enumerate(columns, start=1):
        if not column:
            problems.add(f"header column {index} is empty.", line=1)
        elif reason := bad_key_reason(column):
            problems.add(reason, line=1)
        elif column not in known:
            problems.add(f"unknown column '{column[:60]}'{suggest(column, known)}", line=1)
        elif columns.index(column) != index - 1:
            problems.add(f"column '{column}' appears twice.", line=1)
        if len(problems.items) > MAX_PROBLEMS:
            break
    return None if problems.items else columns


def _csv_value(column: str, cell: str, problems: _Problems, number: int, line: int) -> Any:
    if column == "keywords":
        return [part.strip() for part in re.split(r"[;,]", cell)]
    if column == "word_count":
        if re.fullmatch(r"[+-]?\d+", cell):
            if len(cell) <= 100:
                return int(cell)
            problems.add(f"the number {_show(cell)} has too many digits.", number, line, "word_count")
            return None
        return cell
    if column == "extra":
        try:
            value = json.loads(cell)
        except RecursionError:
            problems.add(f"nests deeper than {MAX_DEPTH} levels.", number, line, "extra")
            return {}
        except ValueError:
            problems.add("must be a JSON object in a CSV cell, like {\"seo\": true}.", number, line, "extra")
            return {}
        return value
    return cell


# -- one article ----------------------------------------------------------------


def _check_keys(value: Any, problems: _Problems, number: int | None, line: int | None, depth: int = 0) -> None:
    """Refuse '$' and '.' keys at any depth of a value (CSV extra; YAML checked on the way in)."""
    if depth > MAX_DEPTH:
        problems.add(f"nests deeper than {MAX_DEPTH} levels.", number, line, "extra")
        return
    if isinstance(value, dict):
        for key, child in value.items():
            reason = bad_key_reason(str(key))
            if reason:
                problems.add(reason, number, line, "extra")
            _check_keys(child, problems, number, line, depth + 1)
    elif isinstance(value, list):
        for child in value:
            _check_keys(child, problems, number, line, depth + 1)


def _validate_article(fields: dict[str, _Field], mode: Mode, number: int, line: int | None,
                      problems: _Problems, report_missing: bool = True) -> dict[str, Any]:
    article: dict[str, Any] = {}
    required = REQUIRED_FIELD[mode]
    for key, fld in fields.items():
        where = (number, fld.line or line, key)
        if fld.value is None:
            continue  # `tone:` with no value is the same as no tone
        if not _known_field(key, mode, problems, where):
            continue
        value = _validate_field(key, fld.value, problems, where)
        if value is not None:
            article[key] = value
    if not any(name in article for name in required):
        missing = " or ".join(f"'{n}'" for n in required)
        if report_missing and not any(name in fields for name in required):
            problems.add(f"missing {missing} (required in {mode.value} mode).", number, line)
    article.setdefault("word_count", DEFAULT_WORD_COUNT)
    return {k: article[k] for k in ARTICLE_FIELDS if k in article}


Where = tuple[int | None, int | None, str]


def _known_field(key: str, mode: Mode, problems: _Problems, where: Where) -> bool:
    """Whether `key` is an article field of `mode`; if not, a problem noted (a suggestion, or the field's mode)."""
    allowed = REQUIRED_FIELD[mode] + OPTIONAL_FIELDS
    if key in allowed:
        return True
    if key in MODE_OF_FIELD:
        problems.add(f"belongs to mode '{MODE_OF_FIELD[key].value}', but this bulk job's mode is "
                     f"'{mode.value}' (set mode: {MODE_OF_FIELD[key].value} or --mode).", *where)
    else:
        problems.add(f"unknown field{suggest(key, allowed)}", *where)
    return False


def _validate_field(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    """The field's value as stored, or None with a problem noted."""
    check = FIELD_CHECKS.get(key, _text_field)
    return check(key, value, problems, where)


def _word_count(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    low, high = WORD_COUNT_RANGE
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        problems.add(f"must be a whole number from {low} to {high}, got the quoted text {_show(value)}: write it "
                     f"without quotes ({value.strip()}).", *where)
        return None
    problems.add(f"must be a whole number from {low} to {high}, got {_show(value)}.", *where)
    return None


def _keywords(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    if isinstance(value, str):
        value = [part.strip() for part in re.split(r"[;,]", value)]
    if not isinstance(value, list) or not all(isinstance(k, (str, int, float)) and not isinstance(k, bool) for k in value):
        problems.add("must be a list of keywords (or one text with ';' or ',' between them).", *where)
        return None
    words = [str(k).strip() for k in value if str(k).strip()]
    if not 1 <= len(words) <= MAX_KEYWORDS:
        problems.add(f"needs 1 to {MAX_KEYWORDS} non-empty keywords, got {len(words)}.", *where)
        return None
    if any(len(w) > 100 for w in words):
        problems.add("each keyword must be at most 100 characters.", *where)
        return None
    return words


def _extra(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    if not isinstance(value, dict):
        problems.add("must be a mapping, passed to the content service as is.", *where)
        return None
    _check_keys(value, problems, where[0], where[1])
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        problems.add("must hold only text, numbers, booleans, lists and mappings.", *where)
        return None
    except UnicodeEncodeError:
        problems.add("holds text that is not Unicode (a lone surrogate).", *where)
        return None
    if size > MAX_EXTRA_BYTES:
        problems.add(f"is {size:,} bytes as JSON; an item's extra may hold at most {MAX_EXTRA_BYTES:,} "
                     "(16 KiB).", *where)
        return None
    return value


def stored_size(articles: list[dict[str, Any]]) -> int:
    """The bytes the articles take as stored (their JSON, UTF-8): what a job's size caps and quotas count."""
    return sum(len(json.dumps(article, ensure_ascii=False).encode()) for article in articles)


def stored_bound(request_bytes: int) -> int:
    return max(STORED_FLOOR, STORED_FACTOR * request_bytes)


def check_stored(articles: list[dict[str, Any]], request_bytes: int, problems: _Problems) -> None:
    """A job never stores more than a few times its request (design.md, "Size caps"): one problem if it would."""
    size, bound = stored_size(articles), stored_bound(request_bytes)
    if size > bound:
        problems.add(f"its {len(articles)} items come to {size:,} bytes as stored (each item holds its own copy "
                     f"of the defaults, aliases and placeholders it uses); a job may store at most {bound:,}: "
                     f"{STORED_FACTOR} times the request's {request_bytes:,} bytes, or {STORED_FLOOR:,} (64 KiB) "
                     "if that is more. Put long shared text in fewer items.")


def _item_id(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        text = str(value).strip()
        if len(text) <= 100:
            return text
    problems.add(f"must be a short non-empty text or number (at most 100 characters), got {_show(value)}.", *where)
    return None


def _source_url(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    if isinstance(value, str) and re.match(r"https?://[^\s/]+", value.strip()):
        return value.strip()
    problems.add(f"must be an http:// or https:// URL, got {_show(value)}.", *where)
    return None


def _text_field(key: str, value: Any, problems: _Problems, where: Where) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        problems.add(f"must be non-empty text, got {_show(value)}.", *where)
        return None
    limit = TEXT_LIMITS.get(key, TEXT_LIMIT)
    if len(value) > limit:
        problems.add(f"is {len(value):,} characters; at most {limit:,} are allowed.", *where)
        return None
    if "\x00" in value:
        problems.add("contains a NUL character.", *where)
        return None
    return value.strip()


#: How each field that is not plain text is checked.
FIELD_CHECKS = {"word_count": _word_count, "keywords": _keywords, "extra": _extra, "id": _item_id,
                "source_url": _source_url}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


# -- shared with templates.py: a template's rows are read and checked by the same code as any articles file ---

Problems = _Problems
FieldValue = _Field
Converter = _Converter
read_text = _read_text
node_line = _line
parse_mode = _parse_mode
known_field = _known_field
validate_field = _validate_field
validate_defaults = _validate_defaults
validate_articles = _articles
csv_value = _csv_value
