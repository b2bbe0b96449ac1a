"""What one server process is told by `bulkgen serve`'s options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bulkgen_cli.delivery.netpolicy import Policy
from bulkgen_cli.core.settings import ServeLimits
from bulkgen_cli.store.base import Store
from bulkgen_cli.store.rules import Quota

#: Request bodies are capped as articles files are (manifest.MAX_FILE_BYTES), plus room for a
#: multipart envelope around a file of that size.
ENVELOPE_BYTES = 16 * 1024
#: Seconds between two heartbeat comments on an idle event stream.
HEARTBEAT_SECONDS = 15.0
#: Seconds between two reads of the store's change log (one reader per process, shared by all streams).
POLL_SECONDS = 0.25


def quota(limits: ServeLimits) -> Quota:
    """The limits a store checks with each new job's insert."""
    return Quota(limits.max_active_jobs, limits.max_stored_mb * 1024 * 1024)


@dataclass
class ServerConfig:
    #: gives each worker thread its own store connection
    open_store: Callable[[], Store]
    #: the store's address for messages (passwords masked)
    store_display: str = ""
    #: origins allowed by CORS; none: CORS off
    cors: tuple[str, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    email_allow: tuple[str, ...] = ()
    heartbeat: float = HEARTBEAT_SECONDS
    poll: float = POLL_SECONDS
    #: one store object for every thread, used under one lock (mongomock in tests: not thread-safe)
    shared_store: bool = False
    #: True once the server is shutting down: event streams end
    stopping: Callable[[], bool] = field(default=lambda: False)
    #: per-user quotas, the per-token write rate (server/quotas.py) and streams, the change log's retention
    limits: ServeLimits = field(default_factory=ServeLimits)

    def policy(self, user_email: str | None) -> Policy:
        return Policy(self.webhook_allow, self.email_allow, user_email)
