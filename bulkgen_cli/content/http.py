"""The content service client (design §5): one POST per try, the reply sorted.

The bearer token goes only into the Authorization header; every message this
module makes is scrubbed of it, in case a service echoes it back.
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from typing import Any

import httpx

from bulkgen_cli import __version__
from bulkgen_cli.content import Reply, ReplyKind, request_body
from bulkgen_cli.model import Item

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
        self._headers = headers
        self._lock = threading.Lock()
        self._client = self._new_client()
        self._aborted = False

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)),
            follow_redirects=False,
        )

    def url_for(self, mode: str) -> str:
        return f"{self.api_url}/api/content/generate/{mode}"

    def _scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def _excerpt(self, text: str) -> str:
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"

    def generate(self, item: Item) -> Reply:
        with self._lock:
            client = self._client
            self._aborted = False
        started = time.monotonic()
        try:
            response = client.post(self.url_for(item.mode), json=request_body(item))
        except httpx.ConnectTimeout as exc:
            return Reply(ReplyKind.unreachable, error=self._scrub(f"cannot connect to {self.api_url}: timed out ({exc})"))
        except httpx.ConnectError as exc:
            if self._aborted:
                return Reply(ReplyKind.aborted, error="request aborted")
            return Reply(ReplyKind.unreachable, error=self._scrub(f"cannot connect to {self.api_url}: {exc}"))
        except httpx.TimeoutException:
            return Reply(ReplyKind.transient, error=f"no reply within the {self.timeout:g} s timeout")
        except (httpx.TransportError, RuntimeError) as exc:
            if self._aborted:
                return Reply(ReplyKind.aborted, error="request aborted")
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
            old, self._client = self._client, self._new_client()
        old.close()

    def close(self) -> None:
        self._client.close()
