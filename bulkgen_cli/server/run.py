"""Running the server: uvicorn in the main thread, optionally the processor beside it (`--processor`).

uvicorn owns SIGINT and SIGTERM while it serves: the first starts its graceful
shutdown, which ends the event streams (ServerConfig.stopping) and then this
module stops the processor as a Ctrl-C stops `bulkgen run`: nothing new starts,
the request in flight may finish within `--grace` and is recorded, else it is
aborted and its item goes back to the queue uncharged; the slot is released.

The listening socket is bound (`listen`) before the processor or the app
starts, so a port in use is one sentence and exit 6; uvicorn serves on it with
the deadlines and the connection cap of `connections.py`
(design.md, "Slow and idle clients") and, given a certificate, TLS.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from bulkgen_cli.core import settings
from bulkgen_cli.core.errors import CannotListen, UsageError
from bulkgen_cli.core.settings import RunSettings
from bulkgen_cli.core.text import quoted
from bulkgen_cli.engine.runner import Runner
from bulkgen_cli.ops.schedules import Ticker
from bulkgen_cli.server import connections
from bulkgen_cli.server.app import create_app
from bulkgen_cli.server.config import ServerConfig
from bulkgen_cli.core.settings import ConnectionLimits
from bulkgen_cli.server.connections import raise_file_limit
from bulkgen_cli.server.edge import scrub
from bulkgen_cli.store.base import Store


class Redact(logging.Filter):
    """No token or password in any of uvicorn's own log lines (edge.scrub); the access log is edge.AccessLog's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)  # type: ignore[union-attr]
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        return True


@dataclass
class Background:
    """The processor (runner.Runner) in a thread beside the server."""

    thread: threading.Thread
    stop: Callable[[], None]
    grace: float


def start_processor(run_settings: RunSettings, open_store: Callable[[], Store],
                    on_event: Callable[[object], None]) -> Background:
    store = open_store()
    runner = Runner(store, run_settings, open_store, on_event, smtp=settings.smtp(),  # type: ignore[arg-type]
                    retry_delays=settings.notify_retry_delays(),
                    ticker=lambda owner: Ticker(open_store(), owner, on_event))

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


@dataclass(frozen=True)
class Tls:
    """`--ssl-certfile` and `--ssl-keyfile`: the server speaks HTTPS."""

    certfile: str
    keyfile: str

    def check(self) -> None:
        """UsageError unless the two files make a certificate and its key (read now, not on the first request)."""
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM certificate and its key"
            raise UsageError(f"--ssl-certfile {quoted(self.certfile)} with --ssl-keyfile {quoted(self.keyfile)}: "
                             f"{reason}.") from None


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket, bound before anything else starts; CannotListen in one sentence if it cannot be."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except (OSError, UnicodeError) as exc:
        if sock is not None:
            sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CannotListen(f"cannot listen on {host} port {port}: {reason.lower().rstrip('.')} (another program "
                           "holds the port, or the address is not one of this machine's); pick another --host or "
                           "--port.") from None
    return sock


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus edge.AccessLog's lines on standard output in uvicorn's format."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["bulkgen_access"] = {"formatter": "default", "class": "logging.StreamHandler",
                                            "stream": "ext://sys.stdout"}
    config["loggers"]["bulkgen.access"] = {"handlers": ["bulkgen_access"], "level": "INFO", "propagate": False}
    return config


def serve(config: ServerConfig, sock: socket.socket, processor: Background | None = None,
          limits: ConnectionLimits = ConnectionLimits(), tls: Tls | None = None) -> None:
    """Serve on the bound `sock` until SIGINT/SIGTERM (which uvicorn then raises again: exit 130/143)."""
    limits, shrunk = raise_file_limit(limits)
    uvicorn_config = uvicorn.Config(create_app(config), log_level="info", log_config=log_config(), access_log=False,
                                    timeout_graceful_shutdown=3, server_header=False,
                                    ssl_certfile=tls.certfile if tls else None,
                                    ssl_keyfile=tls.keyfile if tls else None, **connections.settings(limits))
    if shrunk:
        logging.getLogger("uvicorn.error").warning("%s", shrunk)
    server = uvicorn.Server(uvicorn_config)
    config.stopping = lambda: server.should_exit
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).addFilter(Redact())
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        uvicorn_config.http_protocol_class.guard.report()  # type: ignore[union-attr]
        if processor is not None:
            stop_processor(processor)
