"""Notification channels as a job records them (`webhook:URL`, `email:ADDRESS`), the SMTP server's address,
and the default delays between a notification's tries: what settings, the operations and the front ends read
and check. Sending is the delivery layer's (delivery/notify.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from bulkgen_cli.core.errors import UsageError

#: Seconds before each further try of a notification (BULKGEN_NOTIFY_RETRY overrides them).
RETRY_DELAYS = (5.0, 15.0, 40.0)
MAX_CHANNELS = 10
EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")


def parse_channel(text: str) -> str:
    """Check one `--notify` value; the stored form is `webhook:URL` or `email:ADDRESS`."""
    kind, _, target = text.strip().partition(":")
    kind = kind.lower()
    if kind == "webhook":
        try:
            parts = urlsplit(target)
        except ValueError:  # http://[::1/ (an unclosed bracket), http://[x]/
            raise UsageError(f"--notify {text!r}: the webhook URL cannot be read.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--notify {text!r}: a webhook needs an http:// or https:// URL.")
        return f"webhook:{target}"
    if kind == "email":
        if not EMAIL.fullmatch(target):
            raise UsageError(f"--notify {text!r}: not an email address.")
        return f"email:{target}"
    raise UsageError(f"--notify {text!r}: use webhook:https://… or email:someone@example.com.")


def parse_channels(values: list[str]) -> list[str]:
    channels = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip().lower() != "none":
                channel = parse_channel(part)
                if channel not in channels:
                    channels.append(channel)
    if len(channels) > MAX_CHANNELS:
        raise UsageError(f"at most {MAX_CHANNELS} notification channels, got {len(channels)}.")
    return channels


def mask_channel(channel: str) -> str:
    """A channel for display: a password in a webhook URL becomes ***."""
    kind, _, target = channel.partition(":")
    parts = urlsplit(target) if kind == "webhook" else None
    if parts is not None and parts.password:
        target = parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)).geturl()
    return f"{kind}:{target}"


@dataclass(frozen=True)
class SmtpSettings:
    """From BULKGEN_SMTP_URL: smtp://[user:pass@]host[:port] (STARTTLS) or smtps:// (TLS)."""

    scheme: str
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "bulkgen@localhost"

    @classmethod
    def from_url(cls, url: str, sender: str | None = None) -> SmtpSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise UsageError("BULKGEN_SMTP_URL must look like smtp://user:pass@host:587 or smtps://host:465.")
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        default_port = 465 if parts.scheme == "smtps" else (587 if user else 25)
        try:
            port = parts.port or default_port
        except ValueError:
            raise UsageError("BULKGEN_SMTP_URL has a port that is not a number.") from None
        return cls(parts.scheme, parts.hostname, port, user, password,
                   sender or unquote(query.get("from", "")) or "bulkgen@localhost")
