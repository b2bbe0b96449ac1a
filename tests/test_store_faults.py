"""Store faults say what happened: no store, a read-only store, a full disk.

Read-only stores are real: the CLI runs as a process that file permissions bind
(an ordinary user; as root, root without the capabilities that override file
permissions, or else the user nobody) on a store in a directory it cannot write.
A full disk is real too: SQLite's own limit on the store's size
(`PRAGMA max_page_count`, always), and a tiny tmpfs where mounts are allowed.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bulkgen_cli.core.errors import NoStore, StoreFull, StoreReadOnly, StoreUnavailable
from bulkgen_cli.core.model import BulkStatus, utcnow
from bulkgen_cli.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.cli_helpers import EXAMPLES, ROOT, Result, base_env
from tests.conftest import submit, wait_for
from tests.files import write_articles

NOBODY = 65534
PR_CAPBSET_DROP = 24
#: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: what lets root ignore file modes.
FILE_CAPABILITIES = (0, 1, 2, 3)


# -- running bulkgen as someone who cannot write the store ------------------------------------------


def _drop_file_capabilities() -> None:
    """In the child: root keeps uid 0 but loses, from exec on, the power to ignore file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in FILE_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


PROBE = """\
import sys
try:
    open(sys.argv[1], "a")
except PermissionError:
    import bulkgen_cli.cli.main  # the interpreter and the package load for this user too
    sys.exit(0)
sys.exit(1)
"""


@functools.cache
def bound_by_permissions():
    """(preexec_fn, who) for a child that file permissions bind; None when there is no way."""
    if os.geteuid() != 0:
        return None, "this ordinary user"
    folder = Path(tempfile.mkdtemp(prefix="bulkgen-probe-"))
    try:
        target = folder / "file"
        target.write_text("")
        target.chmod(0o444)
        folder.chmod(0o555)
        for preexec, who in ((_drop_file_capabilities, "root without CAP_DAC_OVERRIDE"),
                             (_become_nobody, "the user nobody")):
            try:
                probe = subprocess.run([sys.executable, "-c", PROBE, str(target)], preexec_fn=preexec,
                                       cwd=ROOT, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            if probe.returncode == 0:
                return preexec, who
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
    return None


@pytest.fixture
def as_reader():
    """Run bulkgen as a process that cannot write what it may not write."""
    way = bound_by_permissions()
    if way is None:
        pytest.skip("as root, neither dropping CAP_DAC_OVERRIDE nor becoming nobody works here")
    preexec, _who = way

    def run(args: list[str], env: dict[str, str]) -> Result:
        proc = subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, capture_output=True,
                              text=True, cwd=ROOT, timeout=60, preexec_fn=preexec)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    run.spawn = lambda args, env: subprocess.Popen(  # type: ignore[attr-defined]
        [sys.executable, "-m", "bulkgen_cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, preexec_fn=preexec)
    return run


@pytest.fixture
def store_dir():
    """A folder everyone may enter (nobody too, unlike pytest's tmp_path), restored and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="bulkgen-ro-"))
    folder.chmod(0o755)
    yield folder
    folder.chmod(0o755)
    for child in folder.iterdir():
        child.chmod(0o644)
    shutil.rmtree(folder)


def make_read_only(folder: Path) -> None:
    for child in folder.iterdir():
        child.chmod(0o444)
    folder.chmod(0o555)


def files(folder: Path) -> dict[str, bytes]:
    return {child.name: child.read_bytes() for child in sorted(folder.iterdir())}


def populate(path: Path):
    """Two jobs of alice's, the second cancelled (so `watch` ends at once)."""
    store = SqliteStore(path)
    try:
        first, second = submit(store, 10, prefix="First"), submit(store, 10, prefix="Second")
        store.cancel_bulk(second.id, utcnow())
        store.refresh_counters(second.id, utcnow())
    finally:
        store.close()
    return first, second


@pytest.fixture(params=["closed", "wal-in-use"])
def read_only_store(request, store_dir, tmp_path):
    """A store nobody may write. closed: no -wal/-shm beside it; wal-in-use: a writer of the owner keeps
    a change (the first job paused) in the write-ahead log, not yet in the main file."""
    path = store_dir / "store.db"
    first, second = populate(path)
    writer = None
    if request.param == "wal-in-use":
        writer = SqliteStore(path)
        assert writer.set_bulk_state(first.id, [BulkStatus.queued], BulkStatus.paused, utcnow())
        assert os.path.getsize(f"{path}-wal") > 0 and os.path.exists(f"{path}-shm")
    else:
        assert sorted(p.name for p in store_dir.iterdir()) == ["store.db"]
    make_read_only(store_dir)
    env = base_env(tmp_path) | {"BULKGEN_STORE": str(path), "BULKGEN_USER": "alice"}
    expected_first = "paused" if writer else "queued"
    yield path, env, first.id, second.id, expected_first
    store_dir.chmod(0o755)
    if writer is not None:
        writer.close()


# -- reading commands ------------------------------------------------------------------------------


def test_reading_commands_work_on_a_read_only_store(read_only_store, as_reader):
    path, env, first, second, first_status = read_only_store
    before = files(path.parent)

    listed = as_reader(["list", "--json"], env)
    assert listed.code == 0, listed.err
    assert {b["id"]: b["status"] for b in json.loads(listed.out)} == {first: first_status, second: "cancelled"}
    shown = as_reader(["status", first, "--json"], env)
    assert shown.code == 0, shown.err
    doc = json.loads(shown.out)
    assert doc["bulk_job"]["status"] == first_status and len(doc["jobs"]) == 10
    exported = as_reader(["results", first, "--format", "jsonl"], env)
    assert exported.code == 0 and len(exported.out.splitlines()) == 10, exported.err
    watched = as_reader(["watch", second, "--json"], env)
    assert watched.code == 1 and json.loads(watched.out)["bulk_job"]["status"] == "cancelled", watched.err
    plain = as_reader(["list"], env)
    assert plain.code == 0 and "First job" in plain.out, plain.err

    assert files(path.parent) == before  # not a byte written, no -wal/-shm created
    for result in (listed, shown, exported, watched, plain):
        assert "Traceback" not in result.err


def test_watch_on_a_read_only_store_sees_the_owners_changes(store_dir, tmp_path, as_reader):
    """Without -wal/-shm in a folder it cannot write, the reader reads the main file as a snapshot:
    a fresh one for every look, so the owner's later changes show up."""
    path = store_dir / "store.db"
    first, _ = populate(path)
    make_read_only(store_dir)
    env = base_env(tmp_path) | {"BULKGEN_STORE": str(path), "BULKGEN_USER": "alice"}
    watcher = as_reader.spawn(["watch", first.id], env)
    try:
        assert select.select([watcher.stderr], [], [], 30)[0], "watch printed nothing in 30 s"
        assert f"{first.id} queued: 0 of 10 completed" in watcher.stderr.readline()  # it is watching
        store_dir.chmod(0o755)  # the owner (who may write the folder) cancels the job
        path.chmod(0o644)
        owner = SqliteStore(path)
        assert owner.cancel_bulk(first.id, utcnow())
        owner.refresh_counters(first.id, utcnow())
        owner.close()
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    assert watcher.returncode == 1, err
    assert f"{first.id} cancelled: 0 of 10 completed, 0 failed, 10 cancelled" in err


def test_a_log_that_cannot_be_read_here_is_refused_not_misread(store_dir, tmp_path, as_reader):
    """A -wal with changes but no -shm, in a directory the reader cannot write: an immutable read
    would show the main file without those changes, so the reader says why it cannot read."""
    path = store_dir / "store.db"
    first, _ = populate(path)
    crash = ("import os, sqlite3, sys\n"
             "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "db.execute(\"UPDATE bulk_jobs SET status = 'paused' WHERE id = ?\", (sys.argv[2],))\n"
             "os._exit(0)  # a crash: the change stays in the -wal\n")
    subprocess.run([sys.executable, "-c", crash, str(path), first.id], check=True)
    os.remove(f"{path}-shm")
    assert os.path.getsize(f"{path}-wal") > 0
    make_read_only(store_dir)
    env = base_env(tmp_path) | {"BULKGEN_STORE": str(path), "BULKGEN_USER": "alice"}

    refused = as_reader(["status", first.id, "--json"], env)
    assert refused.code == 5 and json.loads(refused.out)["error"]["code"] == 5  # --json: the error as JSON too
    assert f"cannot read the SQLite store {path}: its write-ahead log {path}-wal holds changes" in refused.err
    assert "Traceback" not in refused.err
    # As the message says: once someone who may write the folder opened it, it reads, changes included.
    store_dir.chmod(0o755)
    owner = subprocess.run([sys.executable, "-m", "bulkgen_cli", "list", "--json"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert owner.returncode == 0, owner.stderr
    make_read_only(store_dir)
    now = as_reader(["status", first.id, "--json"], env)
    assert now.code == 0 and json.loads(now.out)["bulk_job"]["status"] == "paused", now.err


# -- writing commands ------------------------------------------------------------------------------


def test_writing_commands_on_a_read_only_store_exit_5_and_change_nothing(read_only_store, as_reader):
    path, env, first, second, first_status = read_only_store
    before = files(path.parent)

    toggle = "resume" if first_status == "paused" else "pause"  # a change, not a no-op
    for args in (["submit", str(EXAMPLES / "articles.yaml")], [toggle, first], ["cancel", first], ["run"]):
        result = as_reader(args, env)
        assert result.code == 5, (args, result)
        assert f"Error: the store at {path} is read-only" in result.err, (args, result.err)
        assert "Traceback" not in result.err and result.out == ""
    elsewhere = path.parent / "new.db"
    created = as_reader(["submit", str(EXAMPLES / "articles.yaml"), "--store", str(elsewhere)], env)
    assert created.code == 5 and f"the store at {elsewhere} is read-only" in created.err, created.err

    assert files(path.parent) == before
    store = SqliteStore(path, "read")
    try:
        assert {b.id: b.status for b in store.list_bulks()} == {first: first_status, second: "cancelled"}
        assert [i.status for i in store.list_items(first)] == ["queued"] * 10
    finally:
        store.close()


# -- the WAL index changed under a running processor ----------------------------------------------

SHM_FAULTS = {
    # What SQLite's first opener does to it, or `: > bulkgen.db-shm`: its mapped pages now lie past the end.
    "truncated": lambda shm: os.truncate(shm, 0),
    # A copy made read-only put in its place (cp + chmod + mv): the processor maps the old file.
    "replaced": lambda shm: (shutil.copyfile(shm, f"{shm}.new"), os.chmod(f"{shm}.new", 0o444),
                             os.replace(f"{shm}.new", shm)),
    # chmod 0444, for a processor that file modes bind (root ignores them).
    "read-only": lambda shm: os.chmod(shm, 0o444),
}


@pytest.mark.parametrize("fault", list(SHM_FAULTS))
def test_a_wal_index_changed_mid_run_ends_the_processor_with_exit_5_not_a_signal(store_dir, tmp_path, fault):
    """The reporter's SIGBUS (exit -7, no message): SQLite maps bulkgen.db-shm into memory, and a page
    past the end of a truncated file kills the process on its next touch. The processor must look first."""
    preexec = None
    if fault == "read-only":
        way = bound_by_permissions()
        if way is None:
            pytest.skip("as root, neither dropping CAP_DAC_OVERRIDE nor becoming nobody works here")
        preexec = way[0]
        store_dir.chmod(0o777)  # nobody (if that is the way) must be able to write the store
    path = store_dir / "store.db"
    first, _ = populate(path)
    for child in store_dir.iterdir():
        child.chmod(0o666)
    env = base_env(tmp_path) | {"BULKGEN_STORE": str(path), "BULKGEN_USER": "alice"}
    proc = subprocess.Popen([sys.executable, "-m", "bulkgen_cli", "run", "--forever"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    try:
        def first_done() -> bool:
            reader = SqliteStore(path, "read")
            try:
                return reader.get_bulk(first.id).status == "completed"
            finally:
                reader.close()

        wait_for(first_done, timeout=30, what="the processor to finish the first job")
        shm = f"{path}-shm"
        assert os.path.getsize(shm) >= 32768  # mapped by the idle processor, which keeps looking for work
        SHM_FAULTS[fault](shm)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, (proc.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    if fault == "read-only":
        assert last == (f"Error: the store at {path} is read-only: its shared-memory file {shm} cannot be "
                        "written by this user; nothing was changed."), err
    else:
        assert last.startswith(f"Error: cannot use the SQLite store {path} safely: its shared-memory file "
                               f"{shm} {'was truncated (from' if fault == 'truncated' else 'was replaced'}"), err
    assert "Traceback" not in err
    # Nothing was lost: once the processor is gone, the store opens (rebuilding its index) with every result.
    if os.path.exists(shm):  # a read-only one was closed cleanly: the last connection removed it
        os.chmod(shm, 0o644)
    store = SqliteStore(path)
    try:
        assert [i.status for i in store.list_items(first.id)] == ["completed"] * 10
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()


# -- no store --------------------------------------------------------------------------------------

ANY_ID = "6b0b564e5a3270849fe2ea28"


@pytest.mark.parametrize("args", [
    ["list"], ["list", "--json"], ["status", ANY_ID], ["watch", ANY_ID], ["results", ANY_ID],
    ["pause", ANY_ID], ["resume", ANY_ID], ["cancel", ANY_ID], ["retry-failed", ANY_ID],
], ids=lambda a: " ".join(a[:2]))
def test_no_store_at_a_mistyped_path_exits_4_and_creates_nothing(cli, tmp_path, args):
    path = tmp_path / "typo" / "store.db"
    result = cli(*args, "--store", f"sqlite:///{path}")
    assert result.code == 4, result
    assert result.err.startswith(f"Error: no store at {path};") and "bulkgen submit" in result.err
    expected_out = "" if "--json" not in args else result.out  # with --json the error is JSON on stdout too
    assert result.out == expected_out and "Traceback" not in result.err
    if "--json" in args:
        assert json.loads(result.out)["error"]["code"] == 4
    assert not (tmp_path / "typo").exists()
    default = cli(*args)  # the default store, under $XDG_DATA_HOME, is not created either
    assert default.code == 4 and "no store at" in default.err
    assert not (tmp_path / "xdg").exists()


def test_an_empty_file_is_no_store_and_stays_empty(cli, tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    result = cli("status", ANY_ID, "--store", str(path))
    assert result.code == 4 and f"no store at {path}" in result.err
    assert path.read_bytes() == b"" and [p.name for p in tmp_path.iterdir()] == ["empty.db"]


def test_an_old_schema_is_not_upgraded_by_a_reading_command(cli, tmp_path):
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    bulk = submit(store, 10, user="tester")
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP INDEX bulk_jobs_group")
    db.execute("ALTER TABLE bulk_jobs DROP COLUMN group_id")
    db.execute("ALTER TABLE generation_jobs DROP COLUMN fence")
    db.execute("DROP TABLE counters")
    for column in ("quality", "quality_ratio", "flagged_items", "quality_summary", "turned_down_items"):
        db.execute(f"ALTER TABLE bulk_jobs DROP COLUMN {column}")
    db.execute("ALTER TABLE generation_jobs DROP COLUMN verdict")
    db.execute("ALTER TABLE bulk_jobs DROP COLUMN notify_policy")
    db.execute("ALTER TABLE generation_jobs DROP COLUMN sent_at")
    db.execute("DROP INDEX bulk_jobs_usage")
    db.execute("ALTER TABLE bulk_jobs DROP COLUMN stored_bytes")
    db.execute("ALTER TABLE schedule_occurrences DROP COLUMN claim")
    db.execute("PRAGMA user_version = 3")
    db.close()

    read = cli("status", bulk.id, "--store", str(path))
    assert read.code == 5 and "Traceback" not in read.err
    assert f"the SQLite store {path} has schema 3, older than this bulkgen's {SCHEMA_VERSION}" in read.err
    assert "run a writing command" in read.err
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3  # untouched
    db.close()
    assert cli("pause", bulk.id, "--store", str(path)).code == 0  # a writing command upgrades it
    again = cli("status", bulk.id, "--store", str(path), "--json")
    assert again.code == 0 and json.loads(again.out)["bulk_job"]["status"] == "paused"


# -- a full disk -----------------------------------------------------------------------------------


def big_file(tmp_path: Path) -> Path:
    return write_articles(tmp_path / "big.yaml", [{"topic": f"Topic {n}", "instructions": "x" * 2000} for n in range(50)])


def capped_at_its_size(opened):
    """SqliteStore.__init__, then the store may not grow: SQLite answers SQLITE_FULL, as on a full disk."""

    def init(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        self.db.execute(f"PRAGMA max_page_count = {pages}")

    return init


def test_a_full_disk_during_submit_exits_5_and_stores_nothing(cli, tmp_path):
    path = tmp_path / "xdg" / "bulkgen" / "bulkgen.db"
    first = cli("submit", str(EXAMPLES / "articles.yaml"))
    assert first.code == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqliteStore, "__init__", capped_at_its_size(SqliteStore.__init__))
        full = cli("submit", str(big_file(tmp_path)))
        listed = cli("list", "--json")  # reading still works on the full disk

    assert full.code == 5 and full.out == "", full
    assert f"Error: the disk holding {path} is full" in full.err and "nothing was changed" in full.err
    assert "Traceback" not in full.err
    assert listed.code == 0 and [b["id"] for b in json.loads(listed.out)] == [first.out.strip()]
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM bulk_jobs").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM generation_jobs").fetchone()[0] == 12
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert cli("submit", str(big_file(tmp_path))).code == 0  # with room again, the same file goes in


def test_sqlite_full_rolls_the_whole_transaction_back(tmp_path):
    """SQLite rolls back by itself on SQLITE_FULL; the store must say "full", not "cannot rollback",
    and leave no transaction open behind it."""
    from bulkgen_cli.core.model import BulkJob, new_id

    path = tmp_path / "store.db"
    kept = populate(path)[0]
    capped = SqliteStore.__new__(SqliteStore)
    capped_at_its_size(SqliteStore.__init__)(capped, path)
    try:
        bulk = BulkJob(id=new_id(), userId="alice", mode="topic", name="big", status="queued",
                       total_items=50, created_at=utcnow())
        big = [{"topic": f"T{n}", "instructions": "x" * 2000} for n in range(50)]
        with pytest.raises(StoreFull) as raised:
            capped.create_bulk(bulk, big)
        assert isinstance(raised.value.__cause__, sqlite3.Error)
        assert raised.value.__cause__.sqlite_errorname == "SQLITE_FULL"
        assert f"the disk holding {path} is full" in str(raised.value)
        assert not capped.db.in_transaction
        assert capped.get_bulk(bulk.id) is None and capped.list_items(bulk.id) == []
        # The connection goes on: a change that needs no new page still commits.
        assert capped.set_bulk_state(kept.id, [BulkStatus.queued], BulkStatus.paused, utcnow())
        assert capped.get_bulk(kept.id).status == "paused"
    finally:
        capped.close()


FULL_DISK_SCRIPT = """\
import json, os, sqlite3, subprocess, sys

folder, articles = sys.argv[1], sys.argv[2]
store = os.path.join(folder, "store.db")
env = dict(os.environ, BULKGEN_STORE=store)


def bulkgen(*args):
    done = subprocess.run([sys.executable, "-m", "bulkgen_cli", *args], env=env, capture_output=True, text=True)
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr}


steps = {"first": bulkgen("submit", articles)}
bulk_id = steps["first"]["out"].strip()
filler = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(filler, b"x" * 512)
except OSError as exc:
    steps["filled"] = exc.strerror
os.close(filler)
steps["submit"] = bulkgen("submit", articles)
steps["pause"] = bulkgen("pause", bulk_id)
steps["list"] = bulkgen("list", "--json")
steps["status"] = bulkgen("status", bulk_id, "--json")
os.remove(os.path.join(folder, "filler"))
steps["after"] = bulkgen("list", "--json")
db = sqlite3.connect(store)
steps["items"] = db.execute("SELECT count(*) FROM generation_jobs").fetchone()[0]
steps["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
db.close()
print(json.dumps(steps))
"""


def test_a_full_tmpfs_says_so_for_writes_and_still_reads(tmp_path):
    """The real thing where mounts are allowed (a private mount namespace, so nothing leaks out);
    skipped elsewhere: the max_page_count tests above always run."""
    unshare = shutil.which("unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = f"mount -t tmpfs -o size=512k tmpfs {disk}"
    if unshare is None or subprocess.run([unshare, "--mount", "--map-root-user", "sh", "-c", mount],
                                         capture_output=True, timeout=60).returncode != 0:
        pytest.skip("mounting a tmpfs in a private mount namespace is not permitted here")
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [unshare, "--mount", "--map-root-user", "sh", "-c",
         f'{mount} && exec "$0" "$1" "$2" "$3"', sys.executable, str(script), str(disk),
         str(EXAMPLES / "articles.yaml")],
        env=base_env(tmp_path) | {"BULKGEN_USER": "tester"}, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)
    path = disk / "store.db"
    assert steps["first"]["code"] == 0 and steps["filled"] == "No space left on device"
    for step in ("submit", "pause"):
        assert steps[step]["code"] == 5, steps[step]
        assert f"Error: the disk holding {path} is full" in steps[step]["err"]
        assert "Traceback" not in steps[step]["err"]
    assert steps["list"]["code"] == 0 and len(json.loads(steps["list"]["out"])) == 1, steps["list"]
    assert steps["status"]["code"] == 0 and json.loads(steps["status"]["out"])["bulk_job"]["status"] == "queued"
    assert steps["after"]["code"] == 0 and len(json.loads(steps["after"]["out"])) == 1
    assert steps["items"] == 12 and steps["integrity"] == "ok"


# -- MongoDB ---------------------------------------------------------------------------------------


def test_mongo_reading_open_writes_nothing_and_needs_a_store():
    import mongomock

    from bulkgen_cli.store.mongo import BULK_JOBS, META, MongoStore

    client = mongomock.MongoClient(tz_aware=True)
    for mode in ("read", "write"):
        with pytest.raises(NoStore, match="no store at mongodb://mock: the database holds no bulk jobs"):
            MongoStore(client, "bulkgen", "mongodb://mock", mode=mode)
    assert client["bulkgen"].list_collection_names() == []  # nothing created
    bulk = submit(MongoStore(client, "bulkgen", "mongodb://mock"), 10)  # create: submit makes it
    db = client["bulkgen"]
    db[META].delete_many({})  # as a store made before the indexes it now has
    db[BULK_JOBS].drop_indexes()
    indexes = db[BULK_JOBS].index_information()

    reader = MongoStore(client, "bulkgen", "mongodb://mock", mode="read")
    assert reader.get_bulk(bulk.id).total_items == 10
    assert db[META].count_documents({}) == 0 and db[BULK_JOBS].index_information() == indexes
    MongoStore(client, "bulkgen", "mongodb://mock", mode="write")  # a writing command adds them
    assert db[META].count_documents({}) == 1 and len(db[BULK_JOBS].index_information()) > len(indexes)


@pytest.mark.parametrize("code, error, message", [
    (13, StoreReadOnly, "the store at mongodb://u:***@h/db is read-only for this user"),
    (14031, StoreFull, "the disk holding the store at mongodb://u:***@h/db is full"),
    (2, StoreUnavailable, "MongoDB store mongodb://u:***@h/db: refused"),
])
def test_mongo_refused_writes_and_a_full_disk_are_named(monkeypatch, code, error, message):
    import mongomock
    from pymongo.errors import OperationFailure

    from bulkgen_cli.store.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), "bulkgen", "mongodb://u:pw@h/db")
    bulk = submit(store, 10)

    def refused(*args, **kwargs):
        raise OperationFailure("refused", code=code)

    monkeypatch.setattr(store.bulks, "update_one", refused)
    with pytest.raises(error) as raised:
        store.set_bulk_state(bulk.id, [BulkStatus.queued], BulkStatus.paused, utcnow())
    assert message in str(raised.value) and "pw" not in str(raised.value)
    assert type(raised.value) is error
