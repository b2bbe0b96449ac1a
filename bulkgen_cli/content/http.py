"""The content service client (design.md, "The service contract"): one POST per try, the reply sorted.

The bearer token goes only into the Authorization header; every message this
module makes is scrubbed of it, in case a service echoes it back.
"""

from __future__ import annotations

import email.utils
import json
import re
import socket
import threading
import time
from typing import Any

import httpx

from bulkgen_cli import __version__
from bulkgen_cli.content import Reply, ReplyKind, request_body, request_headers
from bulkgen_cli.core.model import Item

#: Longest Retry-After honoured; beyond it a service is misbehaving.
MAX_RETRY_AFTER = 3600.0
CONNECT_TIMEOUT = 10.0
EXCERPT = 200


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class HttpGenerator:
    name = "http"
    remote = True

    def __init__(self, api_url: str, token: str | None = None, timeout: float = 300.0):
        self.api_url = api_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        headers = {"User-Agent": f"bulkgen/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # One connection per request (a generation takes minutes; a handshake is
        # nothing beside it): the trace hook then always sees the socket that
        # abort() must shut.
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)),
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._aborted = False

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's public trace hook: note the request's socket as soon as it connects."""
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._socket = sock
                aborted = self._aborted
            if aborted:
                _shut(sock)

    def url_for(self, mode: str) -> str:
        return f"{self.api_url}/api/content/generate/{mode}"

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def _excerpt(self, text: str) -> str:
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"

    def generate(self, item: Item) -> Reply:
        with self._lock:
            self._socket = None
            self._aborted = False
        started = time.monotonic()
        try:
            response = self._client.post(
                self.url_for(item.mode), json=request_body(item), headers=request_headers(item),
                extensions={"trace": self._trace},
            )
        except httpx.TransportError as exc:
            if self._aborted:
                return Reply(ReplyKind.aborted, error="request aborted")
            if isinstance(exc, httpx.ConnectTimeout):
                return Reply(ReplyKind.unreachable, error=self._scrub(f"cannot connect to {self.api_url}: timed out"))
            if isinstance(exc, httpx.ConnectError):
                return Reply(ReplyKind.unreachable, error=self._scrub(f"cannot connect to {self.api_url}: {exc}"))
            if isinstance(exc, httpx.TimeoutException):
                return Reply(ReplyKind.transient, error=f"no reply within the {self.timeout:g} s timeout")
            return Reply(ReplyKind.transient, error=self._scrub(f"connection failed: {exc or type(exc).__name__}"))
        meta = {"status_code": response.status_code, "seconds": round(time.monotonic() - started, 3)}
        return self._sort(response, meta)

    def _sort(self, response: httpx.Response, meta: dict[str, Any]) -> Reply:
        code = response.status_code
        if code == 429:
            return Reply(
                ReplyKind.rate_limited,
                error=f"HTTP 429 (rate limited): {self._excerpt(response.text)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                meta=meta,
            )
        if code == 409:
            return Reply(ReplyKind.fenced, error=f"HTTP 409 (a newer claim holds this item): {self._excerpt(response.text)}",
                         meta=meta)
        if code >= 500 or code == 408:
            return Reply(ReplyKind.transient, error=f"HTTP {code}: {self._excerpt(response.text)}", meta=meta)
        if code >= 300:
            return Reply(ReplyKind.permanent, error=f"HTTP {code}: {self._excerpt(response.text)}", meta=meta)
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            return Reply(ReplyKind.permanent, error=f"HTTP {code} reply is not JSON: {self._excerpt(response.text)}", meta=meta)
        if not isinstance(data, dict) or not isinstance(data.get("success"), bool):
            return Reply(
                ReplyKind.permanent,
                error=f"HTTP {code} reply lacks a boolean 'success': {self._excerpt(json.dumps(data)[:500])}",
                meta=meta,
            )
        if not data["success"]:
            reason = data.get("error") or "no reason given"
            return Reply(ReplyKind.permanent, error=f"the service refused it: {self._excerpt(str(reason))}", meta=meta)
        content = data.get("content")
        if content is None or content == "":
            return Reply(ReplyKind.permanent, error="the service replied success but sent no content", meta=meta)
        return Reply(ReplyKind.ok, content=content, meta=meta)

    def abort(self) -> None:
        """Close the connection under an in-flight request (called from another thread)."""
        with self._lock:
            self._aborted = True
            sock = self._socket
        if sock is not None:
            _shut(sock)

    def close(self) -> None:
        self._client.close()


def _shut(sock: socket.socket) -> None:
    """Shut a socket down under a thread blocked on it: its read returns at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
