"""A submit over HTTP: the body read (JSON or an uploaded file), validated by manifest.py as the CLI does, stored."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from fastapi import Request
from starlette.datastructures import UploadFile

from bulkgen_cli.ops import jobs, schedules
from bulkgen_cli.ops.options import JobOptions, names
from bulkgen_cli.input import manifest, sources, templates
from bulkgen_cli.core import settings
from bulkgen_cli.core.channels import parse_channels
from bulkgen_cli.delivery import netpolicy
from bulkgen_cli.core.errors import ManifestError, Problem, UsageError
from bulkgen_cli.core.model import Priority, utcnow
from bulkgen_cli.core.settings import ServeLimits
from bulkgen_cli.server import config
from bulkgen_cli.server.problems import HttpProblem, too_large
from bulkgen_cli.server.schemas import SubmitOut
from bulkgen_cli.store.base import Store

#: What a JSON body may hold beside the articles (the rest is the articles document): the job options the HTTP
#: submit takes (ops/options.py), and a saved template's name with its rows.
OPTIONS = names(http=True) + ("template", "values")
#: Where problems of a JSON body say they are.
JSON_SOURCE = "request body"
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "yaml", ".csv": "csv"}

REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/SubmitIn"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "an articles file: .yaml, .yml, .json or .csv"},
        "name": {"type": "string"}, "priority": {
            "type": "string", "enum": [p.value for p in Priority],
            "description": "orders your own jobs (high, normal, low); urgent (an admin token only) goes ahead of "
                           "everyone's"},
        "not_before": {"type": "string"}, "notify": {"type": "array", "items": {"type": "string"}},
        "format": {"type": "string", "enum": ["yaml", "csv"]},
        "template": {"type": "string", "description": "a saved template's name: `file` holds its values (rows)"}}}},
}}}


@dataclass
class Form:
    """A submit as read from the request: the articles' text, and the options."""

    text: bytes
    source: str
    fmt: str
    name: str | None = None
    priority: str | None = None
    not_before: str | None = None
    notify: list[str] = field(default_factory=list)
    #: a saved template's name: `text` holds the rows that fill it
    template: str | None = None


async def read(request: Request) -> Form:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return _from_json(await request.body())
    if kind == "multipart/form-data":
        return await _from_upload(request)
    raise HttpProblem(415, "unsupported-media-type", "Send JSON or a file",
                      "send application/json (a bulk_config) or multipart/form-data with a `file` field.")


def _load_json(body: bytes) -> Any:
    """The body's JSON, whose text UTF-8 can hold (JSON itself allows a lone surrogate such as \\ud800)."""
    try:
        doc = json.loads(body)
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise UsageError("the request body holds a lone surrogate (such as \\ud800): its text is not Unicode.") \
            from None
    except (ValueError, RecursionError):
        raise UsageError("the request body is not JSON.") from None
    return doc


def _from_json(body: bytes) -> Form:
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise UsageError("the request body must be a JSON object: {\"bulk_config\": {\"mode\": …, \"items\": […]}}.")
    options = {key: doc.pop(key) for key in OPTIONS if key in doc}
    notify = options.get("notify") or []
    notify = [notify] if isinstance(notify, str) else notify
    for key in ("name", "priority", "not_before", "template"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise UsageError(f"'{key}' must be text.")
    inner = doc.get("bulk_config")
    misplaced = [key for key in OPTIONS if key != "name" and isinstance(inner, dict) and key in inner]
    if misplaced:  # `name` is also an articles file's own key; the other options are the submit's
        raise UsageError(f"'{misplaced[0]}' is an option of the submit, not of the articles: send it beside "
                         "'bulk_config', not inside it.")
    if options.get("template") is not None:  # the rows of a saved template
        if doc:
            raise UsageError("with 'template', send the rows as 'values' and no articles.")
        doc = options.get("values")  # type: ignore[assignment]
    if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
        raise UsageError("'notify' must be a list of channels such as webhook:https://… or email:….")
    text = json.dumps(doc, ensure_ascii=False).encode()
    return Form(text, JSON_SOURCE, "yaml", options.get("name"), options.get("priority"), options.get("not_before"),
                notify, options.get("template"))


async def _from_upload(request: Request) -> Form:
    try:
        form = await request.form(max_files=1, max_fields=20)
    except HttpProblem:
        raise
    except Exception as exc:  # noqa: BLE001  a malformed multipart body is bad input, never a 500
        if type(exc).__name__ == "BodyTooLarge":
            raise
        raise UsageError(f"the multipart body cannot be read: {str(exc)[:120]}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise UsageError("upload the articles file in a `file` field (multipart/form-data).")
    text = await upload.read(manifest.MAX_FILE_BYTES + 1)
    if len(text) > manifest.MAX_FILE_BYTES:
        raise too_large(manifest.MAX_FILE_BYTES)
    source = Path(upload.filename or "upload.yaml").name[:100] or "upload.yaml"
    fmt = str(form.get("format") or "") or SUFFIXES.get(Path(source).suffix.lower(), "")
    if fmt not in ("yaml", "csv"):
        raise UsageError(f"{source}: unknown file type: use .yaml, .yml, .json or .csv (or a `format` field).")
    text_fields = {key: form.get(key) for key in ("name", "priority", "not_before", "template")}
    return Form(text, source, fmt, **{k: v if isinstance(v, str) else None for k, v in text_fields.items()},
                notify=[n for n in form.getlist("notify") if isinstance(n, str)])


def validate(form: Form) -> manifest.Manifest:
    """The articles, checked by manifest.load_text exactly as `bulkgen submit` checks a file."""
    with _json_located(form):
        parsed = sources.manifest_of(source_of(form))
    if form.source == JSON_SOURCE and parsed.name == Path(JSON_SOURCE).stem:  # the document names none
        parsed.name = "Untitled job"
    return parsed


def source_of(form: Form) -> sources.Source:
    """Where the form's articles come from (input/sources.py): its text, or a saved template's name with its rows."""
    if form.template is None:
        return sources.ArticlesText(_text(form), form.fmt, form.source)
    return sources.SavedTemplateRows(form.template, sources.Rows(_text(form), form.fmt, form.source))


def _text(form: Form) -> str:
    """The body's text: UTF-8 (a BOM is fine), as an articles file must be."""
    try:
        return form.text.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError([Problem(form.source, f"is not UTF-8 text (byte {exc.start}); save it as UTF-8.")]) \
            from None


def from_template(db: Store, form: Form, user: str) -> manifest.Manifest:
    """A saved template filled with the form's rows, checked as `submit --template NAME --values ROWS` checks."""
    saved = templates.load_saved(db, user, templates.check_name(form.template or ""))
    with _json_located(form):
        return sources.manifest_of(source_of(form), lambda _: saved)


@contextmanager
def _json_located(form: Form) -> Iterator[None]:
    """A JSON body's problems are in its `bulk_config` (or `values`), not in a file: say so."""
    try:
        yield
    except ManifestError as exc:
        if form.source != JSON_SOURCE:
            raise
        where = "values" if form.template is not None else "bulk_config"
        problems = [replace(p, file=where) if p.file == JSON_SOURCE else p for p in exc.problems]
        subject = exc.subject if form.template is not None else f"'{where}'"
        raise ManifestError(problems, subject) from None


def priority_of(form: Form, admin: bool) -> Priority:
    """The submit's priority: a user's orders their own jobs; `urgent` goes ahead of everyone's, so an admin's only
    (design.md, "Fair turns")."""
    try:
        priority = Priority(form.priority or Priority.normal.value)
    except ValueError:
        raise UsageError(f"priority must be urgent, high, normal or low, got {form.priority!r}.") from None
    if priority is Priority.urgent and not admin:
        raise HttpProblem(403, "forbidden", "Only an admin may queue an urgent job",
                          "priority 'urgent' puts a job ahead of every user's and needs an admin token; use 'high' "
                          "to put this job ahead of your own others.")
    return priority


def store(db: Store, form: Form, user: str, key: str | None, policy: netpolicy.Policy,
          admin: bool = False, limits: ServeLimits | None = None) -> SubmitOut:
    """Validate everything, check the user's quotas (`limits`; None: an admin's, unlimited), then store the job
    with the policy its notifications will follow."""
    priority = priority_of(form, admin)
    parsed = from_template(db, form, user) if form.template is not None else validate(form)
    channels = parse_channels(form.notify)
    netpolicy.check_channels(channels, policy)
    start = settings.parse_when(form.not_before, utcnow()) if form.not_before else None
    options = JobOptions(name=form.name, priority=priority, notify=channels, not_before=start)
    done = jobs.submit(db, parsed, user, idempotency_key=key, notify_policy=policy.to_record(),
                       limits=None if limits is None else config.quota(limits),  # the store checks: one atomic step
                       **options.submit_args())
    bulk, created = done.jobs[0]
    message = ("Bulk generation queued" if created else
               f"Idempotency-Key {key!r} was used before: bulk job {bulk.id} exists; nothing new stored")
    return SubmitOut(success=True, bulk_job_id=bulk.id, total_items=bulk.total_items, message=message,
                     status=bulk.status, created=created)


# -- schedules (docs/commands.md, "schedule") ----------------------------------------------------------------------------


def schedule_parts(body: bytes) -> tuple[dict[str, Any], Form]:
    """A schedule's JSON body: its own fields (schedule, cron, zone), and the submit it makes at each run."""
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise UsageError("the request body must be a JSON object: {\"schedule\": …, \"cron\": …, \"zone\": …, …}.")
    own = {key: doc.pop(key, None) for key in ("schedule", "cron", "zone")}
    if not all(isinstance(v, str) and v.strip() for v in own.values()):
        raise UsageError("a schedule needs 'schedule' (its name), 'cron' and 'zone', each as text.")
    return own, _from_json(json.dumps(doc).encode())


def add_schedule(db: Store, body: bytes, user: str, policy: netpolicy.Policy,
                 admin: bool = False, limits: ServeLimits | None = None) -> dict[str, Any]:
    """Check the articles (or the saved template and its rows) and the notifications, then store the schedule.
    `limits`: the user's quotas (None: an admin's: no schedules limit, and any cron)."""
    own, form = schedule_parts(body)
    priority = priority_of(form, admin)
    channels = parse_channels(form.notify)
    netpolicy.check_channels(channels, policy)
    if form.template is not None:
        from_template(db, form, user)
    else:
        validate(form)
    source = sources.record(source_of(form))
    options = JobOptions(name=form.name, priority=priority, notify=channels).record() | {
        "notify_policy": policy.to_record(), "limited": limits is not None}  # schedules.permission, quota_of
    return schedules.document(schedules.add(db, user, own["schedule"], own["cron"], own["zone"], source, options,
                                            limited=limits is not None,
                                            max_count=0 if limits is None else limits.max_schedules))
