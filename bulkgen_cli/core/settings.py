"""Settings: flags, else environment, else defaults. One definition of each."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from bulkgen_cli.core.channels import RETRY_DELAYS, SmtpSettings, parse_channels
from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.text import duration

T = TypeVar("T")

ENV_STORE = "BULKGEN_STORE"
ENV_API_URL = "BULKGEN_API_URL"
ENV_API_TOKEN = "BULKGEN_API_TOKEN"
ENV_USER = "BULKGEN_USER"
ENV_DELAY = "BULKGEN_DELAY"
ENV_TIMEOUT = "BULKGEN_TIMEOUT"
ENV_MAX_RETRIES = "BULKGEN_MAX_RETRIES"
ENV_BACKOFF = "BULKGEN_BACKOFF"
ENV_LEASE = "BULKGEN_LEASE_SECONDS"
ENV_GIVE_UP = "BULKGEN_GIVE_UP"
ENV_GRACE = "BULKGEN_GRACE"
ENV_CONCURRENCY = "BULKGEN_CONCURRENCY"
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
    """How the processor works; see `bulkgen run --help`."""

    api_url: str | None = None
    #: never printed: kept out of repr
    api_token: str | None = field(default=None, repr=False)
    delay: float = 5.0
    timeout: float = 300.0
    max_retries: int = 2
    backoff: float = 2.0
    lease: float = 60.0
    give_up: float = 600.0
    #: after SIGINT/SIGTERM, how long the request in flight may still take
    grace: float = 10.0
    #: the processor's own hook; never read from the store
    on_complete: str | None = None
    #: items in flight at most, in the whole store
    concurrency: int = 1

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    @classmethod
    def resolve(
        cls,
        api_url: str | None = None,
        delay: float | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        backoff: float | None = None,
        lease: float | None = None,
        give_up: float | None = None,
        grace: float | None = None,
        on_complete: str | None = None,
        concurrency: int | None = None,
    ) -> RunSettings:
        """Flags, else the environment, else the defaults of this class (declared once, above)."""
        url = pick(api_url, ENV_API_URL, str, "") or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise UsageError(f"the content service URL must start with http:// or https://, got {url!r}.")
        settings = cls(
            api_url=url,
            api_token=os.environ.get(ENV_API_TOKEN) or None,
            delay=pick(delay, ENV_DELAY, seconds(), DEFAULTS.delay),
            timeout=pick(timeout, ENV_TIMEOUT, seconds(0.001), DEFAULTS.timeout),
            max_retries=pick(max_retries, ENV_MAX_RETRIES, count, DEFAULTS.max_retries),
            backoff=pick(backoff, ENV_BACKOFF, seconds(), DEFAULTS.backoff),
            lease=pick(lease, ENV_LEASE, seconds(1.0), DEFAULTS.lease),
            give_up=pick(give_up, ENV_GIVE_UP, seconds(), DEFAULTS.give_up),
            grace=pick(grace, ENV_GRACE, seconds(), DEFAULTS.grace),
            on_complete=on_complete_command(on_complete),
            concurrency=pick(concurrency, ENV_CONCURRENCY, count, DEFAULTS.concurrency),
        )
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


ENV_MAX_ACTIVE_JOBS = "BULKGEN_MAX_ACTIVE_JOBS"
ENV_MAX_SCHEDULES = "BULKGEN_MAX_SCHEDULES"
ENV_MAX_STORED_MB = "BULKGEN_MAX_STORED_MB"
ENV_MAX_TEMPLATES = "BULKGEN_MAX_TEMPLATES"
ENV_WRITE_RATE = "BULKGEN_WRITE_RATE"
ENV_WRITE_BURST = "BULKGEN_WRITE_BURST"


@dataclass(frozen=True)
class ServeLimits:
    """What one user (one token, for the write rate) may do over HTTP; 0 turns a limit off (docs/serving.md, "Limits")."""

    #: jobs queued, processing or paused at once, per user
    max_active_jobs: int = 20
    #: schedules per user
    max_schedules: int = 10
    #: the user's jobs' stored articles, summed (BulkJob.stored_bytes), in MiB
    max_stored_mb: int = 1024
    #: saved templates per user (each at most 1 MiB)
    max_templates: int = 100
    #: writes (POST, PUT, DELETE) a second per token, sustained, and in one burst
    write_rate: float = 5.0
    write_burst: int = 60

    @classmethod
    def resolve(cls, max_active_jobs: int | None = None, max_schedules: int | None = None,
                max_stored_mb: int | None = None, write_rate: float | None = None,
                write_burst: int | None = None, max_templates: int | None = None) -> ServeLimits:
        """Flags, else the environment, else the defaults of this class."""
        plain = cls()
        return cls(
            max_active_jobs=pick(max_active_jobs, ENV_MAX_ACTIVE_JOBS, count, plain.max_active_jobs),
            max_schedules=pick(max_schedules, ENV_MAX_SCHEDULES, count, plain.max_schedules),
            max_stored_mb=pick(max_stored_mb, ENV_MAX_STORED_MB, count, plain.max_stored_mb),
            write_rate=pick(write_rate, ENV_WRITE_RATE, seconds(), plain.write_rate),
            write_burst=pick(write_burst, ENV_WRITE_BURST, count, plain.write_burst),
            max_templates=pick(max_templates, ENV_MAX_TEMPLATES, count, plain.max_templates),
        )
