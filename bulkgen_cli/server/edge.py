"""What every answer carries and what the access log says (design.md, "The HTTP server").

Two ASGI middlewares around the app, independent of the ASGI server:

- `Headers`: `X-Content-Type-Options: nosniff` on every answer and `Cache-Control: no-store` on the API's
  (a route that sets its own Cache-Control keeps it);
- `AccessLog`: one line per request, `CLIENT - USER - "METHOD TARGET HTTP/V" STATUS`, with the acting
  user (set by auth.caller into the scope's state; `-` without one) and never a token or a secret:
  the target is logged as sent (percent-encoded), masked by `scrub`.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable
from urllib.parse import unquote_plus

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("bulkgen.access")

#: Parts of a query parameter's name that mark its value as a secret (after percent-decoding the name).
SECRET_NAMES = ("token", "key", "pass", "pwd", "pw", "secret", "auth", "sign", "sig", "credential", "session", "cookie",
                "jwt", "private", "code")
#: One `name=value` of a query string (or of any text logged: a value stops at &, ;, space or a quote).
PARAM = re.compile(r"(?P<lead>[?&;\s]|^)(?P<name>[^=&;?\s\"]+)=(?P<value>[^&;\s\"]*)")
BEARER = re.compile(r"(bearer\s+)\S+", re.IGNORECASE)
#: A run of characters that may carry a token, each one literal or percent-encoded.
WORD = re.compile(r"(?:[A-Za-z0-9_.~+-]|%[0-9A-Fa-f]{2})+")
#: A URL's user and password (`//user:secret@`), as it reads once decoded.
CREDENTIALS = re.compile(r"//[^/?#@\s]*:[^/?#@\s]*@")
#: The same in a value once decoded, where the password may hold any character but `@` (an encoded `/` too).
VALUE_CREDENTIALS = re.compile(r"//[^/?#@\s]*:[^@\s]*@")
#: A secret-looking name given a value inside a value once decoded: a nested query (`/login?password=x`,
#: `1?pw=x`) or JSON / a dict (`{"password": "x"}`).
NESTED_SECRET = re.compile(r"(?:%s)[^=\s\"':&?]*(?:\s*=|[\"']\s*:)" % "|".join(SECRET_NAMES), re.IGNORECASE)
#: tokens.PREFIX, as it reads once decoded.
TOKEN_PREFIX = "bgk_"
#: How many times a text is percent-decoded at most: far more layers than any client sends by mistake.
DECODE_ROUNDS = 8


def decoded(text: str) -> str:
    """`text` percent-decoded until it no longer changes (at most DECODE_ROUNDS times: %255F is %5F is _)."""
    for _ in range(DECODE_ROUNDS):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def secret_value(name: str, value: str) -> bool:
    """Whether the query value `value` of `name` (both as sent) is, or carries, a secret."""
    if any(part in decoded(name).lower() for part in SECRET_NAMES):
        return True
    plain = decoded(value)
    return bool(VALUE_CREDENTIALS.search(plain) or NESTED_SECRET.search(plain))


def scrub(text: str) -> str:
    """No token and no secret-looking query value in `text`, however percent-encoded or nested."""
    def param(match: re.Match[str]) -> str:
        if secret_value(match["name"], match["value"]):
            return f"{match['lead']}{match['name']}=***"
        return match[0]

    def word(match: re.Match[str]) -> str:
        return "bgk_***" if TOKEN_PREFIX in decoded(match[0]).lower() else match[0]

    text = CREDENTIALS.sub("//***@", PARAM.sub(param, text))
    return WORD.sub(word, BEARER.sub(r"\1***", text))


def printable(raw: bytes) -> str:
    """Bytes of a request line as one log line: nothing that could start another line or fake one."""
    return "".join(chr(b) if 0x20 < b < 0x7F else f"\\x{b:02x}" for b in raw)


class HttpOnly:
    """An ASGI middleware acting on HTTP requests (`http`); anything else (lifespan) passes through."""

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class Headers(HttpOnly):
    """nosniff on every answer; no-store on the API's unless the route set a Cache-Control itself."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = scope.get("path", "").startswith("/api") or scope.get("path") == "/openapi.json"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if api and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class AccessLog(HttpOnly):
    """One masked line per answered request, naming the acting user."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noted)
        except Exception:
            status = status or 500  # Starlette's outermost middleware answers it
            raise
        finally:
            if status:
                access_logger.info("%s", line(scope, status))


def line(scope: Scope, status: int) -> str:
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    user = (scope.get("state") or {}).get("user") or "-"
    target = scope.get("raw_path") or scope.get("path", "").encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    request = f'{scope.get("method", "-")} {printable(target)} HTTP/{scope.get("http_version", "1.1")}'
    return scrub(f'{where} - {printable(str(user).encode())} - "{request}" {status}')
