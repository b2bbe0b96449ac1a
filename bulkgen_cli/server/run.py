"""Running the server: uvicorn in the main thread, optionally the processor beside it (`--processor`).

uvicorn owns SIGINT and SIGTERM while it serves: the first starts its graceful
shutdown, which ends the event streams (ServerConfig.stopping) and then this
module stops the processor as a Ctrl-C stops `bulkgen run`: nothing new starts,
the request in flight may finish within `--grace` and is recorded, else it is
aborted and its item goes back to the queue uncharged; the slot is released.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Callable

from bulkgen_cli.server.config import ServerConfig
from bulkgen_cli.settings import RunSettings
from bulkgen_cli.store.base import Store

#: Query parameters whose values never reach a log line.
SECRET_PARAM = re.compile(r"((?:token|key|password|secret|auth)[^=&\s]*=)[^&\s\"]*", re.IGNORECASE)
BEARER = re.compile(r"(bearer\s+)\S+", re.IGNORECASE)
#: A token wherever it stands (a path, a query value by any name): tokens.PREFIX and what follows it.
TOKEN = re.compile(r"bgk_[A-Za-z0-9_-]+")


class Redact(logging.Filter):
    """No token or password in any log line: secret-looking query values and bearer tokens become ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_scrub(a) if isinstance(a, str) else a for a in record.args)  # type: ignore[union-attr]
        if isinstance(record.msg, str):
            record.msg = _scrub(record.msg)
        return True


def _scrub(text: str) -> str:
    return TOKEN.sub("bgk_***", BEARER.sub(r"\1***", SECRET_PARAM.sub(r"\1***", text)))


@dataclass
class Background:
    """The processor (runner.Runner) in a thread beside the server."""

    thread: threading.Thread
    stop: Callable[[], None]
    grace: float


def start_processor(run_settings: RunSettings, open_store: Callable[[], Store],
                    on_event: Callable[[object], None]) -> Background:
    from bulkgen_cli.runner import Runner

    store = open_store()
    runner = Runner(store, run_settings, open_store, on_event)  # type: ignore[arg-type]

    def work() -> None:
        try:
            runner.run(forever=True)
        finally:
            store.close()

    thread = threading.Thread(target=work, name="bulkgen-processor", daemon=True)
    thread.start()
    return Background(thread, runner.stop, run_settings.grace)


def stop_processor(background: Background) -> None:
    """As a Ctrl-C stops `bulkgen run`: let the request in flight finish within the grace, else abort it."""
    background.stop()
    background.thread.join(background.grace + 2.0)
    if background.thread.is_alive():
        background.stop()  # the second stop aborts the request in flight; its item goes back uncharged
        background.thread.join(30.0)


def serve(config: ServerConfig, host: str, port: int, processor: Background | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    import uvicorn

    from bulkgen_cli.server.app import create_app

    uvicorn_config = uvicorn.Config(create_app(config), host=host, port=port, log_level="info",
                                    timeout_graceful_shutdown=3, server_header=False)
    server = uvicorn.Server(uvicorn_config)
    config.stopping = lambda: server.should_exit
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(Redact())
    try:
        server.run()
    finally:
        if processor is not None:
            stop_processor(processor)
