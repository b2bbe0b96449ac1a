"""What people expect of a CLI of this kind: completion, JSON errors, --quiet, watch --timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.cli_helpers import EXAMPLES, ROOT


def complete(env: dict[str, str]) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BULKGEN_")} | env
    proc = subprocess.run([sys.executable, "-m", "bulkgen_cli"], env=full, capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_completion_can_be_installed_or_shown(cli):
    """Typer's own options (they detect the shell from the parent process, so only their presence is ours)."""
    out = cli("--help").out
    assert "--install-completion" in out and "--show-completion" in out


def test_completion_completes_commands_and_options():
    assert complete({"_BULKGEN_COMPLETE": "complete_bash", "COMP_WORDS": "bulkgen sub", "COMP_CWORD": "1"}).split() \
        == ["submit"]
    assert "retry-failed" in complete({"_BULKGEN_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "bulkgen retry"})
    fish = complete({"_BULKGEN_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "bulkgen run --con",
                     "_TYPER_COMPLETE_FISH_ACTION": "get-args"})
    assert fish.startswith("--concurrency")


def test_errors_are_json_too_with_json(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("items:\n  - topic: ''\n")
    result = cli("submit", str(bad), "--json")
    assert result.code == 2
    error = json.loads(result.out)["error"]
    assert error["code"] == 2 and "problem" in error["message"]
    assert {p["file"] for p in error["problems"]} == {str(bad)} and any(p["field"] == "topic" for p in error["problems"])
    missing = cli("status", "6b0b564e5a3270849fe2ea28", "--json")
    assert missing.code == 4 and json.loads(missing.out)["error"]["code"] == 4  # no store yet
    cli("submit", str(EXAMPLES / "articles.yaml"))
    unknown = cli("status", "6b0b564e5a3270849fe2ea28", "--json")
    assert unknown.code == 3 and json.loads(unknown.out) == {"error": {
        "code": 3, "message": json.loads(unknown.out)["error"]["message"], "problems": []}}
    usage = cli("list", "--limit", "0", "--json")
    assert usage.code == 2 and "--limit" in json.loads(usage.out)["error"]["message"]


def test_quiet_says_only_the_final_lines(cli):
    result = cli("submit", str(EXAMPLES / "articles.yaml"), "--wait", "--quiet")
    assert result.code == 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("summary: ") and "12 of 12 completed" in lines[0]
    assert cli("run", "-q").err.strip().splitlines() == ["Nothing to process: the queue is empty."]


def test_watch_timeout_exits_124(cli):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml")).out.strip()
    result = cli("watch", bulk_id, "--timeout", "0.3")
    assert result.code == 124
    assert "stopped watching after 0.3 s (--timeout)" in result.err and f"{bulk_id} queued" in result.err


def test_submit_reads_standard_input(tmp_path):
    from tests.cli_helpers import base_env

    env = base_env(tmp_path)

    def submit(args, data):
        return subprocess.run([sys.executable, "-m", "bulkgen_cli", "submit", "-", *args], input=data, env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    yaml_in = submit([], (EXAMPLES / "articles.yaml").read_text())
    assert yaml_in.returncode == 0 and "12 topic articles from standard input" in yaml_in.stderr
    csv_in = submit(["--format", "csv", "--json"], (EXAMPLES / "articles.csv").read_text())
    assert csv_in.returncode == 0 and json.loads(csv_in.stdout)["total_items"] == 11
    bad = submit([], "items: [{topic: x}]\n")
    assert bad.returncode == 2 and "standard input: has 1 item;" in bad.stderr
    listed = subprocess.run([sys.executable, "-m", "bulkgen_cli", "list", "--json"], env=env, capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert [j["name"] for j in json.loads(listed.stdout)].count("standard input") >= 1
