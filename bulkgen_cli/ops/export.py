"""Results -> files: one Markdown file per article, or JSON Lines.

File names come from the item's position and its id or title, reduced to word
characters and dashes: no separator, dot-dot or absolute path can appear, and
every path is checked to sit directly in the output folder before writing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from bulkgen_cli.content import content_text, count_words
from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.model import REQUIRED_FIELD, BulkJob, Item, ItemStatus, Mode

SLUG_MAX = 60
#: How much of a file is read to see whose it is.
HEAD_BYTES = 4096


def slugify(text: str) -> str:
    """Lower-case words joined by dashes; letters of any script kept, everything else dropped."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s-]", "", text)
    text = re.sub(r"[\s_-]+", "-", text).strip("-")
    return text[:SLUG_MAX].strip("-") or "article"


def title_of(item: Item) -> str:
    content = (item.result or {}).get("content")
    if isinstance(content, dict) and isinstance(content.get("title"), str) and content["title"].strip():
        return content["title"].strip()
    return str(item.article.get("title") or item.label or f"Article {item.queue_position}").strip()


def file_name(item: Item, suffix: str = ".md") -> str:
    stem = item.item_id or title_of(item)
    return f"{item.queue_position:02d}-{slugify(stem)}{suffix}"


def front_matter(bulk: BulkJob, item: Item) -> dict[str, Any]:
    result = item.result or {}
    content = result.get("content")
    meta: dict[str, Any] = {"title": title_of(item)}
    for name in REQUIRED_FIELD[Mode(item.mode)]:
        if name in item.article:
            meta[name] = item.article[name]
    meta["mode"] = item.mode
    meta["word_count"] = item.article.get("word_count")
    if item.status == ItemStatus.completed.value or content is not None:
        meta["words"] = result.get("words", count_words(content_text(content)))
    for name in ("tone", "language", "audience"):
        if item.article.get(name):
            meta[name] = item.article[name]
    meta.update(
        status=item.status,
        generated_at=result.get("generated_at"),
        generator=result.get("generator"),
        bulk_job_id=bulk.id,
        item_id=item.item_id,
        queue_position=item.queue_position,
    )
    if item.status != ItemStatus.completed.value:
        meta["error"] = item.error
    if item.verdict is not None and content is not None:  # the quality gate's verdict on this article
        meta["quality"] = item.verdict.get("status")
        if item.verdict.get("reasons"):
            meta["quality_reasons"] = list(item.verdict["reasons"])
    if isinstance(content, dict) and isinstance(content.get("meta"), dict):
        meta["meta"] = content["meta"]
    return meta


def markdown(bulk: BulkJob, item: Item) -> str:
    head = yaml.safe_dump(front_matter(bulk, item), sort_keys=False, allow_unicode=True, width=1000)
    # A failed item may keep the article the quality gate turned down: it is written, under its error.
    body = content_text((item.result or {}).get("content"))
    if not body and item.status != ItemStatus.completed.value:
        body = f"This article was not generated: {item.error or item.status}.\n"
    return f"---\n{head}---\n\n{body.rstrip()}\n"


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)


def _owner(path: Path) -> str | None:
    """The bulk job id in an existing file's front matter, if it is one of ours."""
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    match = re.search(r"^bulk_job_id: '?([0-9a-f]{24})'?$", head, re.MULTILINE)
    return match.group(1) if match else None


def write_markdown(bulk: BulkJob, items: list[Item], out: Path, include_failed: bool = False,
                   force: bool = False) -> Written:
    """Write one file per completed item (and failed ones if asked) into `out`."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; Markdown results go into a folder.")
    folder = out.resolve()
    chosen = [i for i in items if i.status == ItemStatus.completed.value
              or (include_failed and i.status in (ItemStatus.failed.value, ItemStatus.cancelled.value))]
    plan = []
    conflicts = []
    for item in chosen:
        path = folder / file_name(item)
        if path.parent != folder:  # cannot happen with slugify; checked all the same
            raise UsageError(f"refusing to write outside {out}: {path}")
        if path.exists() and not force and _owner(path) != bulk.id:
            conflicts.append(path.name)
        plan.append((item, path))
    if conflicts:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise UsageError(f"{out} already holds files of another job or not from bulkgen ({shown}); "
                         "nothing was written. Use another --out, or --force to overwrite.")
    folder.mkdir(parents=True, exist_ok=True)
    written = Written(skipped=[i for i in items if i not in chosen])
    for item, path in plan:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(markdown(bulk, item), encoding="utf-8")
        tmp.replace(path)
        written.files.append(path)
    return written


def jsonl_record(bulk: BulkJob, item: Item) -> dict[str, Any]:
    result = item.result or {}
    content = result.get("content")
    return {
        "bulk_job_id": bulk.id,
        "id": item.id,
        "item_id": item.item_id,
        "queue_position": item.queue_position,
        "status": item.status,
        "mode": item.mode,
        "article": item.article,
        "title": title_of(item),
        "content": content,
        "text": content_text(content) if content is not None else None,
        "words": result.get("words"),
        "generator": result.get("generator"),
        "generated_at": result.get("generated_at"),
        "error": item.error,
        "verdict": item.verdict,
        "attempts": item.attempts,
        "retry_count": item.retry_count,
    }


def write_jsonl(bulk: BulkJob, items: list[Item], out: TextIO) -> int:
    for item in items:
        out.write(json.dumps(jsonl_record(bulk, item), ensure_ascii=False) + "\n")
    return len(items)
