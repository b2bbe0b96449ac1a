"""Every `$ ` command of the README and of each page of docs/ runs, in order, in a scratch home against the
reference service; every relative link of those pages leads somewhere.

Modelled on sqlite-utils' test_docs.py: the docs cannot drift from what runs.
Each page runs on its own, in its own scratch home (a page's examples may use
what its earlier examples made, never another page's). Each command must exit
0 (or the code a comment on its line names); in blocks whose output is exact
(every block but the status table, which commands.md draws as a terminal shows
it mid-run), every line shown after a command must appear in what it printed,
ids aside. The example id stands for a job in the state its section needs.
"""

from __future__ import annotations

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

#: The README, then the pages of docs/ by name.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: How many `$ ` commands each page with examples runs at least: a page that loses its examples (or a
#: parser that stops finding them) fails here instead of passing with nothing run.
MINIMUM = {"README.md": 5, "commands.md": 37, "files.md": 7, "notifications.md": 1, "quality.md": 6,
           "serving.md": 9}
EXAMPLE_ID = "6b0b564e5a3270849fe2ea28"
ID = re.compile(r"\b[0-9a-f]{24}\b")
#: Commands not run here, and why, per page.
NOT_RUN = {
    "commands.md": {"bulkgen run --forever": "a long-lived worker never exits by design (tests/test_processes.py runs it)"},
    "notifications.md": {"BULKGEN_SMTP_URL=": "needs an SMTP server and notify-send (tests/test_notify.py covers both)"},
}
#: The section whose curl examples need a `bulkgen serve` (started here, at its address in the page).
SERVE_SECTION, SERVE_URL = "serve", "http://127.0.0.1:8080"
#: Blocks that show a terminal mid-run: their commands must run, their output is illustrative.
ILLUSTRATIVE = ("bulkgen status 6b0b564e5a3270849fe2ea28 --items",)


@dataclass
class Command:
    line: int
    section: str
    text: str
    shown: list[str] = field(default_factory=list)


def commands(page: Path) -> list[Command]:
    found: list[Command] = []
    section, inside, opened = "", False, 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
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


def run_page(page: Path, home: Path, env: dict[str, str], service, processes) -> tuple[int, dict[str, str], object]:
    """Run the page's commands in order; the number run, the reasons of those skipped, and the server if one ran."""
    from tests.serve_helpers import start_server

    server = None
    shell = shutil.which("bash")
    assert shell and shutil.which("jq"), "the docs' examples use bash and jq"
    ran, sections, skipped = 0, {}, set()
    not_run = NOT_RUN.get(page.name, {})
    for command in commands(page):
        reason = next((prefix for prefix in not_run if command.text.startswith(prefix)), None)
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
        proc = subprocess.run([shell, "-c", assigned[2] if assigned else text], env=env, cwd=home,
                              capture_output=True, text=True, timeout=120, executable=shell)
        if assigned:
            env = env | {assigned[1]: proc.stdout.strip()}
        where = f"{page.relative_to(ROOT)} line {command.line}: $ {command.text}"
        assert proc.returncode == expected_code(command.text), f"{where}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, where
        printed = normal(proc.stdout + "\n" + proc.stderr)
        for line in command.shown:
            assert normal(line) in printed, f"{where}\npage shows: {line}\nit printed: {proc.stdout}{proc.stderr}"
        ran += 1
    assert skipped == set(not_run), (page.name, skipped)
    return ran, env, server


#: What a page's examples leave behind, beyond their exit codes and output.
LEFT = {
    "README.md": lambda home, env, server: (home / "articles" / "01-beans.md").exists(),
    "commands.md": lambda home, env, server: (home / "articles" / "01-beans.md").exists()
    and (home / "all.jsonl").exists(),
    "serving.md": lambda home, env, server: server is not None and env["token"].startswith("bgk_") and env["job"],
}


def test_every_page_with_examples_has_a_minimum():
    with_examples = {page.name for page in PAGES if commands(page)}
    assert with_examples == set(MINIMUM), "a page with `$ ` examples needs an entry in MINIMUM (and only such a page)"
    assert len(PAGES) >= 10 and (ROOT / "docs" / "index.md") in PAGES


@pytest.mark.parametrize("name", sorted(MINIMUM))
def test_every_command_of_the_page_runs_and_shows_what_the_page_says(name, scratch, processes):
    page = next(p for p in PAGES if p.name == name)
    home, env, service = scratch
    ran, env, server = run_page(page, home, env, service, processes)
    assert ran >= MINIMUM[name] and ran == len(commands(page)) - len(NOT_RUN.get(name, {})), (name, ran)
    assert LEFT.get(name, lambda *a: True)(home, env, server), f"{name}: its examples did not leave what they say"


def test_the_readme_is_a_quickstart():
    """Short, with the store's place near the top, the main job, and the test command `.ci/run` runs."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    assert any("~/.local/share/bulkgen/bulkgen.db" in line for line in lines[:30])
    assert "pip install . && bulkgen submit examples/articles.yaml --wait" in lines
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[dev]' && python -m pytest -n 2 --dist loadfile" in lines
    assert "pip install --quiet -e '.[dev]'" in ci and "python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile" in ci
    linked = {target for line in lines for target in LINK.findall(line)}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= {t.partition("#")[0] for t in linked}, "a page no link reaches"


# -- links -------------------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text, inside, found = page.read_text(encoding="utf-8"), False, set()
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and re.match(r"#{1,6} ", line):
            found.add(anchor(line.lstrip("#")))
    return found


def test_every_relative_link_leads_to_a_file_and_a_heading():
    checked, broken = 0, []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, name = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (name and (file.suffix != ".md" or name not in anchors(file))):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            checked += 1
    assert checked >= 50, checked
    assert not broken, broken
