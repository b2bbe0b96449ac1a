"""One declaration per field (design.md, "One declaration per field").

A bulk job's and an item's fields are declared once, in core/model.py (`model.declared`). The JSON documents
(ops/documents.py) are derived from them; what is not derived is checked here against them: the server's
response models (server/schemas.py), the store's field tables (store/rules.py) and the SQLite columns. A field
added to the model alone fails one of these.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import typing

import pytest

from bulkgen_cli.core.model import EVERY_DOCUMENT, FULL_DOCUMENT, NO_DOCUMENT, REQUIRED_FIELD, BulkJob, Item
from bulkgen_cli.ops import documents
from bulkgen_cli.server import schemas
from bulkgen_cli.store import rules

RECORDS = (BulkJob, Item)


def stored(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record) if f.metadata["stored"]}


def json_type(annotation: typing.Any) -> tuple[typing.Any, bool]:
    """(the JSON type, nullable) of a model's or a pydantic model's annotation: a time is a string."""
    args = typing.get_args(annotation)
    nullable = type(None) in args
    if nullable:
        (annotation,) = [a for a in args if a is not type(None)]
    base = typing.get_origin(annotation) or annotation
    if base is list:
        return (list, typing.get_args(annotation)), nullable
    return {dt.datetime: str}.get(base, base), nullable


def shown(record: type, documents_of: tuple[str | None, ...]) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(record)
    return {f.name: json_type(hints[f.name]) for f in dataclasses.fields(record) if f.metadata["document"] in documents_of}


def outline(model: type) -> dict[str, typing.Any]:
    return {name: json_type(f.annotation) for name, f in model.model_fields.items()}


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_field_says_where_it_shows_and_whether_it_is_stored(record):
    for f in dataclasses.fields(record):
        assert f.metadata.get("document", "?") in (EVERY_DOCUMENT, FULL_DOCUMENT, NO_DOCUMENT), f.name
        assert isinstance(f.metadata.get("stored"), bool), f"{record.__name__}.{f.name}: declare it with model.declared"


def check(model: type, fields: dict[str, typing.Any], beside: dict[str, typing.Any]) -> None:
    """The response model has each field, with its JSON type, nullable if the field is; and nothing else."""
    out = outline(model)
    for name, (kind, nullable) in fields.items():
        assert name in out, f"{model.__name__} lacks {name}: add it to server/schemas.py"
        assert out[name][0] == kind, f"{model.__name__}.{name} is {out[name][0]}, the model's field {kind}"
        assert out[name][1] or not nullable, f"{model.__name__}.{name} must be Optional: the model's may be None"
    extra = set(out) - set(fields) - set(beside)
    assert not extra, f"{model.__name__} has {sorted(extra)}, which no model field declares for its document"


def test_the_servers_bulk_job_model_has_the_documents_fields():
    check(schemas.BulkJobOut, shown(BulkJob, (EVERY_DOCUMENT, FULL_DOCUMENT)), {})
    full = {name for name, (kind, _) in shown(BulkJob, (FULL_DOCUMENT,)).items()}
    assert all(not schemas.BulkJobOut.model_fields[name].is_required() for name in full)  # `list` leaves them out


def test_the_servers_item_models_have_the_documents_fields():
    main = {name: json_type(schemas.ItemOut.model_fields[name].annotation) for names in REQUIRED_FIELD.values()
            for name in names}
    check(schemas.ItemOut, shown(Item, (EVERY_DOCUMENT,)), {"item_id": None, **main})
    record_only = {"short_id", "bulk_job_name", "request_seconds", "waited_seconds", "front_matter", "text"}
    check(schemas.ItemRecordOut, shown(Item, (EVERY_DOCUMENT, FULL_DOCUMENT)),
          {"item_id": None, **main, **dict.fromkeys(record_only)})


def test_the_documents_say_nothing_the_servers_models_do_not_declare(store):
    """Nothing reaches an HTTP answer through `extra="allow"` alone (turned_down_items did)."""
    from tests.conftest import submit

    bulk = submit(store)
    items = store.list_items(bulk.id)
    doc = documents.status_document(store.get_bulk(bulk.id), items)
    assert set(doc["bulk_job"]) == set(schemas.BulkJobOut.model_fields)
    assert "turned_down_items" in doc["bulk_job"]
    for item in doc["jobs"]:
        assert set(item) <= set(schemas.ItemOut.model_fields)
    full = documents.item_dict(items[0], full=True)
    assert set(full) <= set(schemas.ItemRecordOut.model_fields)


def test_the_store_tables_list_the_stored_fields():
    assert {f.name for f in rules.BULK_FIELDS} == stored(BulkJob)
    assert {f.name for f in rules.ITEM_FIELDS} == stored(Item)


def test_a_fresh_sqlite_store_has_a_column_for_every_stored_field(tmp_path):
    from bulkgen_cli.store.sqlite import SqliteStore

    SqliteStore(tmp_path / "store.db").close()
    db = sqlite3.connect(tmp_path / "store.db")
    try:
        tables = {name: {row[1] for row in db.execute(f"PRAGMA table_info({name})")}  # noqa: S608 (fixed names)
                  for name in ("bulk_jobs", "generation_jobs")}
    finally:
        db.close()
    assert stored(BulkJob) - tables["bulk_jobs"] == set(), "add the column to store/sqlite_schema.py (SCHEMA and a MIGRATIONS step)"
    assert stored(Item) - tables["generation_jobs"] == set(), "add the column to store/sqlite_schema.py (SCHEMA and a MIGRATIONS step)"


# -- the job options (ops/options.py): submit, schedule add and the HTTP submit take each ------------------------


def flags(*path: str) -> set[str]:
    """Every --flag of a bulkgen command, as its parser (click) takes them."""
    import typer

    from bulkgen_cli.cli.main import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in param.opts}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_submit_and_schedule_add_take_every_job_option():
    from bulkgen_cli.ops import options

    assert {flag(n) for n in options.names()} <= flags("submit")
    assert {flag(n) for n in options.names(scheduled=True)} <= flags("schedule", "add")


def test_the_http_submit_takes_every_http_job_option():
    from bulkgen_cli.ops import options
    from bulkgen_cli.server import submission

    http = set(options.names(http=True))
    assert http <= set(schemas.SubmitIn.model_fields)
    assert http <= {f.name for f in dataclasses.fields(submission.Form)}
    form = submission.REQUEST_BODY["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert http <= set(form)
    assert set(submission.OPTIONS) == http | {"template", "values"}


def test_a_schedule_keeps_the_options_it_was_given():
    from bulkgen_cli.core.model import Priority, QualityPolicy
    from bulkgen_cli.ops.options import JobOptions

    given = JobOptions(name="n", mode="keywords", priority=Priority.high, notify=["email:a@example.com"],
                       quality=QualityPolicy.retry, quality_ratio=0.5)
    assert JobOptions.from_record(given.record()) == given
    assert JobOptions.from_record({"name": None, "priority": "low"}) == JobOptions(priority=Priority.low)  # older


# -- every job option reaches the job, from every front end (review of issue 19: the options are declared once
# but handed on by hand, so an option a front end takes and never passes on was dropped in silence) -----------

#: For each job option but `mode` (the file's own, checked where files are read): a value that is not its
#: default, as the CLI takes it, as HTTP takes it (None: HTTP does not), and how the stored job shows it.
OPTION_VALUES = {
    "name": (["--name", "Wired"], "Wired", lambda bulk: bulk.name == "Wired"),
    "priority": (["--priority", "high"], "high", lambda bulk: bulk.priority == "high"),
    "not_before": (["--not-before", "+2h"], "+2h", lambda bulk: bulk.not_before is not None),
    "notify": (["--notify", "email:ops@example.com"], ["email:ops@example.com"],
               lambda bulk: bulk.notify == ["email:ops@example.com"]),
    "quality": (["--quality", "retry"], None, lambda bulk: bulk.quality == "retry"),
    "quality_ratio": (["--quality-ratio", "0.5"], None, lambda bulk: bulk.quality_ratio == 0.5),
}


def only_job(tmp_path, user: str):
    from bulkgen_cli.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", "read") as db:
        [bulk] = db.list_bulks(user)
        return bulk


def test_the_option_table_names_every_job_option():
    from bulkgen_cli.ops import options

    assert set(OPTION_VALUES) == set(options.names()) - {"mode"}
    assert {n for n, (_, http, _) in OPTION_VALUES.items() if http is not None} == set(options.names(http=True))


def test_every_option_given_to_submit_reaches_the_job(cli, tmp_path):
    from tests.cli_helpers import EXAMPLES

    args = [arg for given, _, _ in OPTION_VALUES.values() for arg in given]
    done = cli("submit", str(EXAMPLES / "articles.yaml"), *args)
    assert done.code == 0, done.err
    bulk = only_job(tmp_path, "tester")
    assert [name for name, (_, _, shows) in OPTION_VALUES.items() if not shows(bulk)] == []


def test_every_option_given_to_schedule_add_is_kept_for_its_runs(cli, tmp_path):
    from bulkgen_cli.ops import options
    from bulkgen_cli.store.sqlite import SqliteStore
    from tests.cli_helpers import EXAMPLES

    kept = set(options.names(scheduled=True)) - {"mode"}
    args = [arg for name, (given, _, _) in OPTION_VALUES.items() if name in kept for arg in given]
    done = cli("schedule", "add", "daily", "--cron", "0 6 * * *", str(EXAMPLES / "articles.yaml"),
               *[a if a != "--name" else "--job-name" for a in args])
    assert done.code == 0, done.err
    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db", "read") as db:
        stored = db.get_schedule("tester", "daily").options
    fired = BulkJob(id="x", userId="tester", mode="topic", name=stored["name"], status="queued", total_items=1,
                    **{k: stored[k] for k in ("priority", "notify", "quality", "quality_ratio")})
    assert [name for name in kept if not OPTION_VALUES[name][2](fired)] == []


def test_every_http_option_reaches_the_job(processes, tmp_path):
    from tests.cli_helpers import base_env
    from tests.serve_helpers import articles, make_token, start_server

    env = base_env(tmp_path)
    token = make_token(env, "alice", "--email", "ops@example.com")
    server = start_server(processes, env)
    body = {**articles(), **{name: http for name, (_, http, _) in OPTION_VALUES.items() if http is not None}}
    with server.client(token) as client:
        made = client.post("/api/bulk-generate", json=body)
    assert made.status_code == 201, made.text
    server.stop()
    bulk = only_job(tmp_path, "alice")
    assert [name for name, (_, http, shows) in OPTION_VALUES.items() if http is not None and not shows(bulk)] == []
