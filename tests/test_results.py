"""`bulkgen results`: Markdown files with front matter, JSONL, and file-name safety."""

from __future__ import annotations

import json
import os

import yaml

from bulkgen_cli.ops.export import slugify
from tests.cli_helpers import EXAMPLES
from tests.files import write_articles

HOSTILE_IDS = ["../../evil", "/etc/passwd", "C:\\\\Windows\\\\x", "ﬁle Ünïcode 日本語", "x" * 100, "...", "-", "a/b/../c",
               ".hidden", "nul\\u0000byte"]


def front(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_markdown_files_and_front_matter(cli, tmp_path):
    bulk_id = cli("submit", str(EXAMPLES / "articles.yaml"), "--wait").out.strip()
    out = tmp_path / "articles"
    result = cli("results", bulk_id, "--out", str(out))
    assert result.code == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files][:3] == ["01-beans.md", "02-grinders.md", "03-pour-over.md"]
    assert len(files) == 12 and result.out.splitlines() == [str(f) for f in files]
    meta, body = front(files[0])
    assert meta == {
        "title": "How to choose coffee beans for home brewing",
        "topic": "How to choose coffee beans for home brewing",
        "mode": "topic", "word_count": 1200, "words": 1200, "tone": "friendly", "language": "en",
        "status": "completed", "generated_at": meta["generated_at"], "generator": "offline",
        "bulk_job_id": bulk_id, "item_id": "beans", "queue_position": 1, "quality": "passed",
    }
    assert body.lstrip().startswith("# How to choose coffee beans")
    # Exporting again overwrites the job's own files.
    assert cli("results", bulk_id, "--out", str(out)).code == 0


def test_another_jobs_files_are_not_overwritten_without_force(cli, tmp_path):
    first = cli("submit", str(EXAMPLES / "articles.yaml"), "--wait").out.strip()
    second = cli("submit", str(EXAMPLES / "articles.yaml"), "--wait").out.strip()
    out = tmp_path / "articles"
    cli("results", first, "--out", str(out))
    before = (out / "01-beans.md").read_text()
    result = cli("results", second, "--out", str(out))
    assert result.code == 2 and "already holds files of another job" in result.err and result.out == ""
    assert (out / "01-beans.md").read_text() == before
    assert cli("results", second, "--out", str(out), "--force").code == 0
    assert front(out / "01-beans.md")[0]["bulk_job_id"] == second
    # A file bulkgen did not write is not ours either.
    (out / "02-grinders.md").write_text("my notes")
    assert cli("results", second, "--out", str(out)).code == 2


def test_hostile_ids_and_titles_stay_inside_the_folder(cli, tmp_path):
    arts = [{"topic": f"Topic {n}", "id": i} for n, i in enumerate(HOSTILE_IDS)]
    arts += [{"topic": "T", "title": "../../../tmp/pwn"}, "/abs/olute"]
    path = write_articles(tmp_path / "hostile.yaml", arts)
    submitted = cli("submit", str(path), "--wait")
    assert submitted.code == 0, submitted.err
    out = tmp_path / "box" / "articles"
    assert cli("results", submitted.out.strip(), "--out", str(out)).code == 0
    names = sorted(os.listdir(out))
    assert len(names) == 12 and len(set(names)) == 12
    for name in names:
        assert "/" not in name and "\\\\" not in name and not name.startswith(".") and ".." not in name
        assert (out / name).resolve().parent == out.resolve()
        assert len(name) <= 2 + 1 + 60 + 3
    assert sorted(os.listdir(tmp_path / "box")) == ["articles"]  # nothing written beside it
    assert "03-ﬁle-ünïcode-日本語.md" not in names and any("日本語" in n for n in names)
    assert "06-article.md" in names  # "..." leaves nothing: a neutral name


def test_slugify():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("../../etc/passwd") == "etcpasswd"
    assert slugify("  Café au lait  ") == "café-au-lait"
    assert slugify("") == "article" and slugify("...") == "article"
    assert len(slugify("word " * 50)) <= 60


def test_include_failed_and_jsonl(cli, tmp_path, service):
    env = {"BULKGEN_API_URL": service.url, "BULKGEN_API_TOKEN": "s3cret-token"}
    path = write_articles(tmp_path / "f.yaml", ["Broken [status:422]", "Text [text]", '=HYPERLINK("http://x")']
                          + [f"T{i}" for i in range(7)])
    bulk_id = cli("submit", str(path), "--wait", env=env).out.strip()
    out = tmp_path / "md"
    result = cli("results", bulk_id, "--out", str(out))
    assert len(list(out.iterdir())) == 9 and "1 not completed" in result.err
    assert cli("results", bulk_id, "--out", str(out), "--include-failed").code == 0
    meta, body = front(out / "01-broken-status422.md")
    assert meta["status"] == "failed" and meta["error"].startswith("HTTP 422") and "words" not in meta
    assert "was not generated" in body
    text_meta, text_body = front(out / "02-text-text.md")
    assert text_body.startswith("\n# Text [text]")  # string content written as it came
    lines = cli("results", bulk_id, "--format", "jsonl").out.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 10 and [r["queue_position"] for r in records] == list(range(1, 11))
    assert set(records[0]) >= {"bulk_job_id", "id", "item_id", "queue_position", "status", "mode", "article",
                               "title", "content", "text", "words", "generator", "generated_at", "error"}
    assert records[0]["status"] == "failed" and records[0]["content"] is None and "HTTP 422" in records[0]["error"]
    assert isinstance(records[1]["content"], str) and isinstance(records[3]["content"], dict)
    assert records[2]["article"]["topic"] == '=HYPERLINK("http://x")'  # stays text
    target = tmp_path / "out" / "all.jsonl"
    assert cli("results", bulk_id, "--format", "jsonl", "--out", str(target)).code == 0
    assert target.read_text().splitlines() == lines


def test_results_of_unknown_job(cli):
    assert cli("submit", str(EXAMPLES / "articles.yaml")).code == 0
    assert cli("results", "0" * 24).code == 3
