"""IANA time zones by name, and a time as a zone reads it (schedules, their documents, the live view)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.text import quoted

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo


def zone_of(name: str) -> ZoneInfo:
    """The IANA time zone; UsageError with a suggestion when there is none of that name."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    known = available_timezones()
    if not known:
        raise UsageError(f"--zone {quoted(name)}: this machine has no time zone data; `pip install tzdata` "
                         "provides it.")
    return ZoneInfo(_suggest_zone(name, known))


def _suggest_zone(name: str, known: set[str]) -> str:
    import difflib

    by_case = {k.lower(): k for k in known}
    close = by_case.get(name.lower()) or next(iter(difflib.get_close_matches(name, sorted(known), n=1)), None)
    hint = f"; did you mean {close}?" if close else "; use an IANA name such as Europe/Berlin, America/New_York or UTC."
    raise UsageError(f"--zone {quoted(name)} is not a known time zone{hint}")


def local_time(at: dt.datetime | None, zone: str) -> str | None:
    """A time as the schedule's zone reads it: 2026-11-30 06:00 CET."""
    return None if at is None else at.astimezone(zone_of(zone)).strftime("%Y-%m-%d %H:%M %Z")
