"""Settings: flags, else environment, else defaults. One definition of each."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from bulkgen_cli.core.channels import RETRY_DELAYS, SmtpSettings, parse_channels
from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.text import duration

T = TypeVar("T")
S = TypeVar("S")

ENV_STORE = "BULKGEN_STORE"
ENV_API_URL = "BULKGEN_API_URL"
ENV_API_TOKEN = "BULKGEN_API_TOKEN"
ENV_USER = "BULKGEN_USER"
ENV_NOTIFY = "BULKGEN_NOTIFY"
ENV_ON_COMPLETE = "BULKGEN_ON_COMPLETE"
ENV_SMTP_URL = "BULKGEN_SMTP_URL"
ENV_SMTP_FROM = "BULKGEN_SMTP_FROM"
ENV_NOTIFY_RETRY = "BULKGEN_NOTIFY_RETRY"


def default_store_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'bulkgen' / 'bulkgen.db'}"


def pick(flag: T | None, env: str, parse: Callable[[str], T], default: T) -> T:
    """The flag's value, else the environment variable's (parsed), else the default."""
    if flag is not None:
        return flag
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise UsageError(f"{env}={raw!r} is not valid: {exc}") from None


def seconds(minimum: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number of seconds.") from None
        if not value >= minimum or value == float("inf"):
            raise ValueError(f"expected a number of seconds ≥ {minimum:g}.")
        return value

    return parse


def count(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError("expected a whole number ≥ 0.")
    return int(raw)


def whole(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < minimum:
            raise ValueError(f"expected a whole number ≥ {minimum}.")
        return int(raw)

    return parse


def days(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("expected a number of days ≥ 0.")
    return value


def setting(default: Any, env: str | None = None, parse: Callable[[str], Any] = str) -> Any:
    """A settings field: its default, and the environment variable (parsed by `parse`) that stands in for its
    flag; declared once, read by `from_flags`."""
    return field(default=default, metadata={"env": env, "parse": parse})


def from_flags(cls: type[S], flags: dict[str, Any]) -> S:
    """An instance of the settings class `cls`: each field's flag, else its environment variable, else its
    default (`pick`); a field with no variable takes its flag or its default."""
    values = {}
    for declared in fields(cls):  # type: ignore[arg-type]
        flag, env = flags.get(declared.name), declared.metadata.get("env")
        if env is not None:
            values[declared.name] = pick(flag, env, declared.metadata["parse"], declared.default)
        elif flag is not None:
            values[declared.name] = flag
    return cls(**values)


def store_url(flag: str | None) -> str:
    return pick(flag, ENV_STORE, str, "") or default_store_url()


def user(flag: str | None) -> str:
    name = pick(flag, ENV_USER, str, "")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class RunSettings:
    """How the processor works; see `bulkgen run --help`. Each field is a flag of the same name, else its
    variable, else its default."""

    api_url: str | None = setting(None)
    #: never printed: kept out of repr
    api_token: str | None = field(default=None, repr=False)
    delay: float = setting(5.0, "BULKGEN_DELAY", seconds())
    timeout: float = setting(300.0, "BULKGEN_TIMEOUT", seconds(0.001))
    max_retries: int = setting(2, "BULKGEN_MAX_RETRIES", count)
    backoff: float = setting(2.0, "BULKGEN_BACKOFF", seconds())
    lease: float = setting(60.0, "BULKGEN_LEASE_SECONDS", seconds(1.0))
    give_up: float = setting(600.0, "BULKGEN_GIVE_UP", seconds())
    #: after SIGINT/SIGTERM, how long the request in flight may still take
    grace: float = setting(10.0, "BULKGEN_GRACE", seconds())
    #: the processor's own hook; never read from the store
    on_complete: str | None = setting(None)
    #: items in flight at most, in the whole store
    concurrency: int = setting(1, "BULKGEN_CONCURRENCY", count)

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @classmethod
    def resolve(cls, **flags: Any) -> RunSettings:
        """Flags (`api_url`, `delay`, … as the fields), else the environment, else the defaults declared above.
        The service's token comes only from BULKGEN_API_TOKEN."""
        url = pick(flags.get("api_url"), ENV_API_URL, str, "") or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise UsageError(f"the content service URL must start with http:// or https://, got {url!r}.")
        settings = from_flags(cls, {**flags, "api_url": url, "api_token": os.environ.get(ENV_API_TOKEN) or None,
                                    "on_complete": on_complete_command(flags.get("on_complete"))})
        if not 1 <= settings.concurrency <= 16:
            raise UsageError(f"--concurrency must be from 1 to 16, got {settings.concurrency}.")
        if settings.lease < 1.0:
            raise UsageError(f"--lease must be at least 1 second, got {settings.lease:g}.")
        return settings


#: The defaults of a processor's settings, for help texts and `resolve`.
DEFAULTS = RunSettings()


def notify_channels(flags: list[str] | None) -> list[str]:
    """Channels for a new job: the --notify flags, else BULKGEN_NOTIFY (comma-separated)."""
    if flags:
        return parse_channels(flags)
    return parse_channels([os.environ.get(ENV_NOTIFY, "")])


def smtp() -> SmtpSettings | None:
    """The processor's SMTP settings from BULKGEN_SMTP_URL, or None."""
    url = os.environ.get(ENV_SMTP_URL)
    if not url:
        return None
    return SmtpSettings.from_url(url, os.environ.get(ENV_SMTP_FROM) or None)


def on_complete_command(flag: str | None) -> str | None:
    return pick(flag, ENV_ON_COMPLETE, str, "") or None


def notify_retry_delays() -> tuple[float, ...]:
    """Seconds to wait before each further try of a notification (BULKGEN_NOTIFY_RETRY)."""
    def parse(raw: str) -> tuple[float, ...]:
        return tuple(seconds()(part.strip()) for part in raw.split(",") if part.strip())

    return pick(None, ENV_NOTIFY_RETRY, parse, RETRY_DELAYS)


#: A --not-before this far in the past is a mistake (a wrong zone, a stale script), refused; closer, "now".
PAST_TOLERANCE = dt.timedelta(minutes=1)


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """`--not-before`: ISO 8601 with or without a zone (local time without), or +30m, +2h, +1d, +90s."""
    raw = text.strip()
    match = re.fullmatch(r"\+(\d+(?:\.\d+)?)\s*([smhd])", raw)
    try:
        if match:
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
            return now + dt.timedelta(seconds=float(match.group(1)) * unit)
        when = dt.datetime.fromisoformat(raw)
        if when.tzinfo is None:
            when = when.astimezone()  # a time without a zone is local time
        when = when.astimezone(dt.timezone.utc)
    except OverflowError:  # +999999999h, or a time at the calendar's end shifted past it by its zone
        raise UsageError(f"--not-before {text!r} is past the year 9999.") from None
    except ValueError:
        raise UsageError(
            f"--not-before {text!r}: use an ISO 8601 time (2026-12-01T09:00, with or without a zone) "
            "or a delay like +30m, +2h, +1d."
        ) from None
    if when < now - PAST_TOLERANCE:
        raise UsageError(
            f"--not-before {text!r} is {duration((now - when).total_seconds())} in the past: give a time to come "
            "(check its zone; a time without one is local), or leave --not-before out to start at once."
        )
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class ServeLimits:
    """What one user (one token, for the write rate and streams) may do over HTTP; 0 turns a limit off
    (docs/serving.md, "Limits"). Each field is a `serve` flag of the same name, else its variable."""

    #: jobs queued, processing or paused at once, per user
    max_active_jobs: int = setting(20, "BULKGEN_MAX_ACTIVE_JOBS", count)
    #: schedules per user
    max_schedules: int = setting(10, "BULKGEN_MAX_SCHEDULES", count)
    #: the user's jobs' stored articles, summed (BulkJob.stored_bytes), in MiB
    max_stored_mb: int = setting(1024, "BULKGEN_MAX_STORED_MB", count)
    #: saved templates per user (each at most 1 MiB)
    max_templates: int = setting(100, "BULKGEN_MAX_TEMPLATES", count)
    #: writes (POST, PUT, DELETE) a second per token, sustained, and in one burst
    write_rate: float = setting(5.0, "BULKGEN_WRITE_RATE", seconds())
    write_burst: int = setting(60, "BULKGEN_WRITE_BURST", count)
    #: open event streams per token; the next is refused with 429
    max_streams: int = setting(10, "BULKGEN_MAX_STREAMS", whole(1))
    #: days the change log keeps; older changes are pruned (0: kept for ever)
    events_retention: float = setting(7.0, "BULKGEN_EVENTS_RETENTION", days)

    @property
    def retention_seconds(self) -> float | None:
        return self.events_retention * 86_400 if self.events_retention > 0 else None


@dataclass(frozen=True)
class ConnectionLimits:
    """`bulkgen serve`'s connection settings (docs/serving.md, "Slow clients and TLS"); flags only."""

    #: seconds for a request's head to arrive
    head: float = setting(10.0)
    #: seconds for a request's body to arrive after its head
    body: float = setting(30.0)
    #: seconds an idle kept-alive connection stays open
    keep_alive: int = setting(5)
    max_connections: int = setting(2048)
    #: seconds an answer may wait with no byte of it taken by the client (its buffer full)
    write: float = setting(30.0)
