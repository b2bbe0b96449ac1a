"""The dashboard page (`GET /`) in a real headless Chromium, driven by Playwright against a real
`bulkgen serve --processor` subprocess, a real SQLite store and the reference content service.

Screenshots of every step go to $BULKGEN_ARTIFACTS/page (default: test-artifacts/page, ignored by git);
the folder is printed. Every wait is a condition with a deadline (Playwright's expect), never a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.cli_helpers import ROOT, env_for, run_cli
from tests.serve_helpers import Server, articles, free_port, make_token, start_server

CHROMIUM = "/usr/bin/chromium"
#: Flags that keep Chromium from reaching out to the network (closed here) in the background.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
#: Deadline of every awaited condition (ms).
WAIT = 30_000
HOSTILE = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("BULKGEN_ARTIFACTS") or ROOT / "test-artifacts") / "page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def shots(artifacts: Path, request, capsys):
    """shots(page, "step"): a full-page screenshot named after the test and the step."""
    with capsys.disabled():
        print(f"\nscreenshots of {request.node.name}: {artifacts}")

    def shoot(page: Page, step: str) -> None:
        page.screenshot(path=str(artifacts / f"{request.node.name}-{step}.png"), full_page=True)

    return shoot


@pytest.fixture
def site(processes, tmp_path, start_service):
    """`bulkgen serve --processor` on a fresh store, a service taking 0.5 s an article, alice's token."""
    service = start_service(latency=0.5)
    env = env_for(tmp_path, service)
    token = make_token(env, "alice")
    server = start_server(processes, env, "--processor")
    server.token = token  # type: ignore[attr-defined]
    return server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def sign_in(page: Page, server: Server, token: str) -> None:
    page.goto(server.url + "/")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as alice")).to_be_visible(timeout=WAIT)
    expect(page.locator("#live")).to_have_text("Live updates on", timeout=WAIT)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def upload(page: Page, path: Path) -> None:
    page.get_by_label("Articles file").set_input_files(str(path))
    page.get_by_role("button", name="Queue these articles").click()


def bad_file(folder: Path) -> Path:
    items = "\n".join(f"  - topic: Topic {i}" + ("\n    word_cout: 900" if i == 3 else "") for i in range(1, 10))
    return write(folder / "coffee.yaml", f"name: Coffee\nitems:\n{items}\n")


def good_file(folder: Path, n: int = 20) -> Path:
    rows = [f"Coffee article {i}" + (" [status:400]" if i == 2 else "") for i in range(1, n + 1)]
    return write(folder / "coffee.csv", "topic,word_count\n" + "".join(f"{r},100\n" for r in rows))


def card(page: Page, name: str):
    return page.locator("li.job").filter(has=page.get_by_role("heading", name=name, exact=True))


def buttons_enabled(job) -> dict[str, bool]:
    names = ["Pause", "Resume", "Retry failed articles", "Cancel job"]
    return {n: job.get_by_role("button", name=n, exact=True).is_enabled() for n in names}


def done_count(job) -> int:
    text = job.locator(".summary").inner_text()
    match = re.match(r"(\d+) of \d+ articles done", text)
    assert match, text
    return int(match.group(1))


def test_a_creator_uploads_follows_pauses_resumes_cancels_and_reads(site, page, shots, tmp_path):
    page.goto(site.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT)
    shots(page, "01-sign-in")
    sign_in(page, site, site.token)
    expect(page.get_by_text("No jobs yet. Upload a file of 10–50 articles above to start one.")).to_be_visible()
    shots(page, "02-no-jobs-yet")

    upload(page, bad_file(tmp_path))
    result = page.locator("#upload-result")
    expect(result).to_contain_text("coffee.yaml was not queued: it has 2 problems. Nothing was stored.", timeout=WAIT)
    expect(result.locator("li").filter(has_text="Item 3 (line 6), field “word_cout”:")).to_contain_text(
        "unknown field; did you mean 'word_count'?")
    expect(result.locator("li").filter(has_text="The file: has 9 items; a bulk job takes 10 to 50.")).to_be_visible()
    expect(page.locator("li.job")).to_have_count(0)
    shots(page, "03-bad-file")

    upload(page, good_file(tmp_path))
    expect(result).to_have_text("Queued “coffee”: 20 articles. Follow it below.", timeout=WAIT)
    job = card(page, "coffee")
    expect(job).to_be_visible()
    bar = job.locator("progress")
    expect(job.locator(".summary")).to_have_text(re.compile(r"^[0-3] of 20 articles done"), timeout=WAIT)
    shots(page, "04-queued")
    expect(job.locator(".badge")).to_have_text("In progress", timeout=WAIT)
    expect(job.locator(".summary")).to_have_text(re.compile(r"^([3-9]|1\d) of 20 articles done · 1 failed"),
                                                 timeout=WAIT)
    expect(bar).to_have_attribute("value", re.compile(r"^([3-9]|1\d)$"))  # the articles written
    expect(job.locator(".now")).to_contain_text("Now writing: #")
    job.get_by_text("Show the 20 articles").click()
    failed_row = job.locator("tr.item-failed")
    expect(failed_row).to_contain_text("Coffee article 2 [status:400]")
    expect(failed_row).to_contain_text("Failed")
    expect(failed_row.locator(".error-text")).to_contain_text("400")
    shots(page, "05-in-progress")

    job.get_by_role("button", name="Pause", exact=True).click()
    expect(job.locator(".badge")).to_have_text("Paused", timeout=WAIT)
    expect(job.locator("[role=status]")).to_have_text(
        "Paused. No new article starts; one being written is finished and kept.")
    expect(job.locator(".now")).to_be_hidden(timeout=WAIT)  # the article in flight finished and was recorded
    expect(job.locator(".summary")).to_contain_text("no time estimate while paused")
    assert buttons_enabled(job) == {"Pause": False, "Resume": True, "Retry failed articles": False, "Cancel job": True}
    paused_at = done_count(job)
    with site.client(site.token) as client:
        stored = client.get(f"/api/bulk-generate?limit=1").json()[0]
    assert stored["status"] == "paused" and stored["completed_items"] == paused_at
    shots(page, "06-paused")

    job.get_by_role("button", name="Resume", exact=True).click()
    expect(job.locator(".badge")).to_have_text("In progress", timeout=WAIT)
    assert buttons_enabled(job) == {"Pause": True, "Resume": False, "Retry failed articles": False, "Cancel job": True}
    expect(job.locator(".summary")).to_have_text(re.compile(rf"^(?!{paused_at} of)\d+ of 20 articles done"),
                                                 timeout=WAIT)
    shots(page, "07-resumed")

    job.get_by_role("button", name="Cancel job").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Cancel “coffee”?")
    expect(dialog).to_contain_text("not written yet will not be written. Articles already finished are kept.")
    shots(page, "08-confirm-cancel")
    dialog.get_by_role("button", name="No, keep it going").click()
    expect(dialog).to_be_hidden()
    expect(job.locator(".badge")).to_have_text("In progress")

    job.get_by_role("button", name="Cancel job").click()
    page.get_by_role("dialog").get_by_role("button", name="Yes, cancel the job").click()
    expect(job.locator(".badge")).to_have_text("Cancelled", timeout=WAIT)
    expect(job.locator(".summary")).to_have_text(re.compile(r"^\d+ of 20 articles done · 1 failed · \d+ cancelled$"),
                                                 timeout=WAIT)
    assert buttons_enabled(job) == {"Pause": False, "Resume": False, "Retry failed articles": False,
                                    "Cancel job": False}
    expect(bar).to_have_attribute("value", str(done_count(job)))  # not full: the written share only
    expect(job.locator("tr.item-cancelled").first).to_contain_text("Cancelled")
    shots(page, "09-cancelled")

    first = job.locator("tr.item-completed").first
    topic = first.locator("td").nth(1).inner_text()
    first.get_by_role("link", name=re.compile("^Read article")).click()
    expect(page.get_by_role("heading", name=topic, exact=True)).to_be_visible(timeout=WAIT)
    expect(page.locator("#article-text p").first).to_have_text(f"This draft covers {topic}.", timeout=WAIT)
    expect(page.locator("#article-text h4").first).to_have_text("Part 1")
    expect(page.locator("#article-front")).to_contain_text("status: completed")
    assert re.search(r"#/article/\w+$", page.url)
    shots(page, "10-article")
    page.get_by_role("link", name="← Back to your jobs").click()
    expect(job).to_be_visible()

    page.reload()  # the tab keeps the token
    expect(page.get_by_text("Signed in as alice")).to_be_visible(timeout=WAIT)
    expect(card(page, "coffee").locator(".badge")).to_have_text("Cancelled", timeout=WAIT)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_text("Signed out. This tab no longer keeps your token.")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("li.job")).to_have_count(0)
    shots(page, "11-signed-out")


def test_a_finished_job_offers_retry_failed_and_a_new_tab_asks_for_the_token(site, page, browser, shots):
    with site.client(site.token) as client:
        body = articles(10, "Tea", word_count=100)
        body["bulk_config"]["items"][4]["topic"] = "Tea 5 [status:400]"
        client.post("/api/bulk-generate", json=body).raise_for_status()
    sign_in(page, site, site.token)
    job = card(page, "Tea job")
    expect(job.locator(".badge")).to_have_text("Finished, 1 failed", timeout=WAIT)
    expect(job.locator(".summary")).to_have_text("9 of 10 articles done · 1 failed")
    expect(job.locator(".note")).to_contain_text("1 article could not be written")
    reason = job.locator(".errors li")
    expect(reason).to_have_count(1)
    expect(reason).to_contain_text("#5 “Tea 5 [status:400]”: The writing service refused this article: scripted status")
    raw = reason.locator("details")
    expect(raw.locator("summary")).to_have_text("What the service said")
    expect(raw.locator("code")).to_be_hidden()
    raw.locator("summary").click()
    expect(raw.locator("code")).to_have_text('HTTP 400: {"success": false, "error": "scripted status"}')
    bar = job.locator("progress")
    expect(bar).to_have_attribute("value", "9")
    expect(bar).to_have_attribute("aria-label", "Tea job: 9 of 10 articles written, 1 failed")
    # the last tenth of the track is the failed share, in red: the bar is not all green
    track = bar.evaluate("b => [getComputedStyle(b).getPropertyValue('--failed-from'), "
                         "getComputedStyle(b).getPropertyValue('--failed-to'), getComputedStyle(b).backgroundImage]")
    assert track[:2] == ["90.00%", "100.00%"] and "rgb(185, 28, 28)" in track[2], track
    job.get_by_text("Show the 10 articles").click()
    expect(job.locator("tr.item-failed .error-text")).to_contain_text(
        "The writing service refused this article: scripted status")
    assert buttons_enabled(job) == {"Pause": False, "Resume": False, "Retry failed articles": True,
                                    "Cancel job": False}
    shots(page, "01-finished-with-a-failure")
    job.get_by_role("button", name="Retry failed articles").click()
    expect(job.locator("[role=status]")).to_have_text("The failed articles are queued again.", timeout=WAIT)
    expect(job.locator(".badge")).to_have_text("Finished, 1 failed", timeout=WAIT)  # it fails again: [status:400]

    other = browser.new_context().new_page()
    try:
        other.goto(site.url + "/")
        expect(other.get_by_role("heading", name="Sign in")).to_be_visible(timeout=WAIT)
        assert other.evaluate("sessionStorage.length") == 0
        other.get_by_label("Access token").fill("bgk_not-a-token")
        other.get_by_role("button", name="Sign in").click()
        expect(other.get_by_role("alert").filter(has_text="This token is not valid")).to_be_visible(timeout=WAIT)
        assert other.evaluate("sessionStorage.length") == 0
        shots(other, "02-a-wrong-token")
    finally:
        other.context.close()


def test_text_from_the_store_is_shown_as_text_and_never_runs(site, page, shots):
    body = articles(10, "Plain", word_count=100)
    body["bulk_config"]["name"] = f"Job {HOSTILE}"
    body["bulk_config"]["items"][0]["topic"] = f"Topic {HOSTILE}"
    body["bulk_config"]["items"][1]["topic"] = "<script>window.__pwned=2</script> [status:400]"
    with site.client(site.token) as client:
        client.post("/api/bulk-generate", json=body).raise_for_status()
    sign_in(page, site, site.token)
    job = card(page, f"Job {HOSTILE}")
    expect(job.locator(".badge")).to_have_text("Finished, 1 failed", timeout=WAIT)
    job.get_by_text("Show the 10 articles").click()
    expect(job.get_by_role("cell", name=f"Topic {HOSTILE}", exact=True)).to_be_visible()
    expect(job.get_by_role("cell", name="<script>window.__pwned=2</script> [status:400]", exact=True)).to_be_visible()
    job.get_by_role("link", name=f"Read article 1: Topic {HOSTILE}").click()
    expect(page.locator("#article-title")).to_have_text(f"Topic {HOSTILE}", timeout=WAIT)
    expect(page.locator("#article-text p").first).to_have_text(f"This draft covers Topic {HOSTILE}.")
    shots(page, "01-article-with-markup-in-its-topic")
    assert page.locator("img, script:not([src])").count() == 0
    assert page.evaluate("window.__pwned === undefined")


def test_after_a_drop_the_page_catches_up_without_reloading(processes, tmp_path, page, shots):
    """The stream is cut (the server restarts) while jobs change in the store. With no event seen yet the
    page reads its jobs again; once it has seen one, it resumes the stream with Last-Event-ID, whose
    replay is the only way the change reaches it (a fresh stream starts at "now")."""
    env = env_for(tmp_path) | {"BULKGEN_USER": "alice"}
    token = make_token(env, "alice")
    port = free_port()
    server = start_server(processes, env, port=port)
    with server.client(token) as client:
        first = client.post("/api/bulk-generate", json=articles(10, "Early")).json()["bulk_job_id"]
    sign_in(page, server, token)
    expect(card(page, "Early job").locator(".badge")).to_have_text("Waiting to start", timeout=WAIT)

    server = _restart_while(processes, server, page, lambda: run_cli(["pause", first], env), shots, "no-event-yet")
    expect(card(page, "Early job").locator(".badge")).to_have_text("Paused", timeout=WAIT)

    with server.client(token) as client:
        second = client.post("/api/bulk-generate", json=articles(10, "Late")).json()["bulk_job_id"]
    expect(card(page, "Late job").locator(".badge")).to_have_text("Waiting to start", timeout=WAIT)
    server = _restart_while(processes, server, page, lambda: run_cli(["cancel", second], env), shots, "resumed")
    expect(card(page, "Late job").locator(".badge")).to_have_text("Cancelled", timeout=WAIT)
    expect(card(page, "Late job").locator(".summary")).to_have_text("0 of 10 articles done · 10 cancelled")
    shots(page, "caught-up")
    server.stop()


def _restart_while(processes, server: Server, page: Page, change, shots, step: str) -> Server:
    """Stop the server, see the page notice, make `change` in the store, start a new server on the same port."""
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    expect(page.locator("#live")).to_have_text("Connection lost: reconnecting…", timeout=WAIT)
    shots(page, f"connection-lost-{step}")
    assert change().code == 0
    restarted = start_server(processes, server.env, port=port)
    expect(page.locator("#live")).to_have_text("Live updates on", timeout=WAIT)
    return restarted


def test_the_page_and_its_files_are_served_with_a_strict_policy(site):
    with site.client() as anonymous:
        for path, kind in [("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")]:
            response = anonymous.get(path)
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
            policy = response.headers["content-security-policy"]
            assert "script-src 'self';" in policy and "connect-src 'self';" in policy
            assert "default-src 'none'" in policy and "unsafe-inline" not in policy
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["cache-control"] == "no-cache"
        assert "/" not in anonymous.get("/openapi.json").json()["paths"]
        html = anonymous.get("/").text
        script = anonymous.get("/static/app.js").text
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("//"))
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="/static/app.js" defer>']
    assert not re.search(r"\son\w+=|\sstyle=|https?://", html)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink


def test_the_page_ships_in_the_wheel(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "test-artifacts", "build", "dist",
                                                                 "*.egg-info", "__pycache__", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("bulkgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "app.css"):
        assert f"bulkgen_cli/server/static/{name}" in names


def test_on_a_phone_only_the_articles_table_scrolls_sideways(site, browser, shots):
    """At 390 px (a phone) an opened articles table scrolls inside its box; the page never scrolls sideways."""
    with site.client(site.token) as client:
        body = articles(10, "A rather long topic about brewing coffee at home, step by step", word_count=100)
        body["bulk_config"]["items"][1]["topic"] += " [status:400]"
        client.post("/api/bulk-generate", json=body).raise_for_status()
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        sign_in(page, site, site.token)
        job = page.locator("li.job").first
        expect(job.locator(".badge")).to_have_text("Finished, 1 failed", timeout=WAIT)
        job.get_by_text("Show the 10 articles").click()
        expect(job.locator("tr.item-failed")).to_be_visible()
        shots(page, "01-articles-at-390px")
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways: {width[0]} px wide in a {width[1]} px window"
    finally:
        context.close()
