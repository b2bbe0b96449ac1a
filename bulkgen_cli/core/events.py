"""What processors and watchers report: plain records the CLI (or a server) renders."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bulkgen_cli.core.model import BulkJob, Item, Outcome


@dataclass(frozen=True)
class ItemStarted:
    item: Item
    bulk: BulkJob


@dataclass(frozen=True)
class ItemFinished:
    item: Item
    bulk: BulkJob  # counters as refreshed after this item
    outcome: Outcome
    #: time in requests to the service (every try of this claim)
    seconds: float
    #: time spent waiting before them: the pacing delay, retry backoff, a 429 cooldown
    waited: float = 0.0


@dataclass(frozen=True)
class ItemRetrying:
    item: Item
    error: str
    wait: float
    charged: bool  # False for a 429: the try is not counted


@dataclass(frozen=True)
class ItemLost:
    """The item stopped being this processor's mid-request: cancelled, or its lease passed on."""

    item: Item
    reason: str


@dataclass(frozen=True)
class BulkEnded:
    bulk: BulkJob


@dataclass(frozen=True)
class Snapshot:
    """What another processor is doing, for a run that attached instead of processing."""

    bulks: list[BulkJob]
    in_flight: list[Item]
    holder: str


@dataclass(frozen=True)
class Waiting:
    reason: str
    seconds: float


@dataclass(frozen=True)
class Stopping:
    """A stop was asked for (Ctrl-C, SIGTERM): what happens now."""

    message: str


@dataclass(frozen=True)
class JobChanged:
    """A job this processor worked on changed state under it: paused, resumed or cancelled by someone else."""

    bulk: BulkJob


@dataclass(frozen=True)
class Queue:
    """The jobs waiting or under way when a run starts, oldest first: the live view shows a row for each."""

    bulks: list[BulkJob]


@dataclass(frozen=True)
class ScheduleFired:
    """`run --forever` handled a schedule's occurrence: submitted as a bulk job, or failed (design.md, "Recurring schedules")."""

    schedule: str
    user: str
    #: the occurrence, in UTC; `zone` is the schedule's
    at: dt.datetime
    zone: str
    bulk_job_id: str | None
    error: str | None
    #: earlier occurrences missed since the last one handled
    skipped: int


Event = Queue | Stopping | JobChanged | ItemStarted | ItemFinished | ItemRetrying | ItemLost | BulkEnded | Waiting | Snapshot | ScheduleFired
