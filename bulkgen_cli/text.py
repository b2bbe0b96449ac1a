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
