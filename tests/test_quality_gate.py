"""The quality gate end to end: each rule and each policy through the processor, on both stores, against the
reference service over real sockets; the verdict in the store contract; what the CLI shows."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest
import yaml

from bulkgen_cli.content.http import HttpGenerator
from bulkgen_cli.content.offline import OfflineGenerator
from bulkgen_cli.core.model import BulkJob, BulkStatus, ItemStatus, Outcome, new_id, utcnow
from bulkgen_cli.engine.processor import Processor
from bulkgen_cli.core.settings import RunSettings
from tests.cli_helpers import EXAMPLES, env_for, run_cli, status_of
from tests.conftest import claim, submit_articles
from tests.files import write_articles

LEASE = 30.0


def submit(store, arts: list[dict], quality: str = "warn", ratio: float = 0.7, mode: str = "topic") -> BulkJob:
    bulk = BulkJob(id=new_id(), userId="alice", mode=mode, name="job", status=BulkStatus.queued.value,
                   total_items=len(arts), created_at=utcnow(), quality=quality, quality_ratio=ratio)
    store.create_bulk(bulk, arts)
    return bulk


def fill(arts: list[dict], n: int = 10) -> list[dict]:
    return arts + [{"topic": f"Plain {i}", "word_count": 300} for i in range(n - len(arts))]


def run(store, service, max_retries: int = 2) -> None:
    generator = HttpGenerator(service.url, None, 5.0)
    settings = RunSettings(delay=0.0, timeout=5.0, max_retries=max_retries, backoff=0.01, lease=LEASE, give_up=0.5)
    try:
        Processor(store, generator, settings).run(until_idle=True)
    finally:
        generator.close()


def requests_for(service, item_id: str) -> list[dict]:
    return [r for r in service.stats()["requests"] if r["job_id"] == item_id]


def reasons(item) -> list[str]:
    return item.verdict["reasons"]


# -- each rule, under warn (the default): kept, flagged -------------------------------------------------------


def test_warn_keeps_every_article_and_flags_each_rule(store, start_service):
    service = start_service()
    bulk = submit(store, fill([
        {"topic": "Short [words:612]", "word_count": 1500},
        {"topic": "Empty [empty]", "word_count": 300},
        {"topic": "Untitled [untitled]", "word_count": 300},
        {"topic": "First [copy:coffee]", "word_count": 300},
        {"topic": "Second [copy:coffee]", "word_count": 300},
    ]))
    run(store, service)
    job, items = store.get_bulk(bulk.id), store.list_items(bulk.id)
    assert job.status == "completed" and job.completed_items == 10 and job.failed_items == 0
    assert [reasons(i) for i in items[:5]] == [
        ["612 of 1500 words"], ["empty body"], ["missing title"], [], [reasons(items[4])[0]]]
    assert reasons(items[4])[0].startswith("near-duplicate of #4 (0.9")  # near, not exact: its own title and lead
    assert [i.verdict["status"] for i in items] == ["flagged"] * 3 + ["passed", "flagged"] + ["passed"] * 5
    assert job.flagged_items == 4
    assert job.quality_summary == ["#1 612 of 1500 words", "#2 empty body", "#3 missing title",
                                   f"#5 {reasons(items[4])[0]}"]
    assert all(len(requests_for(service, i.id)) == 1 for i in items)  # warn asks for nothing again
    assert all(i.attempts == 1 and i.error is None for i in items)


def test_keywords_mode_flags_a_missing_keyword(store, start_service):
    service = start_service()
    arts = [{"keywords": ["solar panel", "inverter"], "word_count": 300, "instructions": "[offtopic]"},
            {"keywords": ["solar panels", "batteries"], "word_count": 300}]
    bulk = submit(store, arts + [{"keywords": [f"thing{n}"], "word_count": 300} for n in range(8)], mode="keywords")
    run(store, service)
    items = store.list_items(bulk.id)
    assert reasons(items[0]) == ["keyword 'solar panel' missing", "keyword 'inverter' missing"]
    assert [i.verdict["status"] for i in items[1:]] == ["passed"] * 9
    assert store.get_bulk(bulk.id).flagged_items == 1


def test_offline_drafts_pass_the_gate(store):
    for name, mode in (("articles.yaml", "topic"), ("keywords.yaml", "keywords")):
        from bulkgen_cli.input.manifest import load

        parsed = load(EXAMPLES / name, None)
        bulk = submit(store, parsed.articles, quality="fail", mode=mode)
        settings = RunSettings(delay=0.0, lease=LEASE)
        Processor(store, OfflineGenerator(), settings).run(until_idle=True)
        job = store.get_bulk(bulk.id)
        assert (job.completed_items, job.flagged_items) == (job.total_items, 0), job.error_summary
        assert all(i.verdict == {"status": "passed", "reasons": [], "generation": 0} for i in store.list_items(bulk.id))


def test_the_words_ratio_is_the_jobs(store, start_service):
    service = start_service()
    strict = submit(store, fill([{"topic": "A [words:900]", "word_count": 1000}]), ratio=0.95)
    lax = submit(store, fill([{"topic": "B [words:100]", "word_count": 1000}]), ratio=0.0)
    run(store, service)
    assert reasons(store.list_items(strict.id)[0]) == ["900 of 1000 words"]
    assert store.list_items(lax.id)[0].verdict["status"] == "passed"


# -- fail ---------------------------------------------------------------------------------------------------


def test_fail_marks_the_item_failed_with_the_reason_and_keeps_the_article(store, start_service):
    service = start_service()
    bulk = submit(store, fill([{"topic": "Short [words:612]", "word_count": 1500}]), quality="fail")
    run(store, service)
    job, items = store.get_bulk(bulk.id), store.list_items(bulk.id)
    first = items[0]
    assert first.status == "failed" and first.error == "quality: 612 of 1500 words"
    assert first.verdict == {"status": "flagged", "reasons": ["612 of 1500 words"], "generation": 0}
    assert first.result["words"] == 612  # the turned-down article is kept for a look
    assert len(requests_for(service, first.id)) == 1 and first.attempts == 1
    assert (job.completed_items, job.failed_items, job.flagged_items, job.turned_down_items) == (9, 1, 0, 1)
    assert job.error_summary == ["#1 Short [words:612]: quality: 612 of 1500 words"]


# -- retry --------------------------------------------------------------------------------------------------


def test_retry_generates_again_until_the_article_passes_each_try_counted(store, start_service):
    service = start_service()
    bulk = submit(store, fill([{"topic": "Short once [words:300:1]", "word_count": 1000},
                               {"topic": "Empty twice [empty:2]", "word_count": 300}]), quality="retry")
    run(store, service)
    items = store.list_items(bulk.id)
    for item, tries in ((items[0], 2), (items[1], 3)):
        assert item.status == "completed" and item.attempts == tries and item.retry_count == tries - 1
        assert item.verdict == {"status": "passed", "reasons": [], "generation": tries - 1}
        seen = requests_for(service, item.id)
        # Each try asked for a new article: a new Idempotency-Key, so the service generated it (not replayed).
        assert [r["idempotency_key"] for r in seen] == [item.id] + [f"{item.id}:regenerate-{n}" for n in range(1, tries)]
        assert [r["outcome"] for r in seen] == ["ok"] * tries
    assert store.get_bulk(bulk.id).flagged_items == 0


def test_retry_fails_the_item_when_the_last_try_is_still_flagged(store, start_service):
    service = start_service()
    bulk = submit(store, fill([{"topic": "Always short [words:300]", "word_count": 1000}]), quality="retry")
    run(store, service, max_retries=2)
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed" and first.attempts == 3
    assert first.error == "quality: 300 of 1000 words (still flagged after 3 tries)"
    assert first.verdict == {"status": "flagged", "reasons": ["300 of 1000 words"], "generation": 2}
    assert [r["outcome"] for r in requests_for(service, first.id)] == ["ok"] * 3
    assert store.get_bulk(bulk.id).failed_items == 1


def test_retry_shares_the_try_limit_with_transient_failures(store, start_service):
    service = start_service()
    bulk = submit(store, fill([{"topic": "[fail:1] then short [words:300:3]", "word_count": 1000}]), quality="retry")
    run(store, service, max_retries=2)
    first = store.list_items(bulk.id)[0]
    seen = requests_for(service, first.id)
    assert [r["outcome"] for r in seen] == ["http-500", "ok", "ok"] and first.attempts == 3
    assert first.status == "failed" and first.error.endswith("(still flagged after 3 tries)")


def test_retry_failed_after_a_quality_failure_asks_for_a_new_article(store, start_service):
    """The kept answer of the turned-down article is not handed back: the next request has the next key."""
    service = start_service()
    bulk = submit(store, fill([{"topic": "Short once [words:300:1]", "word_count": 1000}]), quality="fail")
    run(store, service)
    first = store.list_items(bulk.id)[0]
    assert first.status == "failed"
    assert store.retry_failed(bulk.id, utcnow()) == 1
    run(store, service)
    first = store.list_items(bulk.id)[0]
    assert first.status == "completed" and first.verdict["status"] == "passed" and first.verdict["generation"] == 1
    assert [(r["idempotency_key"], r["outcome"]) for r in requests_for(service, first.id)] == [
        (first.id, "ok"), (f"{first.id}:regenerate-1", "ok")]


# -- the store contract: the verdict's writes, on both stores ---------------------------------------------------


def test_the_verdict_is_written_with_the_result_only_by_the_holder(store):
    t = utcnow()
    bulk = submit_articles(store, [{"topic": f"T{n}", "word_count": 300} for n in range(10)])
    item = claim(store, "p1", LEASE, t)
    verdict = {"status": "flagged", "reasons": ["100 of 300 words"], "generation": 0}
    outcome = Outcome(ItemStatus.completed, result={"content": "x"}, verdict=verdict)
    assert not store.finish_item(item.id, "p2", outcome, t)  # not its holder: nothing written
    assert store.list_items(bulk.id)[0].verdict is None
    assert store.finish_item(item.id, "p1", outcome, t)
    assert store.list_items(bulk.id)[0].verdict == verdict
    store.refresh_counters(bulk.id, t)
    job = store.get_bulk(bulk.id)
    assert (job.flagged_items, job.quality_summary) == (1, ["#1 100 of 300 words"])


def test_a_turned_down_article_counts_a_try_and_keeps_its_verdict_until_the_end(store):
    t = utcnow()
    bulk = submit_articles(store, [{"topic": f"T{n}", "word_count": 300} for n in range(10)])
    item = claim(store, "p1", LEASE, t)
    rejected = {"status": "flagged", "reasons": ["empty body"], "generation": 0}
    assert not store.begin_attempt(item.id, "p2", rejected)
    assert store.begin_attempt(item.id, "p1", rejected)
    held = store.list_items(bulk.id)[0]
    assert (held.attempts, held.retry_count, held.verdict) == (2, 1, rejected)
    # An end without a verdict (a cancel, a service error) leaves the last one; a claim never touches it.
    assert store.finish_item(item.id, "p1", Outcome(ItemStatus.failed, error="boom"), t)
    assert store.list_items(bulk.id)[0].verdict == rejected
    store.refresh_counters(bulk.id, t)
    assert store.get_bulk(bulk.id).flagged_items == 0  # only kept (completed) articles count as flagged


def test_flagged_counters_are_derived_and_capped_like_the_errors(store):
    t = utcnow()
    bulk = submit_articles(store, [{"topic": f"T{n}", "word_count": 300} for n in range(25)])
    for n in range(25):
        item = claim(store, "p1", LEASE, t)
        verdict = {"status": "flagged" if n % 2 == 0 else "passed", "reasons": [f"r{n}"] if n % 2 == 0 else [],
                   "generation": 0}
        store.finish_item(item.id, "p1", Outcome(ItemStatus.completed, result={"content": "x"}, verdict=verdict), t)
        store.refresh_counters(bulk.id, t)
    job = store.get_bulk(bulk.id)
    assert job.flagged_items == 13 and len(job.quality_summary) == 13 and job.quality_summary[1] == "#3 r2"


def test_completed_contents_are_the_completed_articles_in_queue_order(store):
    t = utcnow()
    bulk = submit_articles(store, [{"topic": f"T{n}", "word_count": 300} for n in range(10)])
    assert store.completed_contents(bulk.id) == [] and store.completed_contents(new_id()) == []
    ends = [(ItemStatus.completed, {"title": "A", "body": "a"}), (ItemStatus.failed, "kept"),
            (ItemStatus.completed, "plain text")]
    for status, content in ends:
        item = claim(store, "p1", LEASE, t)
        store.finish_item(item.id, "p1", Outcome(status, result={"content": content, "words": 1}), t)
    items = store.list_items(bulk.id)
    assert store.completed_contents(bulk.id) == [(items[0].id, 1, {"title": "A", "body": "a"}),
                                                 (items[2].id, 3, "plain text")]


def test_quality_policy_and_ratio_are_stored_on_the_job(store):
    bulk = submit(store, fill([]), quality="retry", ratio=0.55)
    got = store.get_bulk(bulk.id)
    assert (got.quality, got.quality_ratio, got.flagged_items, got.quality_summary) == ("retry", 0.55, 0, [])
    plain = submit_articles(store, fill([]))
    assert (store.get_bulk(plain.id).quality, store.get_bulk(plain.id).quality_ratio) == ("warn", 0.7)


def test_sqlite_store_of_schema_5_gets_the_quality_fields(tmp_path):
    from bulkgen_cli.store.sqlite import SCHEMA_VERSION, SqliteStore

    path = tmp_path / "v5.db"
    store = SqliteStore(path)
    bulk = submit_articles(store, fill([]))
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    for column in ("quality", "quality_ratio", "flagged_items", "quality_summary", "turned_down_items"):
        db.execute(f"ALTER TABLE bulk_jobs DROP COLUMN {column}")
    db.execute("ALTER TABLE generation_jobs DROP COLUMN verdict")
    db.execute("ALTER TABLE bulk_jobs DROP COLUMN notify_policy")  # schema 7's (bulkgen serve)
    db.execute("ALTER TABLE generation_jobs DROP COLUMN sent_at")  # schema 8's
    db.execute("DROP INDEX bulk_jobs_usage")  # schema 9's
    db.execute("ALTER TABLE bulk_jobs DROP COLUMN stored_bytes")
    db.execute("ALTER TABLE schedule_occurrences DROP COLUMN claim")
    db.execute("PRAGMA user_version = 5")
    db.close()
    store = SqliteStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 11
        job = store.get_bulk(bulk.id)
        assert (job.quality, job.quality_ratio, job.flagged_items) == ("warn", 0.7, 0)
        assert all(i.verdict is None for i in store.list_items(bulk.id))
    finally:
        store.close()


def test_mongo_documents_without_the_quality_fields_read_with_their_defaults():
    import mongomock

    from bulkgen_cli.store.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), "bulkgen", "mongodb://mock")
    bulk = submit_articles(store, fill([]))
    store.bulks.update_many({}, {"$unset": {"quality": "", "quality_ratio": "", "flagged_items": "",
                                            "quality_summary": ""}})
    store.items.update_many({}, {"$unset": {"verdict": ""}})
    job = store.get_bulk(bulk.id)
    assert (job.quality, job.quality_ratio, job.flagged_items, job.quality_summary, job.turned_down_items) == (
        "warn", 0.7, 0, [], 0)
    assert store.list_items(bulk.id)[0].verdict is None


# -- what the CLI shows --------------------------------------------------------------------------------------------


@pytest.fixture
def flagged_job(cli, tmp_path, start_service):
    """A job submitted with --wait whose first article was flagged (warn), and what the submit printed."""
    service = start_service()
    path = write_articles(tmp_path / "q.yaml", fill([{"topic": "Solar [words:612]", "word_count": 1500},
                                                     {"topic": "Sun [text]", "word_count": 300}]))
    done = cli("submit", str(path), "--wait", env={"BULKGEN_API_URL": service.url})
    assert done.code == 0, done.err
    return done.out.strip(), done


def test_the_summary_names_the_flagged_articles(flagged_job):
    _, done = flagged_job
    assert "1 article flagged: #1 612 of 1500 words; results: bulkgen results" in done.err
    assert "#1 'Solar [words:612]' completed in" in done.err and ", flagged: 612 of 1500 words" in done.err


def test_status_shows_the_flagged_count_and_each_items_verdict(cli, flagged_job):
    bulk_id, _ = flagged_job
    shown = cli("status", bulk_id, "--items")
    assert "Quality: warn (ratio 0.7): 1 article flagged" in shown.out
    assert "Flagged: #1 612 of 1500 words" in shown.out
    header, first, second = shown.out.splitlines()[-11:-8]
    assert header.split()[-1] == "Quality" and first.endswith("flagged: 612 of 1500 words")
    assert second.endswith("passed")  # a plain-text article: its title is its first heading


def test_status_json_carries_the_verdicts(cli, flagged_job):
    bulk_id, _ = flagged_job
    doc = json.loads(cli("status", bulk_id, "--json").out)
    assert doc["bulk_job"]["quality"] == "warn" and doc["bulk_job"]["quality_ratio"] == 0.7
    assert doc["bulk_job"]["flagged_items"] == 1 and doc["bulk_job"]["quality_summary"] == ["#1 612 of 1500 words"]
    assert doc["jobs"][0]["verdict"] == {"status": "flagged", "reasons": ["612 of 1500 words"], "generation": 0}
    assert doc["jobs"][1]["verdict"]["status"] == "passed"


def test_results_carry_the_verdict_in_front_matter_and_jsonl(cli, flagged_job, tmp_path):
    bulk_id, _ = flagged_job
    out = tmp_path / "articles"
    assert cli("results", bulk_id, "--out", str(out)).code == 0
    head = yaml.safe_load((out / "01-solar-words612.md").read_text().split("---")[1])
    assert head["quality"] == "flagged" and head["quality_reasons"] == ["612 of 1500 words"] and head["words"] == 612
    assert yaml.safe_load((out / "02-sun-text.md").read_text().split("---")[1])["quality"] == "passed"
    lines = [json.loads(line) for line in cli("results", bulk_id, "--format", "jsonl").out.splitlines()]
    assert lines[0]["verdict"]["reasons"] == ["612 of 1500 words"]


def test_a_failed_articles_file_keeps_the_turned_down_article(cli, tmp_path, start_service):
    service = start_service()
    path = write_articles(tmp_path / "q.yaml", fill([{"topic": "Solar [words:612]", "word_count": 1500}]))
    done = cli("submit", str(path), "--wait", "--quality", "fail", env={"BULKGEN_API_URL": service.url})
    assert done.code == 1 and "#1 'Solar [words:612]' failed in" in done.err
    bulk_id = done.out.strip()
    out = tmp_path / "articles"
    assert cli("results", bulk_id, "--out", str(out), "--include-failed").code == 0
    text = (out / "01-solar-words612.md").read_text()
    head = yaml.safe_load(text.split("---")[1])
    assert head["status"] == "failed" and head["error"] == "quality: 612 of 1500 words" and head["quality"] == "flagged"
    assert "This draft covers Solar" in text


@pytest.fixture
def turned_down_job(cli, tmp_path, start_service):
    """A job submitted with --quality fail --wait whose first article the gate turned down."""
    service = start_service()
    path = write_articles(tmp_path / "q.yaml", fill([{"topic": "Solar [words:612]", "word_count": 1500}]))
    done = cli("submit", str(path), "--wait", "--quality", "fail", env={"BULKGEN_API_URL": service.url})
    assert done.code == 1, done.err
    return done.out.strip(), done


def test_turned_down_articles_are_counted_in_status_json_and_the_summary(cli, turned_down_job):
    bulk_id, done = turned_down_job
    assert "summary: " in done.err and "; 1 article turned down; results:" in done.err
    assert "Quality: fail (ratio 0.7): 1 article turned down" in cli("status", bulk_id).out
    doc = json.loads(cli("status", bulk_id, "--json").out)["bulk_job"]
    assert (doc["flagged_items"], doc["turned_down_items"]) == (0, 1)


def test_a_job_whose_every_article_was_turned_down_ends_with_a_hint(cli, tmp_path, start_service):
    service = start_service()
    path = write_articles(tmp_path / "q.yaml", [{"topic": f"Solar {n} [words:200]", "word_count": 1500}
                                                for n in range(10)])
    done = cli("submit", str(path), "--wait", "--quality", "fail", env={"BULKGEN_API_URL": service.url})
    assert done.code == 1 and "10 articles turned down" in done.err
    assert (f"hint: the quality gate turned down every article: see why with `bulkgen status {done.out.strip()} "
            "--items`; a lower --quality-ratio or --quality warn at submit keeps more") in done.err


@pytest.mark.parametrize("args, message", [
    (["--quality", "sometimes"], "'sometimes' is not one of 'warn', 'fail', 'retry'"),
    (["--quality-ratio", "1.5"], "1.5 is not in the range 0.0<=x<=1.0 (or 0% to 100%)."),
    (["--quality-ratio", "-0.1"], "-0.1 is not in the range"),
    (["--quality-ratio", "seventy"], "'seventy' is not a share from 0 to 1 (such as 0.7) or a percentage (such as 70%)."),
])
def test_a_bad_quality_option_is_refused_and_nothing_stored(cli, tmp_path, args, message):
    path = write_articles(tmp_path / "q.yaml", fill([]))
    refused = cli("submit", str(path), *args)
    assert refused.code == 2 and message in refused.err and "Traceback" not in refused.err
    listed = cli("list", "--json")
    assert listed.code == 4 and "no store at" in listed.out  # not even the store was created


def test_a_quality_ratio_may_be_a_percentage(cli, tmp_path):
    path = write_articles(tmp_path / "q.yaml", fill([]))
    done = cli("submit", str(path), "--quality-ratio", "70%", "--json")
    assert done.code == 0, done.err
    doc = json.loads(cli("status", json.loads(done.out)["bulk_job_id"], "--json").out)
    assert doc["bulk_job"]["quality_ratio"] == 0.7


def test_the_readmes_quality_examples_run_against_a_service():
    """Offline drafts pass every check: the docs' examples name the service they need (test_docs runs them)."""
    from tests.cli_helpers import ROOT

    readme = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    submits = [line for line in readme.splitlines() if line.startswith("$ ") and "examples/flawed.yaml" in line]
    assert len(submits) == 3
    assert all("BULKGEN_API_URL=http://127.0.0.1:8000 " in line and "--delay 0" in line for line in submits)
    assert "python -m bulkgen_cli.content.reference --port 8000 &" in readme


def test_the_library_refuses_a_ratio_out_of_range(store):
    from bulkgen_cli.ops import jobs
    from bulkgen_cli.core.errors import UsageError
    from bulkgen_cli.input.manifest import load

    with pytest.raises(UsageError, match="between 0 and 1"):
        jobs.submit(store, load(EXAMPLES / "articles.yaml", None), "alice", quality_ratio=2.0)
    assert store.list_bulks() == []


def test_a_retry_job_from_a_real_process(tmp_path, svc):
    """`bulkgen submit --quality retry --wait` as a subprocess: the flagged article is generated again and kept."""
    env = env_for(tmp_path, svc)
    path = write_articles(tmp_path / "q.yaml", fill([{"topic": "Short once [words:100:1]", "word_count": 1000}]))
    done = run_cli(["submit", str(path), "--quality", "retry", "--wait"], env)
    assert done.code == 0, done.err
    assert "#1 quality: 100 of 1000 words; retrying now" in done.err
    doc = status_of(env, done.out.strip())
    first = doc["jobs"][0]
    assert (first["status"], first["attempts"], first["verdict"]["status"]) == ("completed", 2, "passed")
    assert doc["bulk_job"]["quality"] == "retry" and doc["bulk_job"]["flagged_items"] == 0


def test_reasons_from_a_file_are_shown_as_text(cli, tmp_path, start_service):
    """A keyword is the file's text: in a reason it is shown escaped, never as markup or a terminal sequence."""
    service = start_service()
    hostile = "[bold]solar\x1b[31m"
    arts = [{"keywords": [hostile], "word_count": 300, "instructions": "[offtopic]"}]
    arts += [{"keywords": [f"thing{n}"], "word_count": 300} for n in range(9)]
    path = write_articles(tmp_path / "k.yaml", arts, mode="keywords")
    done = cli("submit", str(path), "--wait", env={"BULKGEN_API_URL": service.url})
    assert done.code == 0 and "\x1b" not in done.err and "keyword '[bold]solar\\x1b[31m' missing" in done.err
    shown = cli("status", done.out.strip(), "--items")
    assert "\x1b" not in shown.out and "Flagged: #1 keyword '[bold]solar\\x1b[31m' missing" in shown.out
    doc = json.loads(cli("status", done.out.strip(), "--json").out)
    assert doc["jobs"][0]["verdict"]["reasons"] == [f"keyword '{hostile}' missing"]  # --json keeps it exactly


class _Terminal:
    """A stderr that says it is a terminal, for the summary panel."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_the_summary_panel_on_a_terminal_names_the_flagged_articles(monkeypatch):
    import sys

    from bulkgen_cli.cli import render

    monkeypatch.setenv("COLUMNS", "200")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bulk = BulkJob(id=new_id(), userId="u", mode="topic", name="Solar [bold]basics", status="completed",
                   total_items=10, completed_items=10, flagged_items=2,
                   quality_summary=["#4 612 of 1500 words", "#7 keyword '[red]x' missing"])
    render.print_summary([bulk])
    shown = terminal.buffer.getvalue()
    assert "Quality" in shown and "2 articles flagged: #4 612 of 1500 words; #7 keyword '[red]x' missing" in shown
    assert "Solar [bold]basics" in shown  # text, not markup


def test_show_prints_the_verdict(cli, flagged_job):
    bulk_id, _ = flagged_job
    jobs = json.loads(cli("status", bulk_id, "--json").out)["jobs"]
    shown = cli("show", jobs[0]["id"][:8])
    assert shown.code == 0 and "Verdict: flagged: 612 of 1500 words" in shown.out
    assert "quality:" not in shown.out and "quality_reasons" not in shown.out  # the verdict once
    assert "Verdict: passed" in cli("show", jobs[1]["id"]).out
    record = json.loads(cli("show", jobs[0]["id"], "--json").out)
    assert record["verdict"]["reasons"] == ["612 of 1500 words"] and record["front_matter"]["quality"] == "flagged"
