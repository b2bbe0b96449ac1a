"""The operations on single items (articles), as a library: resolve a short id, show, retry, cancel.

Plain values in, plain data out, `BulkgenError`s for the caller to map (as
`jobs.py`). The state rules are design.md, "Item state rules": each action
reads the item, decides, and changes it with one conditional write whose
condition is the status it read; if the item changed meanwhile, it decides
again from the new state.

`export` (and with it yaml, about 15 ms of a cold start) is imported by the functions that write front
matter, not with the module: `status --items` loads this module for its short ids.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from bulkgen_cli.content import content_text
from bulkgen_cli.core.errors import InvalidTransition, NotFound, UsageError
from bulkgen_cli.ops import control
from bulkgen_cli.core.model import BulkJob, BulkStatus, Counts, Item, ItemStatus, turned_down, utcnow
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import Store
from bulkgen_cli.core.text import quoted, visible

if TYPE_CHECKING:
    import datetime as dt

#: How many candidates an ambiguous prefix names.
CANDIDATES = 5
#: How often an action decides again when the item keeps changing under it.
ATTEMPTS = 5
_HEX = re.compile(r"[0-9a-f]+")


class ItemAction(str, Enum):
    retry = "retry"
    cancel = "cancel"


#: The item statuses each action starts from; and those in which it already holds (a no-op, exit 0).
FROM = {ItemAction.retry: rules.ITEM_RETRY_FROM, ItemAction.cancel: rules.ITEM_CANCEL_FROM}
ALREADY = {ItemAction.retry: (ItemStatus.queued,), ItemAction.cancel: (ItemStatus.cancelled,)}
#: Why an action is refused for an item in a state (exit 4).
REFUSED = {
    ItemAction.retry: "only a failed or cancelled item can be retried",
    ItemAction.cancel: "only a queued item or one in flight can be cancelled",
}


@dataclass(frozen=True)
class Result:
    item: Item
    bulk: BulkJob
    short_id: str
    #: False when the action already held (a no-op)
    changed: bool
    previous: ItemStatus
    #: True when this action recorded its job's end (the job's last pending item was cancelled)
    ended_now: bool = False


def check_ref(ref: str) -> str:
    """An item reference as typed, lower-cased: a whole id or a prefix of it (UsageError otherwise)."""
    prefix = ref.strip().lower()
    if not _HEX.fullmatch(prefix) or len(prefix) > rules.ID_LENGTH:
        raise UsageError(f"{quoted(ref)} is not an item id: ids are hexadecimal (0-9, a-f), at most "
                         f"{rules.ID_LENGTH} digits",
                         cli=", as `bulkgen status BULK_ID --items` shows them.",
                         http=", as GET /api/bulk-generate/{id} shows them.")
    if len(prefix) < rules.SHORT_ID_MIN:
        raise UsageError(f"item id {quoted(ref)} is too short: give at least {rules.SHORT_ID_MIN} of its digits",
                         cli=" (`bulkgen status BULK_ID --items` shows them).",
                         http=" (GET /api/bulk-generate/{id} shows them).")
    return prefix


def resolve(store: Store, ref: str, user: str, all_users: bool = False) -> Item:
    """The one item `user` may see whose id starts with `ref` (as git takes a commit's prefix).

    NotFound (exit 3) when none does (another user's item counts as none);
    UsageError (exit 2) when several do, naming a few.
    """
    prefix = check_ref(ref)
    found = store.find_items(prefix, None if all_users else user, CANDIDATES + 1)
    if not found:
        bulk = store.get_bulk(prefix)
        if bulk is not None and (all_users or bulk.userId == user):
            raise NotFound(f"no item {quoted(ref)} for this user: that is a bulk job",
                           cli=f": `bulkgen status {prefix}` shows it (--items lists its items).",
                           http=f": GET /api/bulk-generate/{prefix} shows it with its items.")
        raise NotFound(f"no item {quoted(ref)} for this user",
                       cli=" (`bulkgen status BULK_ID --items` lists a job's items; --all-users to look wider).",
                       http=" (GET /api/bulk-generate/{id} lists a job's items).")
    if len(found) > 1:
        names = ", ".join(f"{_candidate(found, n)} (#{i.queue_position} {quoted(i.label, 30)} of bulk job "
                          f"{i.bulk_job_id})" for n, i in enumerate(found[:CANDIDATES]))
        more = ", and more" if len(found) > CANDIDATES else ""
        raise UsageError(f"item id {quoted(ref)} is ambiguous: {names}{more} all start with it; "
                         "give more of its digits.")
    return found[0]


def _candidate(found: list[Item], n: int) -> str:
    """Candidate `n` of an ambiguous prefix (in id order): 12 digits, or as many as tell it from its neighbours."""
    neighbours = (found[n - 1].id if n else None, found[n + 1].id if n + 1 < len(found) else None)
    shown = rules.short_id(found[n].id, neighbours, shown=12)
    return shown if len(shown) == len(found[n].id) else shown + "…"


def short_ids(store: Store, items: list[Item]) -> dict[str, str]:
    """Each item's short id: its first 8 characters, more where a neighbour in the store shares them."""
    neighbours = store.item_neighbours([i.id for i in items])
    return {i.id: rules.short_id(i.id, neighbours[i.id]) for i in items}


def short_id(store: Store, item: Item) -> str:
    return short_ids(store, [item])[item.id]


def _bulk(store: Store, item: Item) -> BulkJob:
    bulk = store.get_bulk(item.bulk_job_id)
    if bulk is None:  # an item without its job is invisible (a submit that died half-way on MongoDB)
        raise NotFound(f"no item {item.id} for this user.")
    return bulk


def apply(store: Store, action: ItemAction, ref: str, user: str, all_users: bool = False,
          now: dt.datetime | None = None, notifier: control.Notifies | None = None) -> Result:
    """Retry or cancel one item `user` may see, by the state rules; a cancel that ends its job notifies at once."""
    item = resolve(store, ref, user, all_users)
    short = short_id(store, item)
    for _ in range(ATTEMPTS):
        status, bulk = ItemStatus(item.status), _bulk(store, item)
        if status in ALREADY[action]:
            # Repeating it finishes one that died half-way (MongoDB: the item was written, its job not yet).
            if action is ItemAction.retry and bulk.status == BulkStatus.completed.value:
                counts = store.retry_item(item.id, status, now or utcnow())
            else:
                counts = store.refresh_counters(bulk.id, now or utcnow())
            ended = counts is not None and counts.ended_now
            return _done(store, item, short, False, status, ended, notifier)
        _refuse_if(action, item, bulk, short)
        counts = _write(store, action, item, status, now or utcnow())
        if counts is not None:
            return _done(store, item, short, True, status, counts.ended_now, notifier)
        current = store.get_item(item.id)  # it changed under us (a processor or another command): decide again
        if current is None:
            raise NotFound(f"no item {item.id} for this user.")
        item = current
    raise InvalidTransition(f"item {short} kept changing state; try again.")


def _write(store: Store, action: ItemAction, item: Item, status: ItemStatus, now: dt.datetime) -> Counts | None:
    if action is ItemAction.retry:
        return store.retry_item(item.id, status, now)
    return store.cancel_item(item.id, status, now)


def _refuse_if(action: ItemAction, item: Item, bulk: BulkJob, short: str) -> None:
    """InvalidTransition (exit 4), saying why, when `action` is not allowed for the item now."""
    where = f"item {short} (#{item.queue_position} of bulk job {bulk.id})"
    if ItemStatus(item.status) not in FROM[action]:
        raise InvalidTransition(f"cannot {action.value} {where}: it is {item.status}; {REFUSED[action]}.")
    if action is ItemAction.retry and bulk.status == BulkStatus.cancelled.value:
        raise InvalidTransition(f"cannot retry {where}: its bulk job was cancelled, and cancel is final.")
    completed = bulk.status == BulkStatus.completed.value  # then an item waits for the end's notification too
    if action is ItemAction.retry and completed and not rules.retry_failed_allowed(bulk.status, bulk.outbox):
        raise InvalidTransition(
            f"cannot retry {where} yet: the notification of its bulk job's last end is still being delivered; "
            "a processor retries it within about a minute.",
            cli=f" `bulkgen status {bulk.id}` shows its notifications.",
            http=f" GET /api/bulk-generate/{bulk.id} shows its notifications.")


def _done(store: Store, item: Item, short: str, changed: bool, previous: ItemStatus, ended_now: bool,
          notifier: control.Notifies | None) -> Result:
    current, bulk = store.get_item(item.id) or item, _bulk(store, item)
    if ended_now:
        control.notify_end(store, bulk.id, notifier)
        bulk = store.get_bulk(bulk.id) or bulk
    return Result(current, bulk, short, changed, previous, ended_now)


# -- show -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    item: Item
    bulk: BulkJob
    short_id: str

    @property
    def text(self) -> str | None:
        """The article's text as stored: a completed item's, or the one the quality gate turned down (else None)."""
        kept = self.item.status == ItemStatus.completed.value or turned_down(self.item)
        if not kept or self.item.result is None:
            return None
        return content_text(self.item.result.get("content"))


def show(store: Store, ref: str, user: str, all_users: bool = False) -> Shown:
    item = resolve(store, ref, user, all_users)
    return Shown(item, _bulk(store, item), short_id(store, item))


def verdict(item: Item) -> dict[str, Any] | None:
    """The quality gate's verdict on the item, when it has one, as plain data (passed, reasons)."""
    found = getattr(item, "verdict", None)
    if found is None:
        return None
    if dataclasses.is_dataclass(found) and not isinstance(found, type):
        return dataclasses.asdict(found)
    return dict(found) if isinstance(found, dict) else {"passed": bool(found), "reasons": []}


def record(shown: Shown) -> dict[str, Any]:
    """The show record: the item as `status --json` has it, plus what `show` prints, and the text."""
    from bulkgen_cli.ops.export import front_matter
    from bulkgen_cli.ops.documents import item_dict

    item, result = shown.item, shown.item.result or {}
    doc = item_dict(item, full=True)
    doc.update(short_id=shown.short_id, bulk_job_name=shown.bulk.name, request_seconds=result.get("seconds"),
               waited_seconds=result.get("waited"), front_matter=front_matter(shown.bulk, item))
    found = verdict(item)
    if found is not None:
        doc["verdict"] = found
    doc["text"] = shown.text
    return doc


def facts(shown: Shown) -> list[tuple[str, str]]:
    """What `show` prints above the text, as (label, value) rows; values shown as they are (text.visible)."""
    from bulkgen_cli.ops.export import front_matter
    from bulkgen_cli.ops.documents import when

    item, result = shown.item, shown.item.result or {}
    rows = [("Item", f"{shown.short_id}  ({item.id})"),
            ("Bulk job", f"{shown.bulk.id}  {shown.bulk.name}, #{item.queue_position}"),
            ("Status", item.status)]
    found = verdict(item)
    if found is not None:
        reasons = "; ".join(str(r) for r in found.get("reasons") or [])
        state = found.get("status") or ("passed" if found.get("passed") else "flagged")  # quality.Verdict.to_dict
        rows.append(("Verdict", str(state) + (f": {reasons}" if reasons else "")))
    # Said above (Status, Verdict) or below (Error); a field with no value is left out, not shown as a dash.
    rows += [(name, _value(value)) for name, value in front_matter(shown.bulk, item).items()
             if name not in ("status", "bulk_job_id", "queue_position", "error", "quality", "quality_reasons")
             and value is not None]
    retries = f"{item.retry_count} {'retry' if item.retry_count == 1 else 'retries'} over its life"
    rows += [("Tries", f"{item.attempts} in this round; {retries}"),
             ("Started", when(item.started_at)), ("Ended", when(item.completed_at))]
    if "seconds" in result:
        rows.append(("Request", f"{result['seconds']:.1f}s (after waiting {result.get('waited') or 0:.1f}s)"))
    if item.error:
        rows.append(("Error", item.error))
    if turned_down(item) and shown.text is not None:
        rows.append(("Article", "turned down by the quality gate; kept, shown below"))
    return [(label, visible(value)) for label, value in rows]


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):  # the service's meta: as JSON, not as a Python dict
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)
