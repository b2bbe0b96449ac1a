"""Text from a file, the store or a service is shown verbatim: never Rich markup, emoji codes or terminal control."""

from __future__ import annotations

import json

import yaml

from bulkgen_cli.core.model import ItemStatus, Outcome, utcnow
from bulkgen_cli.store.sqlite import SqliteStore
from tests.conftest import claim

HOSTILE = [  # each short enough for the items table's column
    "Editing files under [/etc] safely",
    "[bold red]shout[/] [link=http://x]link[/link]",
    "Smile :smile: and :thumbs_up:",
    "Bell\a and \x1b[31mred\x1b[0m",
    "Title \x1b]0;t\x07 back\rover",
    "Right-to-left \u202eexe.txt",
]
NAME = "Job M [markup] test"
ERROR = "HTTP 500: [red]boom[/red] \x1b[2J cleared :fire:"


def submit_hostile(cli, tmp_path) -> str:
    path = tmp_path / "hostile.yaml"
    topics = HOSTILE + [f"Plain {n}" for n in range(10 - len(HOSTILE))]
    path.write_text(yaml.safe_dump({"name": NAME, "items": [{"topic": t} for t in topics]}), encoding="utf-8")
    result = cli("submit", str(path))
    assert result.code == 0, result.err
    return result.out.strip()


def fail_first_item(tmp_path, bulk_id: str) -> None:
    """A service's error text, recorded as it came."""
    with SqliteStore(tmp_path / "xdg" / "bulkgen" / "bulkgen.db") as store:
        item = claim(store, "p", 60, utcnow())
        assert item.bulk_job_id == bulk_id
        assert store.finish_item(item.id, "p", Outcome(ItemStatus.failed, error=ERROR), utcnow())
        store.refresh_counters(bulk_id, utcnow())


def shown(text: str) -> str:
    """How a hostile string must appear: every control character escaped, nothing else changed."""
    from bulkgen_cli.core.text import visible

    return visible(text)


def test_status_shows_names_topics_and_errors_as_they_are(cli, tmp_path):
    bulk_id = submit_hostile(cli, tmp_path)
    fail_first_item(tmp_path, bulk_id)
    result = cli("status", bulk_id, "--items")
    assert result.code == 0, result.err
    out = result.out
    assert NAME in out
    for topic in HOSTILE:
        assert shown(topic) in out, topic
    assert shown(ERROR) in out
    assert "\x1b" not in out and "\a" not in out and "\r" not in out and "\u202e" not in out
    assert "😄" not in out and "🔥" not in out  # emoji codes stay codes


def test_json_keeps_the_stored_text_exactly(cli, tmp_path):
    bulk_id = submit_hostile(cli, tmp_path)
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["bulk_job"]["name"] == NAME
    assert [j["topic"] for j in doc["jobs"]][: len(HOSTILE)] == HOSTILE


def test_list_and_messages_show_the_name_as_it_is(cli, tmp_path):
    bulk_id = submit_hostile(cli, tmp_path)
    listed = cli("list")
    assert listed.code == 0 and NAME in listed.out
    paused = cli("pause", bulk_id)
    assert paused.code == 0 and "\x1b" not in paused.err


def test_a_processor_run_reports_hostile_text_escaped(cli, tmp_path):
    bulk_id = submit_hostile(cli, tmp_path)
    result = cli("run")
    assert result.code == 0, result.err
    assert "\x1b" not in result.err and "\u202e" not in result.err
    assert "Processed 10 items" in result.err
    assert json.loads(cli("status", bulk_id, "--json").out)["bulk_job"]["status"] == "completed"


def test_visible_escapes_only_what_a_terminal_would_act_on():
    from bulkgen_cli.core.text import visible

    assert visible("plain [x] :smile: ünïcode ✓\ttab\nline") == "plain [x] :smile: ünïcode ✓\ttab\nline"
    assert visible("a\x1b[31mb\x07c\rd\x7fe\x9bf\u202eg") == "a\\x1b[31mb\\x07c\\x0dd\\x7fe\\x9bf\\u202eg"
