"""The security pass: secrets never leak, hostile files are bounded, names stay in their folder,
and nothing read from the store is ever run."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkgen_cli.ops.export import file_name
from bulkgen_cli.core.model import Item
from tests.cli_helpers import EXAMPLES, ROOT, base_env, env_for, run_cli, status_of, submit_file
from tests.files import write_articles
from tests.receivers import SmtpReceiver, WebhookReceiver

TOKEN = "tok-SECRET-123456"
SMTP_PASSWORD = "smtp-SECRET-987654"
MONGO_PASSWORD = "mongo-SECRET-555"


def test_secrets_never_appear_anywhere(tmp_path, start_service):
    service = start_service(token=TOKEN)
    hook = WebhookReceiver()
    smtp = SmtpReceiver(offer_auth=True)  # offers no STARTTLS: the password must not be sent
    outputs = []
    try:
        env = env_for(tmp_path, service, BULKGEN_API_TOKEN=TOKEN, BULKGEN_NOTIFY_RETRY="0.01",
                      BULKGEN_SMTP_URL=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}")
        path = write_articles(tmp_path / "f.yaml", ["Leaky [echo-auth]", "Flaky [fail:1]"] + [f"T{i}" for i in range(8)])
        steps = [
            ["submit", str(path), "--notify", f"webhook:{hook.url}", "--notify", "email:ops@example.com", "--wait"],
            ["list"], ["list", "--json"],
        ]
        for args in steps:
            outputs.append(run_cli(args, env))
        bulk_id = outputs[0].out.strip()
        for args in (["status", bulk_id, "--json"], ["status", bulk_id, "--items"], ["watch", bulk_id],
                     ["results", bulk_id, "--format", "jsonl"], ["results", bulk_id, "--out", str(tmp_path / "md")],
                     ["run", "--api-url", "http://127.0.0.1:9"],
                     ["list", "--store", f"mongodb://bulk:{MONGO_PASSWORD}@127.0.0.1:9/db?serverSelectionTimeoutMS=100"]):
            outputs.append(run_cli(args, env))
        assert outputs[0].code == 1  # the leaky item failed
        doc = json.loads(outputs[3].out)
        assert "***" in doc["jobs"][0]["error"]  # the echoed token was masked
    finally:
        hook.stop()
        smtp.stop()
    haystack = [o.out + o.err for o in outputs]
    store = tmp_path / "xdg" / "bulkgen"
    haystack += [p.read_bytes().decode("utf-8", "replace") for p in store.iterdir()]
    haystack += [p.read_text() for p in (tmp_path / "md").iterdir()]
    haystack += [json.dumps(p) for p in hook.posts] + [m.as_string() for m in smtp.messages]
    for secret in (TOKEN, SMTP_PASSWORD, MONGO_PASSWORD):
        assert not [h for h in haystack if secret in h], f"{secret} leaked"
    assert smtp.logins == []
    # The token did go where it belongs: the service's Authorization header.
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in service.stats()["requests"])


@settings(max_examples=300)
@given(item_id=st.one_of(st.none(), st.text(max_size=120)), title=st.text(max_size=300),
       position=st.integers(min_value=1, max_value=50))
def test_result_file_names_never_leave_the_folder(item_id, title, position):
    folder = Path("/tmp/bulkgen-out").resolve()
    item = Item(id="x", bulk_job_id="b", userId="u", mode="topic", status="completed", queue_position=position,
                article={"topic": title or "t", **({"id": item_id} if item_id is not None else {})},
                result={"content": {"title": title, "body": "b"}})
    name = file_name(item)
    assert os.sep not in name and "\x00" not in name and not name.startswith(".") and ".." not in name
    assert (folder / name).resolve().parent == folder
    assert name.endswith(".md") and len(name.encode()) < 255


def hostile_files(tmp: Path) -> dict[str, Path]:
    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = tmp / name
        files[name].write_bytes(data)

    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        laughs.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    put("laughs.yaml", ("\n".join(laughs) + "\nitems:\n" + "".join(f"  - {{topic: T{i}, extra: {{x: *a9}}}}\n"
                                                                   for i in range(10))).encode())
    put("deep.yaml", b"items: " + b"[" * 50_000 + b"]" * 50_000 + b"\n")
    put("deepmap.yaml", b"items:\n  - topic: x\n    extra: " + b"{a: " * 20_000 + b"1" + b"}" * 20_000 + b"\n")
    put("huge-scalar.yaml", b"items:\n  - topic: '" + b"x" * (1024 * 1024) + b"'\n")
    put("python-tag.yaml", b"items: !!python/object/apply:os.system ['touch /tmp/bulkgen-pwned']\n")
    put("many-items.yaml", b"items:\n" + b"  - topic: t\n" * 80_000)
    put("nul.csv", b"topic\n" + b"a\x00b\n" * 20)
    put("wide.csv", b",".join(b"c%d" % i for i in range(100_000)) + b"\n" + b"x," * 99_999 + b"x\n")
    put("long-cell.csv", b"topic\n\"" + b"y" * 900_000 + b"\"\n")
    put("binary.yaml", bytes(range(256)) * 100)
    return files


HOSTILE = ["laughs.yaml", "deep.yaml", "deepmap.yaml", "huge-scalar.yaml", "python-tag.yaml", "many-items.yaml",
           "nul.csv", "wide.csv", "long-cell.csv", "binary.yaml"]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1024 * 1024 * 1024, 1024 * 1024 * 1024))


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_files_exit_2_within_bounds(tmp_path, name):
    path = hostile_files(tmp_path)[name]
    proc = subprocess.run([sys.executable, "-m", "bulkgen_cli", "submit", str(path)], env=base_env(tmp_path),
                          capture_output=True, text=True, cwd=ROOT, timeout=60, preexec_fn=_limit_memory)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr) < 20_000  # one clear message per problem, bounded
    assert not Path("/tmp/bulkgen-pwned").exists()


def test_nothing_read_from_the_store_is_run(tmp_path):
    """A shared database must not be a way to make a worker run commands."""
    import sqlite3

    env = env_for(tmp_path)
    bulk_id = submit_file(env, EXAMPLES / "articles.yaml")
    marker = tmp_path / "pwned"
    db = sqlite3.connect(tmp_path / "xdg" / "bulkgen" / "bulkgen.db")
    channels = [f"exec:touch {marker}", f"on-complete:touch {marker}", f"webhook:file://{marker}",
                f"email:`touch {marker}`@x.com"]
    db.execute("UPDATE bulk_jobs SET notify = ? WHERE id = ?", (json.dumps(channels), bulk_id))
    db.commit()
    db.close()
    result = run_cli(["run"], env | {"BULKGEN_NOTIFY_RETRY": "0.01"})
    assert result.code == 0
    assert not marker.exists()
    doc = status_of(env, bulk_id)
    states = {n["channel"].split(":")[0]: (n["state"], n["last_error"]) for n in doc["notifications"]}
    assert states["exec"][0] == "failed" and "unknown channel kind" in states["exec"][1]
    assert states["webhook"][0] == "failed" and "not an http(s) URL" in states["webhook"][1]
