"""Errors as RFC 9457 problem details, carrying the CLI's exit-code meaning and its located problems."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pydantic import BaseModel, Field

from bulkgen_cli.core.errors import (
    BulkgenError, InvalidTransition, ManifestError, NoStore, NotFound, Problem, QuotaExceeded, StoreUnavailable,
    UsageError,
)
from bulkgen_cli.delivery.netpolicy import Refused

logger = logging.getLogger("uvicorn.error")
MIB = 1024 * 1024

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:bulkgen:problem:"


class LocatedProblem(BaseModel):
    """One problem of an articles file, located as the CLI locates it."""

    file: str | None = None
    message: str
    item: int | None = Field(None, description="1-based position of the item in the file")
    line: int | None = None
    field: str | None = None
    row: int | None = Field(None, description="a template's values: the 1-based row")
    column: str | None = Field(None, description="a template's values: the column")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(..., description="urn:bulkgen:problem:<kind>")
    title: str
    status: int
    detail: str
    exit_code: int = Field(..., description="what `bulkgen` would exit with for the same error (docs/settings.md, Exit codes)")
    problems: list[LocatedProblem] = Field(default_factory=list)


class HttpProblem(Exception):
    """A problem raised by the server itself (401, 413, …)."""

    def __init__(self, status: int, kind: str, title: str, detail: str, exit_code: int = 2,
                 headers: dict[str, str] | None = None, problems: list[Problem] | None = None):
        super().__init__(detail)
        self.status, self.kind, self.title, self.detail = status, kind, title, detail
        self.exit_code, self.headers, self.problems = exit_code, headers or {}, problems or []

    def body(self) -> dict[str, Any]:
        return {"type": TYPE_PREFIX + self.kind, "title": self.title, "status": self.status, "detail": self.detail,
                "exit_code": self.exit_code, "problems": [dataclasses.asdict(p) for p in self.problems]}


def unauthorized(detail: str) -> HttpProblem:
    return HttpProblem(401, "unauthorized", "A valid bearer token is needed", detail,
                       headers={"WWW-Authenticate": 'Bearer realm="bulkgen"'})


def too_large(limit: int) -> HttpProblem:
    return HttpProblem(413, "too-large", "The request body is too large",
                       f"the request body is over {limit:,} bytes; an articles file may hold at most 1 MiB.")


def from_error(exc: BulkgenError) -> HttpProblem:
    """The problem for a library error: the same sentence the CLI prints, and its exit code."""
    code = exc.exit_code
    if isinstance(exc, QuotaExceeded):
        return quota_problem(exc)
    if isinstance(exc, ManifestError):
        count = len(exc.problems)
        detail = f"{exc.subject} has {count} problem{'s' if count > 1 else ''}; nothing was stored."
        return HttpProblem(422, "invalid-articles", "The articles are not valid", detail, code, problems=exc.problems)
    if isinstance(exc, Refused):
        if exc.why:  # the operator's detail, never the user's (netpolicy.not_reachable)
            logger.info("refused a notification target (%s): %s", exc.why, exc)
        return HttpProblem(422, "notification-refused", "A notification target is not allowed", http_words(exc), code)
    if isinstance(exc, UsageError):
        return HttpProblem(400, "bad-request", "The request is not acceptable", http_words(exc), code)
    if isinstance(exc, NotFound):
        return HttpProblem(404, "not-found", "Not found for this token", http_words(exc), code)
    if isinstance(exc, InvalidTransition):
        return HttpProblem(409, "invalid-state", "Not allowed in the job's current state", http_words(exc), code)
    if isinstance(exc, (StoreUnavailable, NoStore)):
        return unavailable(exc, "store-unavailable", "The store cannot be used")
    # Any other error by the meaning of its exit code (a name taken is 4, as a state rule is).
    status, kind, title = BY_EXIT_CODE.get(code, (500, "error", "The request failed"))
    if status >= 500:
        return unavailable(exc, kind, title, status)
    return HttpProblem(status, kind, title, http_words(exc), code)


def unavailable(exc: BulkgenError, kind: str, title: str, status: int = 503) -> HttpProblem:
    """A fault of the server's side: its sentence (which may name a file, a host, a setting) goes to the
    server's log; the answer only says that it is the server's and where the operator reads why."""
    logger.warning("answered %d: %s", status, exc.for_http())
    return HttpProblem(status, kind, title, "the server cannot do this now; its operator finds the reason in the "
                       "server's log.", exc.exit_code)


#: Flags whose checks the HTTP routes share (a submit's notify, a schedule's cron and zone): a message that
#: opens with the flag opens with the field's name over HTTP.
FLAG_FIELDS = {"--notify ": "notify ", "--cron ": "cron ", "--zone ": "zone ", "--not-before ": "not_before "}


def http_words(exc: BulkgenError) -> str:
    """The error's message as an HTTP answer says it: no CLI flag or command in it."""
    text = exc.for_http()
    for flag, name in FLAG_FIELDS.items():
        if text.startswith(flag):
            return name + text[len(flag):]
    return text


#: Errors without a mapping of their own, by their exit code.
BY_EXIT_CODE = {2: (400, "bad-request", "The request is not acceptable"), 3: (404, "not-found", "Not found"),
                4: (409, "conflict", "Not allowed now"), 5: (503, "unavailable", "A service it needs is unavailable")}


def validation(errors: list[Any]) -> HttpProblem:
    """FastAPI's own validation errors (a bad query or path parameter) as problem details."""
    located = []
    for error in errors[:50]:
        where = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        located.append(Problem(file="request", message=str(error.get("msg", "invalid")),
                               field=".".join(where) or None))
    return HttpProblem(422, "invalid-request", "The request is not valid",
                       f"the request has {len(located)} problem{'s' if len(located) != 1 else ''}.", 2,
                       problems=located)


#: Problem responses for the OpenAPI document, by status.
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {400: "Bad request", 401: "No valid bearer token", 403: "Only an admin may do this",
                 404: "Not found for this token",
                 409: "Not allowed in the job's current state", 413: "Request body over 1 MiB",
                 415: "Neither JSON nor a multipart upload", 422: "Not valid (located problems)",
                 429: "Over a limit (which one, and how to raise it, in `detail`)", 503: "Store unavailable"}
    return {s: {"model": ProblemDetails, "description": described[s],
                "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}}
            for s in statuses}


def quota_problem(exc: QuotaExceeded) -> HttpProblem:
    """The answer to a new job or template over a limit (the store refused it, store/rules.py): 429 for the
    active-jobs, schedules and templates limits, 413 for the stored bytes, each saying which limit and how to raise it."""
    if exc.which == "schedules":
        return HttpProblem(429, "too-many-schedules", "Too many schedules",
                           f"you have {exc.have} schedules; the limit is {exc.limit} per user. Remove one first; "
                           "the operator raises the limit with `bulkgen serve --max-schedules N` "
                           "(BULKGEN_MAX_SCHEDULES).", exc.exit_code)
    if exc.which == "templates":
        return HttpProblem(429, "too-many-templates", "Too many templates",
                           f"you have {exc.have} saved templates; the limit is {exc.limit} per user. Delete one "
                           "first, or replace one of yours (`replace`); the operator raises the limit with "
                           "`bulkgen serve --max-templates N` (BULKGEN_MAX_TEMPLATES).", exc.exit_code)
    if exc.which == "active_jobs":
        return HttpProblem(429, "too-many-active-jobs", "Too many active jobs",
                           f"you have {exc.have} active jobs (queued, processing or paused); the limit is "
                           f"{exc.limit} per user. Wait for one to end or cancel one; the operator raises the limit "
                           "with `bulkgen serve --max-active-jobs N` (BULKGEN_MAX_ACTIVE_JOBS).",
                           exc.exit_code, headers={"Retry-After": "60"})
    return HttpProblem(413, "storage-quota", "Over the stored-bytes limit",
                       f"your jobs store {exc.have / MIB:.1f} MiB of articles and this one adds "
                       f"{exc.adds / MIB:.1f} MiB; the limit is {exc.limit // MIB} MiB per user. The "
                       "operator raises it with `bulkgen serve --max-stored-mb N` (BULKGEN_MAX_STORED_MB).",
                       exc.exit_code)
