"""`bulkgen serve` and `bulkgen token`: the HTTP API and its bearer tokens (design.md, "The HTTP server").

Nothing of the server (FastAPI, uvicorn) is imported here: only `serve` loads it,
so the other commands start as fast as before. Layers below the CLI and rich are imported in the command that uses them (cold start: cli/__init__.py).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from bulkgen_cli.cli.common import EXIT_CODES, JsonOpt, StoreOpt, listed, note, open_db, render_json, run_options
from bulkgen_cli.core import settings
from bulkgen_cli.core.errors import UsageError
from bulkgen_cli.core.model import iso

if TYPE_CHECKING:
    from bulkgen_cli.core.model import ApiToken
    from bulkgen_cli.core.settings import ServeLimits
    from bulkgen_cli.server.run import Tls

INSTALL_HINT = "bulkgen serve needs the serve extra: pip install 'bulkgen[serve]'."

HostOpt = Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on. Anything but "
                    "loopback needs at least one token (`bulkgen token create`).")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, metavar="PORT", help="Port to listen on.")]
ProcessorOpt = Annotated[bool, typer.Option("--processor", help="Also run the processor in this process "
                         "(as `bulkgen run --forever`); without it, `bulkgen run` elsewhere does the work.")]
CorsOpt = Annotated[Optional[list[str]], typer.Option("--cors", metavar="ORIGIN", help="Allow a browser page "
                    "from ORIGIN (https://app.example.com) to call the API; repeatable. [default: CORS off]",
                    show_default=False)]
WebhookAllowOpt = Annotated[Optional[list[str]], typer.Option("--webhook-allow", metavar="HOST|CIDR", help="Let "
                            "webhooks of jobs submitted over HTTP reach this host or network although it is "
                            "loopback, private or link-local; repeatable.", show_default=False)]
EmailAllowOpt = Annotated[Optional[list[str]], typer.Option("--email-allow", metavar="DOMAIN", help="Let jobs "
                          "submitted over HTTP e-mail any address at DOMAIN (a user may always e-mail the "
                          "address recorded with their token); repeatable.", show_default=False)]

# -- slow clients and TLS (docs/serving.md, "Slow clients and TLS") ----------------------------------------------
HeadTimeoutOpt = Annotated[float, typer.Option("--header-timeout", min=0.1, metavar="SECONDS", help="Close a "
                           "connection whose request head has not fully arrived within SECONDS.")]
BodyTimeoutOpt = Annotated[float, typer.Option("--body-timeout", min=0.1, metavar="SECONDS", help="Close a "
                           "connection whose request body has not fully arrived within SECONDS of its head.")]
KeepAliveOpt = Annotated[int, typer.Option("--keep-alive-timeout", min=1, metavar="SECONDS", help="Close a "
                         "connection idle between two requests after SECONDS.")]
WriteTimeoutOpt = Annotated[float, typer.Option("--write-timeout", min=0.1, metavar="SECONDS", help="Close a "
                            "connection whose client has taken no byte of its answer for SECONDS (an event stream "
                            "read slowly stays).")]
MaxConnectionsOpt = Annotated[int, typer.Option("--max-connections", min=16, metavar="N", help="At most N open "
                              "connections; one more closes the oldest that has sent no complete request, else the "
                              "one whose client has read nothing of its answer for longest.")]
SslCertOpt = Annotated[Optional[str], typer.Option("--ssl-certfile", metavar="PEM", help="Serve HTTPS with this "
                       "certificate (chain); needs --ssl-keyfile.", show_default=False)]
SslKeyOpt = Annotated[Optional[str], typer.Option("--ssl-keyfile", metavar="PEM", help="The private key of "
                      "--ssl-certfile.", show_default=False)]

# -- live progress (design.md, "Live progress") --------------------------------------------------------------
MaxStreamsOpt = Annotated[Optional[int], typer.Option("--max-streams", min=1, metavar="N", help="Event streams one "
                          "token may hold open; the next is refused (429). Env BULKGEN_MAX_STREAMS. [default: 10]",
                          show_default=False)]
RetentionOpt = Annotated[Optional[float], typer.Option("--events-retention", min=0.0, metavar="DAYS", help="Days "
                         "the change log keeps events; older ones are pruned, and a client resuming from before "
                         "them is told to reload. 0 keeps them for ever. Env BULKGEN_EVENTS_RETENTION. "
                         "[default: 7]", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=EXIT_CODES)(run_options(serve))
    token_app = typer.Typer(help="API tokens for `bulkgen serve`: create, list, revoke.", no_args_is_help=True)
    token_app.command("create", epilog=EXIT_CODES)(token_create)
    token_app.command("list", epilog=EXIT_CODES)(token_list)
    token_app.command("revoke", epilog=EXIT_CODES)(token_revoke)
    app.add_typer(token_app, name="token")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- per-user limits (docs/serving.md, "Limits"): each flag, else its BULKGEN_ variable, else settings.ServeLimits; 0: off --
MaxActiveJobsOpt = Annotated[Optional[int], typer.Option("--max-active-jobs", min=0, metavar="N", help="Jobs a "
                             "user may have queued, processing or paused at once. [default: 20]")]
MaxSchedulesOpt = Annotated[Optional[int], typer.Option("--max-schedules", min=0, metavar="N",
                            help="Schedules per user. [default: 10]")]
MaxStoredOpt = Annotated[Optional[int], typer.Option("--max-stored-mb", min=0, metavar="MIB", help="The "
                         "articles a user's jobs may store, in MiB. [default: 1024]")]
MaxTemplatesOpt = Annotated[Optional[int], typer.Option("--max-templates", min=0, metavar="N",
                            help="Saved templates per user. [default: 100]")]
WriteRateOpt = Annotated[Optional[float], typer.Option("--write-rate", min=0, metavar="N", help="Writes (POST, "
                         "PUT, DELETE) a second per token, sustained. [default: 5]")]
WriteBurstOpt = Annotated[Optional[int], typer.Option("--write-burst", min=0, metavar="N", help="Writes per "
                          "token at once, before --write-rate applies. [default: 60]")]
HeartbeatOpt = Annotated[float, typer.Option("--heartbeat", min=0.05, hidden=True, help="Seconds between "
                         "heartbeat comments on idle event streams.")]


def serve(
    host: HostOpt = "127.0.0.1", port: PortOpt = 8080, processor: ProcessorOpt = False, cors: CorsOpt = None,
    webhook_allow: WebhookAllowOpt = None, email_allow: EmailAllowOpt = None, store: StoreOpt = None,
    header_timeout: HeadTimeoutOpt = 10.0, body_timeout: BodyTimeoutOpt = 30.0,
    keep_alive_timeout: KeepAliveOpt = 5, write_timeout: WriteTimeoutOpt = 30.0,
    max_connections: MaxConnectionsOpt = 2048, ssl_certfile: SslCertOpt = None, ssl_keyfile: SslKeyOpt = None,
    heartbeat: HeartbeatOpt = 15.0, max_active_jobs: MaxActiveJobsOpt = None, max_schedules: MaxSchedulesOpt = None,
    max_stored_mb: MaxStoredOpt = None, max_templates: MaxTemplatesOpt = None, write_rate: WriteRateOpt = None,
    write_burst: WriteBurstOpt = None, max_streams: MaxStreamsOpt = None, events_retention: RetentionOpt = None,
    run_flags: Optional[dict[str, Optional[object]]] = None,
) -> None:
    """Serve the bulk-job API over HTTP (and, with --processor, process the queue too).

    Every route needs a bearer token (`bulkgen token create --user NAME`).
    Example: bulkgen serve --port 8080 --processor
    """
    _need_the_serve_extra()
    from bulkgen_cli.delivery import netpolicy
    from bulkgen_cli.server.config import ServerConfig
    from bulkgen_cli.server.run import listen, serve as run_server, start_processor
    from bulkgen_cli.store import open_store

    url = settings.store_url(store)
    limits = settings.from_flags(settings.ServeLimits, dict(
        max_active_jobs=max_active_jobs, max_schedules=max_schedules, max_stored_mb=max_stored_mb,
        max_templates=max_templates, write_rate=write_rate, write_burst=write_burst, max_streams=max_streams,
        events_retention=events_retention))
    run_settings = settings.RunSettings.resolve(**(run_flags or {})) if processor else None  # type: ignore[arg-type]
    allow = netpolicy.parse_allow(webhook_allow or [])
    live_tokens, display = _record_policy(store, allow, email_allow, limits)
    tls = _exposure(host, bool(live_tokens), ssl_certfile, ssl_keyfile)
    sock = listen(host, port)
    config = ServerConfig(lambda: open_store(url, "create"), display, tuple(cors or ()), allow,
                          tuple(d.strip().lower() for d in email_allow or ()), heartbeat=heartbeat,
                          limits=limits)
    _announce(f"{'https' if tls else 'http'}://{host}:{port}", display, len(live_tokens), config.cors, processor)
    background = None
    if run_settings is not None:
        from bulkgen_cli.cli.render import PlainView

        background = start_processor(run_settings, lambda: open_store(url, "create"), PlainView())
    connections = settings.ConnectionLimits(header_timeout, body_timeout, keep_alive_timeout, max_connections,
                                            write_timeout)
    run_server(config, sock, background, connections, tls)


def _need_the_serve_extra() -> None:
    """Exit 2 with the install hint when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        note(INSTALL_HINT, "red")
        raise typer.Exit(2) from None


def _exposure(host: str, any_token: bool, ssl_certfile: str | None, ssl_keyfile: str | None) -> Tls | None:
    """Refuse a non-loopback address while no token exists (exit 2); the TLS files, checked; a warning when a
    non-loopback address has none."""
    if not is_loopback(host) and not any_token:
        note(f"Error: refusing to listen on {host} while no API token exists: create one first with "
             "`bulkgen token create --user NAME`.", "red")
        raise typer.Exit(2)
    tls = _tls(ssl_certfile, ssl_keyfile)
    if not is_loopback(host) and tls is None:
        note(f"Warning: {host} is not loopback and there is no TLS: tokens cross the network in clear. Give "
             "--ssl-certfile and --ssl-keyfile, or serve on 127.0.0.1 behind a reverse proxy that speaks HTTPS.",
             "yellow")
    return tls


def _record_policy(store: str | None, allow: Any, email_allow: list[str] | None,
                   limits: ServeLimits) -> tuple[list[ApiToken], str]:
    """Record the server's allow-lists and per-user limits in the store, for every processor's schedule runs
    (design.md, "Quotas"; schedules.permission and quota_of); (the live tokens, the store's display address)."""
    from bulkgen_cli.ops.schedules import SERVE_POLICY

    with open_db(store, "create") as db:
        live_tokens = [t for t in db.list_tokens() if t.revoked_at is None]
        db.put_setting(SERVE_POLICY, {"webhook_allow": list(allow),
                                      "email_allow": [d.strip().lower() for d in email_allow or ()],
                                      "max_active_jobs": limits.max_active_jobs,
                                      "max_stored_mb": limits.max_stored_mb})
        return live_tokens, db.display_url


def _tls(certfile: str | None, keyfile: str | None) -> Tls | None:
    from bulkgen_cli.server.run import Tls

    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise UsageError("--ssl-certfile and --ssl-keyfile go together: give both, or neither for plain HTTP.")
    tls = Tls(certfile, keyfile)
    tls.check()
    return tls


def _announce(base: str, display: str, live_tokens: int, cors: tuple[str, ...], processor: bool) -> None:
    note(f"bulkgen serve: {base}/api (OpenAPI at /openapi.json); store {display}; "
         f"{live_tokens} live token{'s' if live_tokens != 1 else ''}; "
         f"CORS {'for ' + ', '.join(cors) if cors else 'off'}; "
         f"processor {'in this process' if processor else 'not here (run `bulkgen run --forever`)'}.")
    if not live_tokens:
        note("No API token yet: every request answers 401 until `bulkgen token create --user NAME`.", "yellow")


UserArg = Annotated[str, typer.Option("--user", metavar="NAME", help="Whose token: the jobs it submits are "
                    "theirs, and it sees only theirs.", show_default=False)]


def token_create(
    user: UserArg,
    admin: Annotated[bool, typer.Option("--admin", help="The token sees and controls every user's jobs.")] = False,
    email: Annotated[Optional[str], typer.Option("--email", metavar="ADDRESS", help="The user's own address: "
                     "jobs they submit may always e-mail it.", show_default=False)] = None,
    store: StoreOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an API token for a user; it is printed once, and only its hash is stored.

    Example: bulkgen token create --user alice --email alice@example.com
    """
    from bulkgen_cli.ops import tokens

    with open_db(store, "create") as db:
        record, token = tokens.create(db, user, admin, email)
    if json_:
        render_json({**_token_doc(record), "token": token})
    else:
        print(token, flush=True)
    note(f"Token {record.id} for {record.userId}{' (admin)' if admin else ''} created. It is shown this once: "
         "keep it; send it as `Authorization: Bearer TOKEN`. `bulkgen token revoke "
         f"{record.id}` ends it.")


def token_list(
    user: Annotated[Optional[str], typer.Option("--user", metavar="NAME", help="Only this user's tokens.",
                    show_default=False)] = None,
    store: StoreOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List API tokens (never the tokens themselves: they are not stored).

    Example: bulkgen token list --json
    """
    from bulkgen_cli.cli import render

    with open_db(store, "read") as db:
        found = db.list_tokens(user)
    if listed(found, json_, _token_doc, "No API tokens yet: `bulkgen token create --user NAME` makes one."):
        return
    rows = [[t.id, t.userId, "admin" if t.admin else "", t.email or "", render.when(t.created_at),
             "revoked " + render.when(t.revoked_at) if t.revoked_at else "live"] for t in found]
    columns = (("ID", None), ("USER", None), ("ROLE", None), ("E-MAIL", None), ("CREATED", None), ("STATE", None))
    print(render.plain_table(columns, rows))


def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The token's id (from `token list`).",
                        show_default=False)],
    store: StoreOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Revoke an API token: the next request with it answers 401.

    Example: bulkgen token revoke 3f2a91c04be1d6a7
    """
    from bulkgen_cli.ops import tokens

    with open_db(store, "write") as db:
        record = tokens.revoke(db, token_id)
    if json_:
        render_json(_token_doc(record))
    note(f"Token {record.id} of {record.userId} revoked.")


def _token_doc(token: ApiToken) -> dict[str, object]:
    return {"id": token.id, "user": token.userId, "admin": token.admin, "email": token.email,
            "created_at": iso(token.created_at), "revoked_at": iso(token.revoked_at)}


__all__ = ["register", "INSTALL_HINT"]
