"""The HTTP API (design.md, "The HTTP server"): parse, call the library (jobs.py, control.py), render.

Routes and shapes follow the story: `POST /api/bulk-generate`, `GET
/api/bulk-generate/{id}`, `POST /api/bulk-generate/{id}/pause|resume|cancel|retry-failed`,
`GET /api/bulk-generate`, and the live events. Errors are problem details
(problems.py) with the CLI's exit-code meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bulkgen_cli import __version__
from bulkgen_cli.core import settings
from bulkgen_cli.delivery.notify import AtOnce
from bulkgen_cli.ops import control, items, jobs, schedules
from bulkgen_cli.ops.documents import bulk_dict, progress_dict, status_document
from bulkgen_cli.ops.tokens import token_hash
from bulkgen_cli.core.errors import BulkgenError
from bulkgen_cli.input import templates
from bulkgen_cli.input.manifest import MAX_FILE_BYTES
from bulkgen_cli.core.model import BulkStatus, SavedTemplate, SaveOutcome, iso
from bulkgen_cli.server import live, quotas, submission
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.server.auth import Caller, bearer, caller
from bulkgen_cli.server.config import ENVELOPE_BYTES, ServerConfig
from bulkgen_cli.server.edge import AccessLog, Headers
from bulkgen_cli.server.limits import BodyLimit, BodyTooLarge
from bulkgen_cli.server.page import add_page
from bulkgen_cli.server.problems import MEDIA_TYPE, HttpProblem, from_error, responses, too_large, validation
from bulkgen_cli.server.schemas import (
    BulkJobOut, ControlOut, DoneOut, ItemControlOut, ItemRecordOut, ScheduleIn, ScheduleOut, ScheduleStateOut,
    StatusOut, SubmitIn, SubmitOut, TemplateIn, TemplateOut, TokenUserOut,
)

BODY_LIMIT = MAX_FILE_BYTES + ENVELOPE_BYTES


def at_once(store: Any) -> AtOnce:
    """An end a request records is notified before it is answered, as the CLI's are (ops.control.notify_end)."""
    return AtOnce(store, settings.smtp, settings.notify_retry_delays)

BulkId = Annotated[str, Path(description="The bulk job's id", max_length=100)]
ItemRef = Annotated[str, Path(description="An item's id, or a prefix of it (at least 4 digits), as `bulkgen show` "
                              "takes it", max_length=100)]
Me = Annotated[Caller, Depends(caller)]
Credentials = Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]
ScheduleName = Annotated[str, Path(max_length=100, description="the schedule's name")]
TemplateName = Annotated[str, Path(max_length=100, description="the template's name")]
LastId = Annotated[Optional[int], Header(alias="Last-Event-ID", ge=0, le=2**62,
                                         description="resume after this event id (the browser sends it)")]
FOLLOW_UP = {
    control.Action.pause: "No new item of it starts; an item in flight finishes and is recorded.",
    control.Action.resume: "It is back in the queue at its old place.",
    control.Action.cancel: "Its queued items are cancelled; an item in flight is aborted.",
    control.Action.retry_failed: "Its failed items are queued again.",
}


def problem_response(problem: HttpProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


def create_app(config: ServerConfig) -> FastAPI:
    access = StoreAccess(config.open_store, config.shared_store)
    poller = live.Poller(access, config.poll)
    streams = live.Streams(access, config.limits.max_streams)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        poller.start()
        tasks = [asyncio.create_task(work) for work in (live.watchdog(poller), streams.end_revoked(),
                                                        live.prune_forever(access, config.limits.retention_seconds))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await poller.stop()
            access.close()

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, and nothing here is fetched
    # from elsewhere (the dashboard neither); /openapi.json goes into any viewer the reader has.
    app = FastAPI(title="bulkgen", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  dependencies=[Depends(quotas.write_rate)],
                  description="Queue 10-50 articles as one bulk job; follow it live. Every route but this "
                              "document needs `Authorization: Bearer TOKEN` (`bulkgen token create`).")
    app.state.access, app.state.poller, app.state.config = access, poller, config
    app.state.write_buckets = quotas.TokenBuckets(config.limits.write_rate, config.limits.write_burst)
    app.state.user_locks = quotas.UserLocks()
    _errors(app)
    app.add_middleware(BodyLimit, limit=BODY_LIMIT)
    app.add_middleware(Headers)
    if config.cors:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"])
    app.add_middleware(AccessLog)  # outermost: it logs every answer, a refused one too
    # No redirect from `/path/` to `/path`: Starlette's would name the client's Host header in its Location.
    app.router.redirect_slashes = False
    _job_routes(app, access)
    _control_routes(app, access)
    _item_routes(app, access)
    _template_routes(app, access)
    _schedule_routes(app, access)
    _event_routes(app, access, poller, streams, config)
    add_page(app)
    _document_bodies(app, SubmitIn, ScheduleIn)
    return app


def _document_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put the JSON bodies the routes read themselves (no parameter declares them) into components.schemas,
    so that every `$ref` of the document resolves."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = plain().setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            quotas.document_rate_limit(app.openapi_schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _errors(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HttpProblem)
        return problem_response(exc)

    async def on_bulkgen(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BulkgenError)
        return problem_response(from_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation(list(exc.errors())))

    async def on_too_large(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(too_large(BODY_LIMIT))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else "the request failed."
        return problem_response(HttpProblem(exc.status_code, kind, detail, detail, 2, headers=dict(exc.headers) if exc.headers else None))

    app.add_exception_handler(HttpProblem, on_problem)
    app.add_exception_handler(BulkgenError, on_bulkgen)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(BodyTooLarge, on_too_large)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)


async def on_disconnect(request: Request, exc: Exception) -> Response:
    """The client left before its body arrived: nobody reads an answer, and it is no error of the server's."""
    return Response(status_code=400)


def _job_routes(app: FastAPI, access: StoreAccess) -> None:

    @app.post("/api/bulk-generate", status_code=201, response_model=SubmitOut, tags=["bulk jobs"],
              responses={200: {"model": SubmitOut, "description": "Idempotency-Key used before: the job it made"},
                         **responses(400, 401, 403, 404, 413, 415, 422, 429, 503)},
              openapi_extra=submission.REQUEST_BODY)
    async def submit(request: Request, me: Me,
                     idempotency_key: Annotated[Optional[str], Header(alias="Idempotency-Key", max_length=200)] = None,
                     ) -> Any:
        """Validate the articles (JSON `bulk_config`, or an uploaded YAML/CSV `file`) and queue them."""
        form = await submission.read(request)
        config: ServerConfig = request.app.state.config
        policy = config.policy(me.email)
        locks: quotas.UserLocks = request.app.state.user_locks

        def store() -> SubmitOut:
            with locks.hold(me.user):  # a re-opening of an ended job cannot slip between (quotas.check_reopen)
                return access.call(lambda s: submission.store(
                    s, form, me.user, idempotency_key, policy, me.admin, None if me.admin else config.limits))

        answer = await run_in_threadpool(store)
        return JSONResponse(answer.model_dump(), status_code=201 if answer.created else 200)

    @app.get("/api/bulk-generate", response_model=list[BulkJobOut], tags=["bulk jobs"],
             responses=responses(401, 422, 503))
    def list_jobs(me: Me, status: Optional[BulkStatus] = None,
                  limit: Annotated[int, Query(ge=1, le=10_000)] = 20) -> Any:
        """Your bulk jobs (everyone's for an admin token), newest first; as `bulkgen list --json`."""
        bulks = access.call(lambda s: jobs.list_jobs(s, me.user, me.admin, limit, status))
        return [bulk_dict(b) for b in bulks]

    @app.get("/api/bulk-generate/{bulk_id}", response_model=StatusOut, tags=["bulk jobs"],
             response_model_exclude_unset=True, responses=responses(401, 404, 422, 503))
    def status(bulk_id: BulkId, me: Me) -> Any:
        """One job: {bulk_job, jobs, progress}, as `bulkgen status ID --json`."""
        def read(store: Any) -> dict[str, Any]:
            bulk = jobs.as_seen(store, jobs.visible(store, bulk_id, me.user, me.admin))
            return status_document(bulk, store.list_items(bulk.id))

        return access.call(read)

    @app.get("/api/me", response_model=TokenUserOut, tags=["tokens"], responses=responses(401))
    def whoami(me: Me) -> Any:
        """Whose token this is."""
        return {"user": me.user, "admin": me.admin, "email": me.email}


def _control_routes(app: FastAPI, access: StoreAccess) -> None:
    for action in control.Action:
        _control_route(app, access, action)


def _control_route(app: FastAPI, access: StoreAccess, action: control.Action) -> None:

    def act(bulk_id: BulkId, me: Me, request: Request) -> Any:
        limits = None if me.admin else request.app.state.config.limits

        def apply(store: Any) -> control.Result:
            if action is control.Action.retry_failed:
                quotas.check_reopen(store, me.user, limits, jobs.visible(store, bulk_id, me.user, me.admin))
            return jobs.apply(store, action, bulk_id, me.user, me.admin, at_once(store))

        with request.app.state.user_locks.hold(me.user):
            result = access.call(apply)
        bulk = result.bulk
        message = (f"Bulk job {bulk.id}: {result.previous.value} -> {bulk.status}. {FOLLOW_UP[action]}"
                   if result.changed else f"Bulk job {bulk.id} is already {bulk.status}; nothing to do.")
        return {"success": True, "message": message, "changed": result.changed, "previous": result.previous.value,
                "bulk_job": bulk_dict(bulk), "progress": progress_dict(bulk)}

    act.__name__ = action.value.replace("-", "_")
    act.__doc__ = f"{action.value.capitalize()} a bulk job, by the state rules (docs/guide.md, The state rules)."
    app.post(f"/api/bulk-generate/{{bulk_id}}/{action.value}", response_model=ControlOut, tags=["bulk jobs"],
             responses=responses(401, 404, 409, 422, 503))(act)


def _item_routes(app: FastAPI, access: StoreAccess) -> None:
    """One article (docs/commands.md, "Single articles"): the item with its text; retry and cancel one item."""

    @app.get("/api/items/{item_ref}", response_model=ItemRecordOut, tags=["items"],
             response_model_exclude_unset=True, responses=responses(400, 401, 404, 422, 503))
    def item(item_ref: ItemRef, me: Me) -> Any:
        """One item with its article, as `bulkgen show ITEM --json`."""
        return access.call(lambda s: items.record(items.show(s, item_ref, me.user, me.admin)))

    def acting(action: items.ItemAction) -> Any:
        def act(item_ref: ItemRef, me: Me, request: Request) -> Any:
            limits = None if me.admin else request.app.state.config.limits

            def work(store: Any) -> dict[str, Any]:
                if action is items.ItemAction.retry:
                    quotas.check_reopen(store, me.user, limits, items.show(store, item_ref, me.user, me.admin).bulk)
                result = items.apply(store, action, item_ref, me.user, me.admin, notifier=at_once(store))
                bulk = store.get_bulk(result.bulk.id) or result.bulk
                message = (f"Item {result.short_id}: {result.previous.value} -> {result.item.status}."
                           if result.changed else f"Item {result.short_id} is already {result.item.status}.")
                return {"success": True, "message": message, "changed": result.changed,
                        "previous": result.previous.value, "bulk_job": bulk_dict(bulk), "progress": progress_dict(bulk),
                        "item": items.record(items.Shown(result.item, bulk, result.short_id))}

            with request.app.state.user_locks.hold(me.user):
                return access.call(work)

        act.__name__ = f"item_{action.value}"
        act.__doc__ = f"{action.value.capitalize()} one item, by the item state rules (docs/commands.md, 'show, item retry, item cancel')."
        return act

    for action in items.ItemAction:
        app.post(f"/api/items/{{item_ref}}/{action.value}", response_model=ItemControlOut, tags=["items"],
                 response_model_exclude_unset=True, responses=responses(400, 401, 404, 409, 422, 503))(acting(action))


def _template_routes(app: FastAPI, access: StoreAccess) -> None:
    """Saved templates (docs/files.md, "Templates"), each user's own; a submit fills one with `template` and `values`."""
    def doc(saved: SavedTemplate, text: bool = False) -> dict[str, Any]:
        out = {"name": saved.name, "mode": saved.mode, "placeholders": saved.placeholders, "source": saved.source,
               "created_at": iso(saved.created_at), "updated_at": iso(saved.updated_at)}
        return {**out, "text": saved.text} if text else out

    @app.get("/api/templates", response_model=list[TemplateOut], tags=["templates"],
             response_model_exclude_unset=True, responses=responses(401, 503))
    def list_templates(me: Me) -> Any:
        """Your saved templates, by name."""
        return [doc(t) for t in access.call(lambda s: templates.list_saved(s, me.user))]

    @app.get("/api/templates/{name}", response_model=TemplateOut, tags=["templates"],
             responses=responses(401, 404, 422, 503))
    def get_template(name: TemplateName, me: Me) -> Any:
        """One saved template with its text."""
        return doc(access.call(lambda s: templates.load_saved(s, me.user, name)), text=True)

    @app.put("/api/templates/{name}", response_model=TemplateOut, status_code=201, tags=["templates"],
             response_model_exclude_unset=True,
             responses={200: {"model": TemplateOut, "description": "replaced"},
                        **responses(400, 401, 409, 413, 422, 429)})
    def save_template(name: TemplateName, body: TemplateIn, me: Me, request: Request) -> Any:
        """Check a template and keep it under `name` (409 when you have one of that name, unless `replace`; 429
        past your templates limit)."""
        most = 0 if me.admin else request.app.state.config.limits.max_templates
        saved, outcome = access.call(lambda s: templates.save(s, me.user, name, body.text, source=f"template '{name}'",
                                                              replace=body.replace, max_count=most))
        return JSONResponse(doc(saved), status_code=201 if outcome is SaveOutcome.created else 200)

    @app.delete("/api/templates/{name}", response_model=DoneOut, tags=["templates"],
                responses=responses(400, 401, 404, 422, 503))
    def remove_template(name: TemplateName, me: Me) -> Any:
        """Delete one of your saved templates."""
        access.call(lambda s: templates.remove(s, me.user, name))
        return {"success": True, "message": f"Template {name!r} removed."}


def _schedule_routes(app: FastAPI, access: StoreAccess) -> None:
    """Recurring schedules (docs/commands.md, "schedule"), each user's own; `bulkgen run --forever` (or --processor) runs them."""
    @app.get("/api/schedules", response_model=list[ScheduleOut], tags=["schedules"], responses=responses(401, 503))
    def list_schedules(me: Me) -> Any:
        """Your schedules (everyone's for an admin token)."""
        return [schedules.document(x) for x in access.call(lambda s: schedules.list_for(s, me.user, me.admin))]

    @app.get("/api/schedules/{name}", response_model=ScheduleOut, tags=["schedules"],
             responses=responses(401, 404, 422, 503))
    def get_schedule(name: ScheduleName, me: Me) -> Any:
        """One of your schedules."""
        return schedules.document(access.call(lambda s: schedules.get(s, me.user, name)))

    @app.post("/api/schedules", response_model=ScheduleOut, status_code=201, tags=["schedules"],
              responses=responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/ScheduleIn"}}}}})
    async def add_schedule(request: Request, me: Me) -> Any:
        """Add a schedule: at every time of `cron` in `zone`, the articles (or a saved template and its rows) are
        queued as one bulk job. Checked as a submit is checked; its notifications follow the HTTP rules."""
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HttpProblem(415, "unsupported-media-type", "Send JSON", "a schedule is sent as application/json.")
        body = await request.body()
        config: ServerConfig = request.app.state.config
        return await run_in_threadpool(access.call, lambda s: submission.add_schedule(
            s, body, me.user, config.policy(me.email), me.admin, None if me.admin else config.limits))

    for action in ("pause", "resume"):
        _schedule_state_route(app, access, action)

    @app.post("/api/schedules/{name}/run", response_model=SubmitOut, status_code=201, tags=["schedules"],
              responses=responses(401, 404, 413, 422, 429, 503))
    def run_schedule(name: ScheduleName, me: Me, request: Request) -> Any:
        """Queue the schedule's articles now, once, outside its times (within your per-user limits)."""
        with request.app.state.user_locks.hold(me.user):
            bulk = access.call(lambda s: schedules.run_now(s, me.user, name)).jobs[0][0]
        return {"success": True, "bulk_job_id": bulk.id, "total_items": bulk.total_items, "status": bulk.status,
                "message": f"Schedule {name!r} queued bulk job {bulk.id} now", "created": True}

    @app.delete("/api/schedules/{name}", response_model=DoneOut, tags=["schedules"],
                responses=responses(401, 404, 422, 503))
    def remove_schedule(name: ScheduleName, me: Me) -> Any:
        """Remove a schedule (the bulk jobs it made stay)."""
        access.call(lambda s: schedules.remove(s, me.user, name))
        return {"success": True, "message": f"Schedule {name!r} removed; the jobs it queued stay."}


def _schedule_state_route(app: FastAPI, access: StoreAccess, action: str) -> None:
    def act(name: ScheduleName, me: Me) -> Any:
        schedule, changed = access.call(lambda s: schedules.set_state(s, me.user, name, action))
        message = f"Schedule {name!r}: {schedule.status}." if changed else f"Schedule {name!r} is already {schedule.status}."
        return {"success": True, "message": message, "changed": changed, "schedule": schedules.document(schedule)}

    act.__name__ = f"{action}_schedule"
    act.__doc__ = f"{action.capitalize()} a schedule."
    app.post(f"/api/schedules/{{name}}/{action}", response_model=ScheduleStateOut, tags=["schedules"],
             responses=responses(401, 404, 409, 422, 503))(act)


def _event_routes(app: FastAPI, access: StoreAccess, poller: live.Poller, streams: live.Streams,
                  config: ServerConfig) -> None:
    """The event streams (design.md, "Live progress") and `/healthz`, which says whether they flow."""
    stream_doc: dict[int | str, dict[str, Any]] = {200: {"description": "text/event-stream: `id` is the change number, `event` item.started, "
                                       "item.completed, item.failed, item.cancelled, item.queued, bulk.STATUS, or "
                                       "reset (read your jobs again: the events since Last-Event-ID are no longer kept)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
    too_many = {429: {**responses(401)[401], "description": "Too many event streams open with this token"}}
    refusal = problem_response(HttpProblem(
        429, "too-many-streams", "Too many event streams",
        f"this token has {config.limits.max_streams} event streams open, the most the server allows (its --max-streams); "
        "close one, or try again later.", headers={"Retry-After": str(live.STREAM_RETRY_AFTER)}))

    def sse(watch: live.Watch, last_id: int | None, credentials: HTTPAuthorizationCredentials | None) -> Response:
        assert credentials is not None  # `Me` refused the request otherwise
        return live.EventStream(poller, streams, token_hash(credentials.credentials), watch, last_id,
                                config.heartbeat, config.stopping,
                                lambda work: run_in_threadpool(access.call, work), refusal)

    @app.get("/api/events", response_class=StreamingResponse, tags=["events"],
             responses={**stream_doc, **responses(401, 422), **too_many})
    def all_events(me: Me, credentials: Credentials, last_event_id: LastId = None) -> Response:
        """Live state changes of your jobs (everyone's for an admin) as Server-Sent Events."""
        return sse(live.Watch(me.user, me.admin), last_event_id, credentials)

    @app.get("/api/bulk-generate/{bulk_id}/events", response_class=StreamingResponse, tags=["events"],
             responses={**stream_doc, **responses(401, 404, 422), **too_many})
    def job_events(bulk_id: BulkId, me: Me, credentials: Credentials, last_event_id: LastId = None) -> Response:
        """Live state changes of one job as Server-Sent Events; `Last-Event-ID` resumes without loss."""
        bulk = access.call(lambda s: jobs.visible(s, bulk_id, me.user, me.admin))
        return sse(live.Watch(me.user, me.admin, bulk.id), last_event_id, credentials)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        """200 while live progress flows, 503 while the change log's reader is stuck; no token, no data."""
        ok = poller.trouble() is None
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})


__all__ = ["create_app", "SubmitIn"]
