"""The JSON documents: a bulk job, its progress, its items, a --split group (docs/settings.md, "JSON output").

`status --json`, `show --json` and the HTTP answers are built here, so the CLI and the server say the same;
the field names are a stable interface. Times as the user reads them (`when`) live here too, for the
operations that describe a record in words (`items.facts`). Nothing here imports rich, typer or a front end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from bulkgen_cli.core.model import EVERY_DOCUMENT, FULL_DOCUMENT, REQUIRED_FIELD, BulkJob, Item, Mode, iso, utcnow
from bulkgen_cli.core.text import duration
from bulkgen_cli.delivery.notify import mask_channel


def document_fields(record: type, full: bool = False) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a `BulkJob` or an `Item` its JSON document shows, in order (model.declared)."""
    shown = (EVERY_DOCUMENT, FULL_DOCUMENT) if full else (EVERY_DOCUMENT,)
    return tuple(f for f in dataclasses.fields(record) if f.metadata.get("document") in shown)


def json_value(value: Any) -> Any:
    """A field's value as its JSON document has it: a time as ISO 8601 UTC, a list copied."""
    if isinstance(value, dt.datetime):
        return iso(value)
    return list(value) if isinstance(value, list) else value


def bulk_dict(bulk: BulkJob, full: bool = False) -> dict[str, Any]:
    """A bulk job's document; `full` adds what only `status` shows (`notified_at`)."""
    out = {f.name: json_value(getattr(bulk, f.name)) for f in document_fields(BulkJob, full)}
    if bulk.status == "paused":  # no ETA while paused
        out["estimated_completion"] = None
    return out


def progress_dict(bulk: BulkJob) -> dict[str, Any]:
    return {
        "total": bulk.total_items,
        "completed": bulk.completed_items,
        "failed": bulk.failed_items,
        "cancelled": bulk.cancelled_items,
        "remaining": bulk.pending,
        "percentage": bulk.percentage,
    }


def item_dict(item: Item, full: bool = False) -> dict[str, Any]:
    """An item's document: its fields, its `item_id` after its id, its mode's main field after its status."""
    out: dict[str, Any] = {}
    for f in document_fields(Item, full):
        out[f.name] = json_value(getattr(item, f.name))
        if f.name == "id":
            out["item_id"] = item.item_id
        elif f.name == "status":
            main = REQUIRED_FIELD[Mode(item.mode)]
            out.update((name, item.article.get(name)) for name in main if name in item.article or name == main[0])
    return out


def notifications(bulk: BulkJob) -> list[dict[str, Any]]:
    """The latest end's delivery state per channel (passwords masked)."""
    steps = (bulk.outbox or {}).get("steps", [])
    return [
        {"channel": mask_channel(s["channel"]), "state": s["state"], "attempts": s["attempts"],
         "last_error": s["last_error"], "sent_at": s["sent_at"]}
        for s in steps
    ]


def status_document(bulk: BulkJob, items: list[Item]) -> dict[str, Any]:
    return {"bulk_job": bulk_dict(bulk, full=True), "progress": progress_dict(bulk),
            "jobs": [item_dict(i) for i in items], "notifications": notifications(bulk)}


def group_document(group_id: str, bulks: list[BulkJob]) -> dict[str, Any]:
    """A --split group: its jobs in file order, and totals over them."""
    total = sum(b.total_items for b in bulks)
    pending = sum(b.pending for b in bulks)
    return {
        "group_id": group_id,
        "bulk_jobs": [bulk_dict(b) for b in bulks],
        "progress": {
            "total": total,
            "completed": sum(b.completed_items for b in bulks),
            "failed": sum(b.failed_items for b in bulks),
            "cancelled": sum(b.cancelled_items for b in bulks),
            "remaining": pending,
            "percentage": 100 if not total else (total - pending) * 100 // total,
        },
    }


def when(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """A time as the user reads it: local clock time, with 'in 5m' / '3m ago'."""
    if value is None:
        return "—"
    now = now or utcnow()
    local = value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    delta = (value - now).total_seconds()
    return f"{local} ({'in ' + duration(delta) if delta >= 0 else duration(-delta) + ' ago'})"
