"""Messages a user meets: one clear sentence each, nothing echoed at length, times in words that fit."""

from __future__ import annotations

from bulkgen_cli.core.text import duration, quoted
from tests.cli_helpers import EXAMPLES

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
               for p, k in zip([None, "a", "b", "c", "d"], "abcde")) + "f: &f [" + ", ".join(["*e"] * 9) + "]\n"


def test_an_alias_bomb_is_one_problem_that_says_aliases(cli, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + "items: [*f]\n")
    result = cli("submit", str(path))
    assert result.code == 2
    assert "has 1 problem" in result.err and "aliases" in result.err and "alias bomb" in result.err
    assert len(result.err.strip().splitlines()) == 2  # the summary and the one problem
    assert cli("list").code == 4  # nothing stored: no store was even made


def test_a_long_id_is_not_echoed_in_full(cli, tmp_path):
    cli("submit", str(EXAMPLES / "articles.yaml"))
    result = cli("status", "x" * 1000)
    assert result.code == 3
    assert "(1,000 characters)" in result.err and len(result.err) < 200


def test_a_not_before_in_the_past_is_refused(cli):
    result = cli("submit", str(EXAMPLES / "articles.yaml"), "--not-before", "2020-01-01T00:00Z")
    assert result.code == 2
    assert "in the past" in result.err and " d " in result.err and "Traceback" not in result.err
    assert cli("list").code == 4  # nothing stored


def test_durations_use_days_when_they_are_long():
    assert duration(27089 * 3600 + 43 * 60) == "1,128 d 17 h"
    assert [duration(s) for s in (42, 185, 5 * 3600 + 180)] == ["42s", "3m05s", "5h03m"]
    assert quoted("short") == "'short'" and quoted("\x1b" * 3) == "'\\\\x1b\\\\x1b\\\\x1b'"


def test_an_unreachable_mongodb_is_one_sentence(cli):
    result = cli("list", "--store", "mongodb://127.0.0.1:1/bulkgen?serverSelectionTimeoutMS=300")
    assert result.code == 5
    message = result.err.strip()
    assert message.startswith("Error: the MongoDB store mongodb://127.0.0.1:1/bulkgen?serverSelectionTimeoutMS=300 "
                              "cannot be reached: no server answered at 127.0.0.1:1 within 0.3 s;")
    assert "check that mongod runs there" in message
    assert "Topology" not in message and len(message) < 300 and "\n" not in message


def test_usage_names_the_file_argument_plainly(cli):
    result = cli("submit", "--help")
    assert "Usage: bulkgen submit [OPTIONS] [FILE]" in result.out and "{FILE}" not in result.out


def test_results_prints_paths_as_the_user_named_the_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    assert cli("run").code == 0
    printed = cli("results", bulk_id, "--out", "articles/").out.splitlines()
    assert printed[0] == "articles/01-beans.md" and len(printed) == 12
    elsewhere = tmp_path.parent / f"{tmp_path.name}-out"
    assert cli("results", bulk_id, "--out", str(elsewhere)).out.splitlines()[0] == str(elsewhere / "01-beans.md")


def test_local_times_carry_their_zone_and_words_that_fit(monkeypatch):
    import datetime as dt
    import time

    from bulkgen_cli.cli.render import when

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        utc = dt.timezone.utc
        assert when(dt.datetime(2026, 11, 29, 6, 2, tzinfo=utc), dt.datetime(2026, 11, 26, 2, 0, tzinfo=utc)) \
            == "2026-11-29 07:02:00 CET (in 3 d 4 h)"
        assert when(dt.datetime(2026, 7, 1, 6, 2, tzinfo=utc), dt.datetime(2026, 7, 1, 6, 5, tzinfo=utc)) \
            == "2026-07-01 08:02:00 CEST (3m00s ago)"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
