"""Articles files for tests, written by a YAML or CSV writer rather than put together by hand.

    write_articles(tmp_path / "f.yaml", ["Bad [status:400]", "T1", ...], name="Demo")
    write_articles(tmp_path / "k.yaml", [{"keywords": ["a", "b"]}, ...], mode="keywords")
    write_articles(tmp_path / "a.csv", [{"topic": "T0", "word_count": 800}, ...])

A test about the reader itself (broken YAML, a BOM, merge keys, hostile files) writes its bytes by hand.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

import yaml


class _Dumper(yaml.SafeDumper):
    """safe_dump, but an article repeated in the list is written out again, never as an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_articles(
    path: str | Path,
    articles: Iterable[str | dict[str, Any]],
    name: str | None = None,
    mode: str | None = None,
    defaults: dict[str, Any] | None = None,
    fmt: str | None = None,
) -> Path:
    """Write an articles file; a plain string is an article with that topic. Returns the path.

    fmt is "yaml" or "csv", by default from the file's suffix. YAML keeps the reader's key order
    (name, mode, defaults, items), an article's fields in their order, and each text or number field
    on a line of its own, so "item N (line L)" is easy to count. In CSV a list is one cell of
    comma-separated text and a mapping a JSON object.
    """
    path = Path(path)
    items = [{"topic": a} if isinstance(a, str) else dict(a) for a in articles]
    fmt = fmt or ("csv" if path.suffix == ".csv" else "yaml")
    if fmt == "yaml":
        top = {"name": name, "mode": mode, "defaults": defaults}
        doc = {key: value for key, value in top.items() if value is not None} | {"items": items}
        text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1_000_000)
    elif fmt == "csv":
        if name is not None or defaults is not None:
            raise ValueError("a CSV articles file has no name or defaults")
        text = _csv(items, mode)
    else:
        raise ValueError(f"fmt must be 'yaml' or 'csv', got {fmt!r}")
    path.write_text(text, encoding="utf-8")
    return path


def _csv(items: list[dict[str, Any]], mode: str | None) -> str:
    columns = (["mode"] if mode else []) + list(dict.fromkeys(key for item in items for key in item))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow(({"mode": mode} if mode else {}) | {k: _cell(v) for k, v in item.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A list is text split on commas (keywords); a mapping is a JSON object (extra)."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value
