"""The JSON documents: a bulk job, its progress, its items, a --split group (README, "JSON output").

`status --json`, `show --json` and the HTTP answers are built here, so the CLI and the server say the same;
the field names are a stable interface. Times as the user reads them (`when`) live here too, for the
operations that describe a record in words (`items.facts`). Nothing here imports rich, typer or a front end.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bulkgen_cli.core.model import REQUIRED_FIELD, BulkJob, Item, Mode, iso, utcnow
from bulkgen_cli.core.text import duration
from bulkgen_cli.delivery.notify import mask_channel


def bulk_dict(bulk: BulkJob) -> dict[str, Any]:
    return {
        "id": bulk.id,
        "name": bulk.name,
        "mode": bulk.mode,
        "status": bulk.status,
        "userId": bulk.userId,
        "total_items": bulk.total_items,
        "completed_items": bulk.completed_items,
        "failed_items": bulk.failed_items,
        "cancelled_items": bulk.cancelled_items,
        "created_at": iso(bulk.created_at),
        "started_at": iso(bulk.started_at),
        "completed_at": iso(bulk.completed_at),
        "estimated_completion": None if bulk.status == "paused" else iso(bulk.estimated_completion),
        "error_summary": list(bulk.error_summary),
        "priority": bulk.priority,
        "not_before": iso(bulk.not_before),
        "group_id": bulk.group_id,
        "quality": bulk.quality,
        "quality_ratio": bulk.quality_ratio,
        "flagged_items": bulk.flagged_items,
        "turned_down_items": bulk.turned_down_items,
        "quality_summary": list(bulk.quality_summary),
    }


def progress_dict(bulk: BulkJob) -> dict[str, Any]:
    return {
        "total": bulk.total_items,
        "completed": bulk.completed_items,
        "failed": bulk.failed_items,
        "cancelled": bulk.cancelled_items,
        "remaining": bulk.pending,
        "percentage": bulk.percentage,
    }


def item_dict(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item.id, "item_id": item.item_id, "queue_position": item.queue_position,
                           "status": item.status}
    for name in REQUIRED_FIELD[Mode(item.mode)]:
        if name in item.article or name == REQUIRED_FIELD[Mode(item.mode)][0]:
            out[name] = item.article.get(name)
    out.update(retry_count=item.retry_count, attempts=item.attempts, error=item.error, verdict=item.verdict)
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
    doc: dict[str, Any] = {"bulk_job": bulk_dict(bulk), "progress": progress_dict(bulk), "jobs": [item_dict(i) for i in items]}
    doc["bulk_job"]["notified_at"] = iso(bulk.notified_at)
    doc["notifications"] = notifications(bulk)
    return doc


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
