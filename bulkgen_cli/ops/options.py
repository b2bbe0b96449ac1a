"""A bulk job's options, declared once (design.md, "One declaration per field").

`submit` (cli/main.py), `schedule add` (cli/schedules.py) and the HTTP submit (server/submission.py, its
schemas) all make a `JobOptions` and hand it to `jobs.submit`; a schedule stores `record()` and each run reads
it back with `from_record`. Each field says whether the HTTP submit takes it and whether a schedule keeps it;
tests/test_fields.py checks the CLI's parameters and the HTTP schemas against these.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from bulkgen_cli.core.model import DEFAULT_QUALITY_RATIO, Priority, QualityPolicy, field_with


def option(default: Any = None, *, http: bool, scheduled: bool = True,
           factory: Callable[[], Any] | None = None) -> Any:
    """A job option: whether the HTTP submit takes it (a field of its JSON body and form) and whether a
    schedule keeps it for its runs."""
    return field_with(default, factory, {"http": http, "scheduled": scheduled})


@dataclass(frozen=True)
class JobOptions:
    """How a submitted bulk job runs, whoever submits it."""

    #: the job's name (else the file's `name:`, else its file name)
    name: str | None = option(http=True)
    #: the mode, when the file names none
    mode: str | None = option(http=False)
    #: orders the user's own jobs; urgent goes ahead of everyone's
    priority: Priority = option(Priority.normal, http=True)
    #: nothing of it starts before then (a schedule's runs start at their time)
    not_before: dt.datetime | None = option(http=True, scheduled=False)
    #: notification channels, parsed (delivery/notify.py, `parse_channels`)
    notify: list[str] = option(http=True, factory=list)
    #: the quality gate's policy and words ratio
    quality: QualityPolicy = option(QualityPolicy.warn, http=False)
    quality_ratio: float = option(DEFAULT_QUALITY_RATIO, http=False)

    def submit_args(self) -> dict[str, Any]:
        """The options as `jobs.submit` takes them (the mode is the manifest's: it is given when reading it)."""
        args = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mode"}
        return args | {"notify": list(self.notify)}

    def record(self) -> dict[str, Any]:
        """The options a schedule stores for its runs, as JSON (design.md, "Recurring schedules")."""
        return {f.name: _stored(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata["scheduled"]}

    @classmethod
    def from_record(cls, stored: dict[str, Any]) -> JobOptions:
        """A schedule's stored options read back (an option absent or null takes its default: one stored before
        it existed)."""
        hints = typing.get_type_hints(cls)
        return cls(**{name: _read(hints[name], stored[name]) for name in names(scheduled=True)
                      if stored.get(name) is not None})


def _stored(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else list(value) if isinstance(value, list) else value


def _read(hint: Any, value: Any) -> Any:
    """A stored value as the option's type: an enum from its value, a number, a list."""
    if typing.get_origin(hint) is list:
        return list(value)
    return hint(value) if isinstance(hint, type) else value


def names(http: bool | None = None, scheduled: bool | None = None) -> tuple[str, ...]:
    """The options' names, in order; only those the HTTP submit takes (`http`) or a schedule keeps (`scheduled`)."""
    return tuple(f.name for f in dataclasses.fields(JobOptions)
                 if (http is None or f.metadata["http"] == http)
                 and (scheduled is None or f.metadata["scheduled"] == scheduled))
