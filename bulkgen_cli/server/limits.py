"""Request bodies are capped while they are read, not after (design.md, "The HTTP server")."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from bulkgen_cli.server.problems import MEDIA_TYPE, too_large

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """A body over the cap, should a route see one; the app answers 413 (problems.too_large)."""


class BodyLimit:
    """ASGI middleware: a declared Content-Length over `limit` is refused before a byte is read; a body
    without one (chunked) is counted as it arrives and refused the moment it passes `limit`: the 413 is
    sent from here at once, the route reads that the client left, and whatever it answers is dropped
    (a route whose framework turns any failed read into a 400 answers 413 all the same)."""

    def __init__(self, app: App, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen, refused, started = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            nonlocal started
            if not refused:
                started = True
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(too_large(self.limit).body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
