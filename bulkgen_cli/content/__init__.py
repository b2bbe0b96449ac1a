"""Content generators: the HTTP service client and the offline draft writer (and the reference service).

Each makes one try per call and sorts the result (`Reply.kind`); retries,
backoff and leases are the processor's business.

May import core and input (design.md, "Layers").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from bulkgen_cli.core.model import Item, next_generation


class ReplyKind(str, Enum):
    #: an article came back
    ok = "ok"
    #: worth another try: timeout, 5xx, dropped connection
    transient = "transient"
    #: the item itself is refused: 4xx, success=false, a reply that is not the contract
    permanent = "permanent"
    #: 429: wait Retry-After, the try is not charged
    rate_limited = "rate_limited"
    #: the service cannot be reached at all; not the item's fault
    unreachable = "unreachable"
    #: the request was aborted on purpose (the item's bulk job was cancelled)
    aborted = "aborted"
    #: 409: the service saw a newer claim of this item (a higher fencing token)
    fenced = "fenced"


@dataclass(frozen=True)
class Reply:
    kind: ReplyKind
    content: Any = None
    error: str | None = None
    retry_after: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    #: recorded on every result: "offline" or "http"
    name: str
    #: whether the inter-request delay applies (a remote service to spare)
    remote: bool

    def generate(self, item: Item) -> Reply:
        """One try at the item's article."""

    def abort(self) -> None:
        """Close any request in flight from another thread (cancel)."""

    def close(self) -> None:
        """Release connections."""


#: The header carrying the claim's fencing token (design.md, "The service contract").
FENCING_HEADER = "Bulkgen-Fencing-Token"


def idempotency_key(item: Item) -> str:
    """The item's id; after the quality gate flagged its article, with the generation asked for now
    (design.md, "The quality gate"): a service that keeps answers by key then writes a new one."""
    generation = next_generation(item.verdict)
    return item.id if generation == 0 else f"{item.id}:regenerate-{generation}"


def request_headers(item: Item) -> dict[str, str]:
    """The item's Idempotency-Key, and its claim's fencing token."""
    headers = {"Idempotency-Key": idempotency_key(item)}
    if item.fence is not None:
        headers[FENCING_HEADER] = str(item.fence)
    return headers


def request_body(item: Item) -> dict[str, Any]:
    """The JSON body of design.md, "The service contract": the article fields, mode, job_id, user_id."""
    body = {k: v for k, v in item.article.items() if k != "id"}
    if item.item_id is not None:
        body["item_id"] = item.item_id
    body.update(mode=item.mode, job_id=item.id, user_id=item.userId, bulk_job_id=item.bulk_job_id)
    return body


def content_text(content: Any) -> str:
    """The article text of a reply's content: a string, or an object's body/content."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        for key in ("body", "content", "text", "markdown"):
            value = content.get(key)
            if isinstance(value, str):
                return value
    return ""


def count_words(text: str) -> int:
    """Words of an article's prose: Markdown heading lines are not counted."""
    return sum(len(line.split()) for line in text.splitlines() if not line.lstrip().startswith("#"))
