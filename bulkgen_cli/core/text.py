"""Text from a user's file, the store or a service is shown as it is: never markup, never terminal control.

`visible` keeps every printable character and writes control characters
(C0, DEL, C1: an ESC that would start a terminal sequence, a carriage return
that would overwrite a line) and the bidirectional overrides that reorder a
line as escapes (`\\x1b`, `\\u202e`), so what is shown is what is stored.
"""

from __future__ import annotations

import re

#: Control characters and bidirectional formatting characters.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """The text with every control character shown as an escape (tabs and newlines kept)."""
    return _HIDDEN.sub(_escape, str(text))


def quoted(value: object, limit: int = 40) -> str:
    """A value echoed back in a message: quoted, escaped, and cut when long (saying how long it was)."""
    text = visible(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 1]!r}… ({len(text):,} characters)"


def duration(seconds: float) -> str:
    """A span in the largest units that fit: 42s, 3m05s, 5h03m, 3 d 4 h."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days:,} d {hours} h"
