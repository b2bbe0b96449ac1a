"""What a user does to a bulk job: pause, resume, cancel, retry-failed (design.md, "States").

Each action reads the job, decides from the state rules, and changes it with a
conditional write; if another process changed the job in between, the write
matches nothing and the action decides again from the new state. Nothing is
ever read-then-written unconditionally.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from bulkgen_cli.core.errors import InvalidTransition, NotFound
from bulkgen_cli.core.model import BULK_TRANSITIONS, BulkJob, BulkStatus, utcnow
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import Store
from bulkgen_cli.core.text import quoted

ATTEMPTS = 5


class Notifies(Protocol):
    """What delivers a job's end notifications at once (delivery.notify.Notifier): the front end builds it from
    its settings and passes it in; no operation builds one."""

    def deliver(self, bulk: BulkJob) -> None: ...


def notify_end(store: Store, bulk_id: str, notifier: Notifies | None) -> None:
    """Whoever records an end delivers its notifications at once (a processor retries what fails, and takes
    what `notifier` cannot send, such as e-mail without SMTP settings); no notifier, the processor's scan does."""
    current = store.get_bulk(bulk_id) if notifier is not None else None
    if notifier is not None and current is not None:
        notifier.deliver(current)


class Action(str, Enum):
    pause = "pause"
    resume = "resume"
    cancel = "cancel"
    retry_failed = "retry-failed"


#: The states in which an action already holds: repeating it is a no-op.
ALREADY = {
    Action.pause: (BulkStatus.paused,),
    Action.resume: (BulkStatus.queued, BulkStatus.processing),
    Action.cancel: (BulkStatus.cancelled,),
    Action.retry_failed: (),
}

#: Why an action is refused in a state (exit 4).
REFUSED = {
    (Action.pause, BulkStatus.completed): "it has completed; there is nothing left to pause",
    (Action.pause, BulkStatus.cancelled): "it was cancelled, and cancel is final",
    (Action.resume, BulkStatus.completed): "it has completed (retry-failed runs its failed items again)",
    (Action.resume, BulkStatus.cancelled): "it was cancelled, and cancel is final",
    (Action.cancel, BulkStatus.completed): "it has already completed",
    (Action.retry_failed, BulkStatus.queued): "it has not completed yet (retry-failed waits for the end)",
    (Action.retry_failed, BulkStatus.processing): "it has not completed yet (retry-failed waits for the end)",
    (Action.retry_failed, BulkStatus.paused): "it is paused, not completed (resume it first)",
    (Action.retry_failed, BulkStatus.cancelled): "it was cancelled, and cancel is final",
}


@dataclass(frozen=True)
class Result:
    bulk: BulkJob
    #: False when the action already held (a no-op)
    changed: bool
    previous: BulkStatus
    #: True when this action recorded the job's end (a cancel)
    ended_now: bool = False


def apply(store: Store, action: Action, bulk_id: str, now: dt.datetime | None = None) -> Result:
    """Do `action` to the bulk job. Raises NotFound or InvalidTransition."""
    for _ in range(ATTEMPTS):
        bulk = _get(store, bulk_id)
        status = BulkStatus(bulk.status)
        if status in ALREADY[action]:
            return Result(bulk, False, status)
        if (action, status) in REFUSED:
            raise InvalidTransition(f"cannot {action.value} bulk job {bulk.id}: {REFUSED[action, status]}.")
        when = now or utcnow()
        done, ended = _do(store, action, bulk, status, when)
        if done:
            return Result(_get(store, bulk_id), True, status, ended)
        # The job changed under us (a processor or another command): decide again.
    raise InvalidTransition(f"bulk job {bulk_id} kept changing state; try again.")


def _get(store: Store, bulk_id: str) -> BulkJob:
    bulk = store.get_bulk(bulk_id)
    if bulk is None:
        raise NotFound(f"no bulk job {quoted(bulk_id)}.")
    return bulk


def _do(store: Store, action: Action, bulk: BulkJob, status: BulkStatus, now: dt.datetime) -> tuple[bool, bool]:
    """Make the change if the job is still in `status`: (changed, ended_now)."""
    if action is Action.pause:
        return store.set_bulk_state(bulk.id, [status], BulkStatus.paused, now), False
    if action is Action.resume:
        # Back to its old place: FIFO goes by creation time, which a pause does not touch.
        target = BulkStatus.processing if bulk.started_at else BulkStatus.queued
        assert target in BULK_TRANSITIONS[status]
        changed = store.set_bulk_state(bulk.id, [status], target, now)
        if changed:
            # Its last item may have finished while it was paused.
            store.refresh_counters(bulk.id, now)
        return changed, False
    if action is Action.cancel:
        changed = store.cancel_bulk(bulk.id, now)
        store.refresh_counters(bulk.id, now)
        return changed, changed
    # retry-failed
    if not rules.retry_failed_allowed(bulk.status, bulk.outbox):
        raise _notification_open(bulk.id)
    requeued = store.retry_failed(bulk.id, now)
    if requeued:
        store.refresh_counters(bulk.id, now)
        return True, False
    current = store.get_bulk(bulk.id)
    if current is not None and current.status == BulkStatus.completed.value:
        if not rules.retry_failed_allowed(current.status, current.outbox):  # another round ended meanwhile
            raise _notification_open(bulk.id)
        raise InvalidTransition(f"cannot retry-failed bulk job {bulk.id}: it has no failed items.")
    return False, False  # it left `completed` meanwhile: decide again


def _notification_open(bulk_id: str) -> InvalidTransition:
    # A new round would end with a new outbox; the last end's event is sent first.
    return InvalidTransition(
        f"cannot retry-failed bulk job {bulk_id} yet: the notification of its last end is still being "
        "delivered; a processor retries it within about a minute.",
        cli=f" `bulkgen status {bulk_id}` shows its notifications.",
        http=f" GET /api/bulk-generate/{bulk_id} shows its notifications.")
