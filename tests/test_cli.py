"""The command line as a user and a CI script meet it: output, JSON, exit codes."""

from __future__ import annotations

import json
import re

import pytest

from tests.cli_helpers import EXAMPLES, base_env, run_cli
from tests.files import write_articles

BULK_KEYS = {
    "id", "name", "mode", "status", "userId", "total_items", "completed_items", "failed_items",
    "cancelled_items", "created_at", "started_at", "completed_at", "estimated_completion", "error_summary",
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_submit_prints_only_the_id(cli):
    result = cli("submit", str(EXAMPLES / "articles.yaml"))
    assert result.code == 0
    assert re.fullmatch(r"[0-9a-f]{24}\n", result.out)
    assert "Queued bulk job" in result.err


def test_status_json_shape_before_and_after_run(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert set(doc) >= {"bulk_job", "progress", "jobs"}
    assert set(doc["bulk_job"]) >= BULK_KEYS
    assert doc["bulk_job"]["status"] == "queued" and doc["bulk_job"]["userId"] == "tester"
    assert doc["progress"] == {"total": 12, "completed": 0, "failed": 0, "cancelled": 0, "remaining": 12, "percentage": 0}
    assert ISO.match(doc["bulk_job"]["created_at"]) and doc["bulk_job"]["started_at"] is None
    job = doc["jobs"][0]
    assert set(job) >= {"id", "queue_position", "status", "topic", "retry_count", "error"}
    assert job["item_id"] == "beans" and job["queue_position"] == 1

    run = cli("run")
    assert run.code == 0 and "writing offline drafts" in run.err
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["bulk_job"]["status"] == "completed"
    assert doc["progress"] == {"total": 12, "completed": 12, "failed": 0, "cancelled": 0, "remaining": 0, "percentage": 100}
    assert ISO.match(doc["bulk_job"]["completed_at"])
    assert all(j["status"] == "completed" for j in doc["jobs"])


def test_submit_wait_exit_codes(cli, tmp_path, service):
    good = cli("submit", str(EXAMPLES / "articles.csv"), "--wait")
    assert good.code == 0, good.err
    assert "[11/11]" in good.err and "completed: 11 of 11 completed" in good.err
    bad = write_articles(tmp_path / "items.yaml", ["Bad [status:400]"] + [f"T{i}" for i in range(9)])
    result = cli("submit", str(bad), "--wait", "--json", env={"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token"})
    assert result.code == 1
    final = json.loads(result.out)
    assert final["status"] == "completed" and final["failed_items"] == 1 and final["completed_items"] == 9
    assert "Content service: http://127.0.0.1" in result.err


def test_submit_json(cli):
    result = cli("submit", str(EXAMPLES / "keywords.yaml"), "--json")
    doc = json.loads(result.out)
    assert set(doc) == {"bulk_job_id", "total_items", "status"}
    assert doc["total_items"] == 10 and doc["status"] == "queued"


def test_bad_file_exit_2_and_nothing_stored(cli, tmp_path):
    bad = write_articles(tmp_path / "bad.yaml", [{"topic": "T", "word_cout": 5}] * 3)
    result = cli("submit", str(bad))
    assert result.code == 2 and result.out == ""
    assert "the articles file has 4 problems; nothing was stored." in result.err
    assert f"{bad}, item 1 (line 3), field 'word_cout': unknown field; did you mean 'word_count'?" in result.err
    assert "has 3 items; a bulk job takes 10 to 50." in result.err
    assert "Traceback" not in result.err
    listed = cli("list", "--json")  # nothing stored: not even a store was created
    assert listed.code == 4 and "no store at" in listed.err
    assert not (tmp_path / "xdg" / "bulkgen").exists()


def test_idempotency_key(cli):
    first = cli("submit", str(EXAMPLES / "trends.yaml"), "--idempotency-key", "nightly-42")
    again = cli("submit", str(EXAMPLES / "trends.yaml"), "--idempotency-key", "nightly-42")
    assert again.code == 0 and again.out == first.out
    assert "already used" in again.err
    assert len(json.loads(cli("list", "--json").out)) == 1


def test_list_is_per_user_newest_first(cli):
    a = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    b = cli("submit", str(EXAMPLES / "spin.yaml")).out.strip()
    c = cli("submit", str(EXAMPLES / "articles.yaml"), "--user", "other").out.strip()
    mine = json.loads(cli("list", "--json").out)
    assert [j["id"] for j in mine] == [b, a]
    assert set(mine[0]) >= BULK_KEYS
    everyone = json.loads(cli("list", "--json", "--all-users").out)
    assert [j["id"] for j in everyone] == [c, b, a]
    assert [j["id"] for j in json.loads(cli("list", "--json", "--limit", "1").out)] == [b]
    assert json.loads(cli("list", "--json", "--status", "completed").out) == []
    table = cli("list")
    assert a in table.out and b in table.out and c not in table.out


def test_not_found_and_other_users_jobs(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml"), "--user", "owner").out.strip()
    missing = cli("status", "0" * 24)
    assert missing.code == 3 and "no bulk job" in missing.err
    assert cli("status", bulk_id).code == 3  # someone else's: not found for this user
    assert cli("status", bulk_id, "--user", "owner").code == 0
    assert cli("status", bulk_id, "--all-users").code == 0


def test_status_table(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    cli("run")
    result = cli("status", bulk_id, "--items")
    assert result.code == 0
    assert "12 of 12 completed (100% done)" in result.out
    assert "beans: How to choose coffee beans" in result.out


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["run"], {"BULKGEN_DELAY": "soon"}, "BULKGEN_DELAY='soon' is not valid: expected a number of seconds."),
        (["run"], {"BULKGEN_MAX_RETRIES": "-1"}, "BULKGEN_MAX_RETRIES='-1' is not valid"),
        (["run", "--api-url", "ftp://x"], {}, "must start with http:// or https://"),
        (["list", "--store", "redis://x"], {}, "unknown store scheme 'redis://'"),
        (["run", "--delay", "-1"], {}, "-1"),
        (["submit", "nope.yaml"], {}, "nope.yaml: no such file."),
        (["submit", "x.yaml", "--mode", "blog"], {}, "--mode must be one of topic, keywords, trends, spin"),
        (["frobnicate"], {}, "No such command"),
    ],
)
def test_usage_errors_exit_2(cli, args, env, message):
    result = cli(*args, env=env)
    assert result.code == 2, result
    assert message in result.err
    assert "Traceback" not in result.err


def test_unreachable_mongodb_exit_5_without_password(cli):
    url = "mongodb://alice:hunter2pass@127.0.0.1:9/db?serverSelectionTimeoutMS=200"
    result = cli("list", "--store", url)
    assert result.code == 5
    assert "MongoDB store" in result.err and "hunter2pass" not in result.err + result.out
    assert "alice:***@127.0.0.1" in result.err


def test_unwritable_sqlite_store_exit_5(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("submit", str(EXAMPLES / "articles.yaml"), "--store", f"sqlite:///{blocker}/sub/store.db")
    assert result.code == 5 and "cannot open the SQLite store" in result.err
    result = cli("list", "--store", f"sqlite:///{blocker}/sub/store.db")  # reading: there is none
    assert result.code == 4 and f"no store at {blocker}/sub/store.db" in result.err


def commands():
    from bulkgen_cli.cli.main import app

    return [c.name or c.callback.__name__ for c in app.registered_commands]


def test_version(cli):
    assert re.fullmatch(r"bulkgen \d+\.\d+\.\d+\n", cli("--version").out)


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help_and_is_documented(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Exit codes" in result.out and "Example:" in result.out
    pages = [EXAMPLES.parent / "README.md", *sorted((EXAMPLES.parent / "docs").glob("*.md"))]
    docs = "\n".join(page.read_text(encoding="utf-8") for page in pages)  # the README and docs/ (commands.md)
    headings = [line for line in docs.splitlines() if line.startswith("### ")]
    assert any(re.search(rf"\b{command}\b", h) for h in headings), f"no section of the docs for {command}"
    assert f"bulkgen {command}" in docs


def test_python_dash_m(tmp_path):
    result = run_cli(["--version"], base_env(tmp_path))
    assert result.code == 0 and result.out.startswith("bulkgen ")


def test_default_store_is_under_xdg_data_home(cli, tmp_path):
    cli("submit", str(EXAMPLES / "articles.yaml"))
    assert (tmp_path / "xdg" / "bulkgen" / "bulkgen.db").is_file()


def test_store_flag_and_env(cli, tmp_path):
    path = tmp_path / "elsewhere.db"
    cli("submit", str(EXAMPLES / "articles.yaml"), "--store", f"sqlite:///{path}")
    assert path.is_file()
    assert "no store at" in cli("list", "--json").err  # the default store is another one
    assert len(json.loads(cli("list", "--json", env={"BULKGEN_STORE": str(path)}).out)) == 1
