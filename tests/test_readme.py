"""Every `$ ` command of the README runs, in order, in a scratch home against the reference service.

Modelled on sqlite-utils' test_docs.py: the README cannot drift from what runs.
Each command must exit 0 (or the code a comment on its line names); in blocks
whose output is exact (every block here but the status table, which the
README draws as a terminal shows it mid-run), every line shown after a
command must appear in what it printed, ids aside. The README's example id
stands for a job in the state its section needs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bulkgen_cli.content.reference import ReferenceService
from tests.cli_helpers import EXAMPLES, ROOT, base_env

README = ROOT / "README.md"
EXAMPLE_ID = "6b0b564e5a3270849fe2ea28"
ID = re.compile(r"\b[0-9a-f]{24}\b")
#: Commands not run here, and why.
NOT_RUN = {
    "bulkgen run --forever": "a long-lived worker never exits by design (tests/test_processes.py runs it)",
    "BULKGEN_SMTP_URL=": "needs an SMTP server and notify-send (tests/test_notify.py covers both)",
}
#: The section whose curl examples need a `bulkgen serve` (started here, at its address in the README).
SERVE_SECTION, SERVE_URL = "serve", "http://127.0.0.1:8080"
#: Blocks that show a terminal mid-run: their commands must run, their output is illustrative.
ILLUSTRATIVE = ("bulkgen status 6b0b564e5a3270849fe2ea28 --items",)


@dataclass
class Command:
    line: int
    section: str
    text: str
    shown: list[str] = field(default_factory=list)


def commands() -> list[Command]:
    found: list[Command] = []
    section, inside, opened = "", False, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("#") and not inside:
            section = line.lstrip("#").strip()
        elif line.startswith("```"):
            inside, opened = not inside, number
        elif inside and line.startswith("$ "):
            found.append(Command(number, section, line[2:]))
        elif inside and found and found[-1].line > opened and line.strip() and line.strip() != "…":
            if not any(found[-1].text.startswith(c) for c in ILLUSTRATIVE):
                found[-1].shown.append(line)
    return found


def expected_code(text: str) -> int:
    match = re.search(r"#.*\bexit (\d+)", text)
    return int(match.group(1)) if match else 0


def normal(text: str) -> str:
    return " ".join(ID.sub("ID", text).split())


@pytest.fixture
def scratch(tmp_path):
    service = ReferenceService().start()
    home = tmp_path / "home"
    shutil.copytree(EXAMPLES, home / "examples")
    env = base_env(tmp_path) | {"BULKGEN_API_URL": service.url, "HOME": str(home)}
    yield home, env, service
    service.stop()


def bulkgen(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def job_for(section: str, home: Path, env: dict[str, str]) -> str:
    """A job in the state the section's example needs."""
    if section.startswith("pause"):  # pause, resume, cancel: one that waits in the queue
        return bulkgen(env, home, "submit", "examples/articles.yaml")
    if section.startswith("retry-failed"):  # a completed job with a failed item
        path = home / "one-fails.yaml"
        topics = ["Refused [status:400]"] + [f"Fine {n}" for n in range(9)]
        path.write_text(yaml.safe_dump({"items": [{"topic": t} for t in topics]}))
        job = bulkgen(env, home, "submit", str(path))
        bulkgen(env, home, "run")
        return job
    return env["id"]  # the first job: completed by then


def test_every_readme_command_runs_and_shows_what_the_readme_says(scratch, processes):
    from tests.serve_helpers import start_server

    home, env, service = scratch
    server = None
    shell = shutil.which("bash")
    assert shell and shutil.which("jq"), "the README's examples use bash and jq"
    ran, sections, skipped = 0, {}, set()
    for command in commands():
        reason = next((prefix for prefix in NOT_RUN if command.text.startswith(prefix)), None)
        if reason:
            skipped.add(reason)
            continue
        text = command.text.replace("http://127.0.0.1:8000", service.url)
        if command.section == SERVE_SECTION and server is None:  # its processor works against the service
            server = start_server(processes, env, "--processor")
        if server is not None:
            text = text.replace(SERVE_URL, server.url)
        if command.section == "list" and "list" not in sections:  # something to list as queued
            sections["list"] = bulkgen(env, home, "submit", "examples/articles.yaml")
        if EXAMPLE_ID in text:
            if command.section not in sections:
                sections[command.section] = job_for(command.section, home, env)
            text = text.replace(EXAMPLE_ID, sections[command.section])
        assigned = re.fullmatch(r"(\w+)=\$\((.*)\)", text)  # id=$(…), job=$(…): kept for the commands after it
        if assigned:
            proc = subprocess.run([shell, "-c", assigned[2]], env=env, cwd=home, capture_output=True, text=True,
                                  timeout=120, executable=shell)
            env = env | {assigned[1]: proc.stdout.strip()}
        else:
            proc = subprocess.run([shell, "-c", text], env=env, cwd=home, capture_output=True, text=True,
                                  timeout=120, executable=shell)
        where = f"README.md line {command.line}: $ {command.text}"
        assert proc.returncode == expected_code(command.text), f"{where}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, where
        printed = normal(proc.stdout + "\n" + proc.stderr)
        for line in command.shown:
            assert normal(line) in printed, f"{where}\nREADME shows: {line}\nit printed: {proc.stdout}{proc.stderr}"
        ran += 1
    assert skipped == set(NOT_RUN) and ran == len(commands()) - len(skipped) >= 19, (ran, skipped)
    assert os.path.exists(home / "articles" / "01-beans.md") and (home / "all.jsonl").exists()
    assert server is not None and env["token"].startswith("bgk_") and env["job"]
