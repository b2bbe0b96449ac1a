"""The embedded store: one SQLite file, safe across processes.

WAL lets readers run beside the one writer; every change runs inside
`BEGIN IMMEDIATE` (the write lock is taken up front, so a read-then-write inside
a transaction cannot interleave with another process's) and waits on a busy
timeout rather than failing.

Opened for reading (`mode="read"`) the store is a `mode=ro` connection that
never creates, upgrades or writes the file; where SQLite cannot open the WAL
index (a read-only directory or a full disk without the -shm file) and the log
holds nothing, it reads the main file as an immutable snapshot, reopened for
every call so that changes made since are seen.

Before every verb the WAL index (-shm), which SQLite maps into memory, is
checked to be the file mapped, no shorter and writable: a truncated one would
kill the process with SIGBUS (design.md, "The store's files under the processes").
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import functools
import json
import os
import sqlite3
import stat
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import quote

from bulkgen_cli.core.errors import NoStore, StoreFull, StoreReadOnly, StoreUnavailable
from bulkgen_cli.core.model import PENDING_ITEM, Item, StateChange, iso, later
from bulkgen_cli.store import rules
from bulkgen_cli.store.base import COOLDOWN, OpenMode, Usage
from bulkgen_cli.store.queue import MODELS, Queue
from bulkgen_cli.store.sqlite_schema import (
    CHANGE_TRIGGERS, CLAIMABLE_SQL, MIGRATIONS, SCHEMA, SCHEMA_BASE,
)
from bulkgen_cli.store.rules import CHANGE_FIELDS, Change, Cmp, Where, record

#: The data model's version (rules.SCHEMA_VERSION): the file's `user_version`, reached through MIGRATIONS.
SCHEMA_VERSION = rules.SCHEMA_VERSION
BUSY_TIMEOUT_S = 30.0
#: A testing and tuning knob: seconds a write waits for another process's write lock (default BUSY_TIMEOUT_S).
ENV_BUSY_TIMEOUT = "BULKGEN_SQLITE_BUSY_TIMEOUT"
#: An I/O error with less free space than this on the store's disk is taken for a full disk.
FULL_BELOW_BYTES = 1 << 20

#: The highest number of the oldest `limit` changes made before a time (the changes_at index), and the
#: pruned floor raised to a number, never lowered (prune_changes).
PRUNE_TOP_SQL = "SELECT max(seq) FROM (SELECT seq FROM changes WHERE at < ? ORDER BY seq LIMIT ?)"
RAISE_FLOOR_SQL = ("INSERT INTO counters (name, value) VALUES ('changes_floor', ?)"
                   " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)")

#: The claim's job lookups (rules.claim_lookups; see claim_next), each over one partial index of claimable
#: jobs: an urgent job, the next user's first job after the last turn's user, the first user's; a test checks
#: their query plans.
_CLAIM_JOB = (
    "SELECT b.id, b.userId, b.status, b.started_at FROM bulk_jobs b INDEXED BY {index}"
    f" WHERE b.{CLAIMABLE_SQL} AND {{where}} (b.not_before IS NULL OR b.not_before <= ?)"
    " AND EXISTS (SELECT 1 FROM generation_jobs i WHERE i.bulk_job_id = b.id AND i.status = 'queued')"
    " ORDER BY {order} LIMIT 1"
)
CLAIM_URGENT_SQL = _CLAIM_JOB.format(index="bulk_jobs_urgent", where="b.priority_rank = ? AND",
                                     order=", ".join("b." + name for name in rules.JOB_ORDER))
CLAIM_TURN_SQL = _CLAIM_JOB.format(index="bulk_jobs_turn", where="b.userId > ? AND",
                                   order=", ".join("b." + name for name in rules.TURN_ORDER))
CLAIM_FIRST_TURN_SQL = _CLAIM_JOB.format(index="bulk_jobs_turn", where="",
                                         order=", ".join("b." + name for name in rules.TURN_ORDER))
#: Whose turn was last; and the record of the turn a claim took.
LAST_TURN_SQL = "SELECT userId FROM turns WHERE name = ?"
TAKE_TURN_SQL = (
    "INSERT INTO turns (name, userId) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET userId = excluded.userId"
)
#: Whether `owner` holds a live processor slot.
SLOT_HELD_SQL = "SELECT 1 FROM leases WHERE owner = ? AND name != ? AND expires_at >= ?"
#: The store-wide fencing counter: one atomic increment, only ever grows.
NEXT_FENCE_SQL = (
    "INSERT INTO counters (name, value) VALUES ('fence', 1)"
    " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
)
CLAIM_ITEM_SQL = (
    "SELECT id, bulk_job_id FROM generation_jobs WHERE bulk_job_id = ? AND status = 'queued'"
    f" ORDER BY {rules.ITEM_ORDER} LIMIT 1"
)

#: The ids just below and just above an item's (short ids): each a lookup on the primary key's index.
ITEM_NEIGHBOURS_SQL = (
    "SELECT (SELECT max(id) FROM generation_jobs WHERE id < ?), (SELECT min(id) FROM generation_jobs WHERE id > ?)"
)

T = TypeVar("T")


def _ts(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


# -- the rules' records and changes, as SQLite stores them ------------------------------------------


def _sql(value: Any) -> Any:
    """A value as SQLite stores it: times as ISO text, lists and dicts as JSON text."""
    if isinstance(value, dt.datetime):
        return iso(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


#: Each kind of record's table (queue.MODELS).
TABLES = {"bulks": "bulk_jobs", "items": "generation_jobs", "leases": "leases", "templates": "templates",
          "schedules": "schedules", "occurrences": "schedule_occurrences", "tokens": "api_tokens"}
#: How each column reads back: times and JSON by their field's kind (the field tables); these integers as booleans.
_KINDS = {kind: {f.name: f.kind for f in fields} for kind, (_, fields) in MODELS.items()}
_BOOLEANS = ("admin", "notify_pending", "hook_pending")
_OPS = {"ne": "IS NOT", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _decode(kind: str, row: sqlite3.Row) -> dict[str, Any]:
    """A row's values as the queue reads them: times as datetimes, JSON decoded."""
    values, kinds = dict(row), _KINDS[kind]
    for name, value in values.items():
        if value is None:
            continue
        if kinds.get(name) == rules.TIME:
            values[name] = _ts(value)
        elif kinds.get(name) == rules.JSON:
            values[name] = json.loads(value)
        elif name in _BOOLEANS:
            values[name] = bool(value)
    return values


def _path(name: str) -> tuple[str, str | None]:
    """A field's column, and its JSON path inside it (`outbox.steps.2.state`: outbox, $.steps[2].state)."""
    column, *rest = name.split(".")
    if not rest:
        return column, None
    return column, "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)


def _column(name: str) -> str:
    column, path = _path(name)
    return column if path is None else f"json_extract({column}, '{path}')"


def _where(where: Where) -> tuple[str, list[Any]]:
    """A WHERE clause from a `rules.Where`."""
    if isinstance(where, list):
        parts = [_where(alt) for alt in where]
        return " OR ".join(f"({sql})" for sql, _ in parts) or "0", [a for _, args in parts for a in args]
    terms, args = [], []
    for name, wanted in where.items():
        column = _column(name)
        for value in wanted if isinstance(wanted, list) else [wanted]:
            if isinstance(value, Cmp):
                terms.append(f"{column} {_OPS[value.op]} ?")
                args.append(_sql(value.value))
            elif isinstance(value, tuple):
                terms.append(f"{column} IN {_marks(value)}")
                args += [_sql(v) for v in value]
            else:
                terms.append(f"{column} IS ?")
                args.append(_sql(value))
    return " AND ".join(terms) or "1", args


def _marks(values: Iterable[Any]) -> str:
    return f"({', '.join('?' for _ in values)})"


def _insert(db: sqlite3.Connection, table: str, rows: list[dict[str, Any]], verb: str = "INSERT") -> None:
    if rows:
        columns = list(rows[0])
        db.executemany(f"{verb} INTO {table} ({', '.join(columns)}) VALUES {_marks(columns)}",
                       [[_sql(row[c]) for c in columns] for row in rows])


def busy_timeout() -> float:
    """How long a statement waits for a lock another process holds: BUSY_TIMEOUT_S, or the knob's positive number."""
    try:
        seconds = float(os.environ.get(ENV_BUSY_TIMEOUT, ""))
    except ValueError:
        return BUSY_TIMEOUT_S
    return seconds if 0 < seconds < float("inf") else BUSY_TIMEOUT_S


def _update(db: sqlite3.Connection, table: str, change: Change | Mapping[str, Any], where: str,
            *args: Any) -> int:
    """One UPDATE of `change` (counters added to never drop below zero; a field `a.b` set inside the JSON
    column `a`); how many rows it changed."""
    if not isinstance(change, Change):
        change = Change(dict(change))
    sets, params, inside = [], [], {}
    for name, value in change.set.items():
        column, path = _path(name)
        if path is None:
            sets.append(f"{column} = ?")
            params.append(_sql(value))
        else:
            inside.setdefault(column, []).append((path, value))
    for column, pairs in inside.items():
        sets.append(f"{column} = json_set({column}, " + ", ".join(
            f"'{path}', " + ("json(?)" if isinstance(v, (list, dict)) else "?") for path, v in pairs) + ")")
        params += [_sql(v) for _, v in pairs]
    sets += [f"{k} = max({k} + ?, 0)" for k in change.add]
    params += list(change.add.values())
    return db.execute(f"UPDATE {table} SET {', '.join(sets)} WHERE {where}", (*params, *args)).rowcount


def _disk_full(path: Path) -> bool:
    """Whether the file system holding `path` has (next to) no space or no inodes left."""
    for where in (path, path.parent):
        try:
            st = os.statvfs(where)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES or (st.f_files > 0 and st.f_favail == 0)
    return False


def store_error(path: Path, exc: sqlite3.Error, opening: bool = False) -> StoreUnavailable:
    """The StoreUnavailable that says what happened, chosen by SQLite's (extended) error code."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    primary = code & 0xFF
    if primary == sqlite3.SQLITE_READONLY and code != sqlite3.SQLITE_READONLY_DBMOVED:
        return StoreReadOnly(f"the store at {path} is read-only ({exc}); nothing was changed.")
    if primary == sqlite3.SQLITE_FULL or (primary == sqlite3.SQLITE_IOERR and _disk_full(path)):
        return StoreFull(f"the disk holding {path} is full ({exc}); nothing was changed.")
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StoreUnavailable(
            f"cannot open the SQLite store {path}: {exc} (can this user read it and its directory?)."
        )
    if opening:
        return StoreUnavailable(f"cannot open the SQLite store {path}: {exc}.")
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite store {path}: {exc}.")
    return StoreUnavailable(f"SQLite store {path} is not usable: {exc}.")


def _os_error(path: Path, exc: OSError) -> StoreUnavailable:
    """The StoreUnavailable for a failure to create the store's directory."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreReadOnly(
            f"the store at {path} is read-only: its directory cannot be created ({exc.strerror})."
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"the disk holding {path} is full ({exc.strerror}); nothing was changed.")
    return StoreUnavailable(f"cannot open the SQLite store {path}: {exc}.")


def _log_holds_changes(path: Path) -> bool:
    """Whether a -wal (or rollback -journal) file beside the store holds anything."""
    for suffix in ("-wal", "-journal"):
        try:
            if os.stat(f"{path}{suffix}").st_size > 0:
                return True
        except FileNotFoundError:
            continue
        except OSError:
            return True  # cannot tell: assume it does
    return False


def _shm_state(path: Path) -> os.stat_result | None:
    """The WAL index beside the store as it is now (not opened: closing a descriptor of it would drop
    this process's SQLite locks on it), or None when there is none."""
    try:
        return os.stat(f"{path}-shm")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"cannot use the SQLite store {path}: its shared-memory file {path}-shm "
                               f"cannot be looked at ({exc.strerror}).") from exc


def _unavailable(method: Callable[..., T]) -> Callable[..., T]:
    """Turn SQLite's errors into StoreUnavailable (read-only, full, …) with the file named."""

    @functools.wraps(method)
    def wrapper(self: SqliteStore, *args: Any, **kwargs: Any) -> T:
        try:
            if self.snapshot:
                self._reopen_snapshot()
            else:
                self._check_shm()
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise store_error(self.path, exc) from exc

    return wrapper


def _create_private(path: Path) -> None:
    """Create the store's file readable and writable by its owner only (0600, whatever the umask); SQLite gives
    its -wal and -shm files the main file's mode. An existing file keeps its mode; a file that cannot be
    created is left to SQLite's own open, which says why."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass


class SqliteStore(Queue):
    def __init__(self, path: str | Path, mode: OpenMode = "create"):
        self.path = Path(path)
        self.display_url = f"sqlite:///{self.path}"
        self.mode = mode
        #: Reading the main file as an immutable snapshot (see the module's docstring).
        self.snapshot = False
        self._lock = threading.RLock()
        #: The WAL index (-shm) this connection mapped: its (device, inode) and the largest size seen
        #: (design.md, "The store's files under the processes").
        self._shm: tuple[int, int] | None = None
        self._shm_size = 0
        #: Why the connection was abandoned (see `_abandon`), or None.
        self._abandoned: str | None = None
        if mode != "create" and not self._exists():
            raise self._no_store()
        if mode == "read":
            self.db, self.snapshot = self._read_connection()
            if not self.snapshot:
                try:
                    self._check_shm()
                except BaseException:
                    self.close()  # not SQLite's close if the index is gone (see close)
                    raise
            return
        try:
            if mode == "create":
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(self.path, exc) from exc
        if mode == "create":
            _create_private(self.path)
        self.db = self._connect("rwc" if mode == "create" else "rw")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if mode == "write" and version == 0:
                raise self._no_store()
            if version != SCHEMA_VERSION:
                self._create_schema()
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._check_shm()
        except sqlite3.Error as exc:
            self.db.close()
            raise store_error(self.path, exc, opening=True) from exc
        except BaseException:
            self.close()  # not SQLite's close if the index is gone (see close)
            raise

    def _exists(self) -> bool:
        try:
            self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {self.path}: {exc.strerror}.") from exc
        return True

    def _no_store(self) -> NoStore:
        return NoStore(f"no store at {self.path}", cli="; `bulkgen submit FILE` creates one "
                       "(or check --store / BULKGEN_STORE).", http=".")

    def _connect(self, mode: str, immutable: bool = False) -> sqlite3.Connection:
        """Connect through a `file:` URI, so that `mode=ro` / `mode=rw` never create the file."""
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}" + ("&immutable=1" if immutable else "")
        try:
            db = sqlite3.connect(uri, uri=True, timeout=busy_timeout(), isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            if (mode == "rwc" and getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_CANTOPEN
                    and not self.path.exists() and not os.access(self.path.parent, os.W_OK)):
                raise StoreReadOnly(f"the store at {self.path} is read-only: it cannot be created in "
                                    f"{self.path.parent}, which this user may not write.") from exc
            raise store_error(self.path, exc, opening=True) from exc
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout() * 1000)}")
        return db

    def _read_connection(self) -> tuple[sqlite3.Connection, bool]:
        """A connection that cannot write, checked; True when it reads an immutable snapshot."""
        db = self._connect("ro")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # opens the WAL index (-shm)
            snapshot = False
        except sqlite3.Error as exc:
            db.close()
            if _log_holds_changes(self.path):
                # An immutable read would miss the log's changes: refuse rather than show stale data.
                raise StoreUnavailable(
                    f"cannot read the SQLite store {self.path}: its write-ahead log {self.path}-wal holds "
                    f"changes that SQLite cannot read without creating {self.path}-shm, and it cannot here "
                    f"({exc}); any bulkgen command run once by a user who can write {self.path.parent} "
                    "(or after freeing disk space) makes it readable."
                ) from exc
            # No -wal content: the main file holds every committed change.
            db = self._connect("ro", immutable=True)
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error:
                db.close()
                raise store_error(self.path, exc, opening=True) from exc
            snapshot = True
        try:
            self._check_readable(version)
        except BaseException:
            db.close()
            raise
        return db, snapshot

    def _check_readable(self, version: int) -> None:
        if version == 0:
            raise NoStore(f"no store at {self.path}: the SQLite file there holds no bulkgen store",
                          cli="; `bulkgen submit FILE` creates one (or check --store / BULKGEN_STORE).", http=".")
        if version > SCHEMA_VERSION:
            raise self._newer(version)
        if version < SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the SQLite store {self.path} has schema {version}, older than this bulkgen's "
                f"{SCHEMA_VERSION}, and a reading command does not upgrade it",
                cli=": run a writing command (`bulkgen run`, `submit`, `pause`, …) once as a user who can write it.",
                http=": a writing command upgrades it.")

    def _newer(self, version: int) -> StoreUnavailable:
        return StoreUnavailable(
            f"the SQLite store {self.path} was made by a newer bulkgen (schema {version}); upgrade bulkgen."
        )

    def _reopen_snapshot(self) -> None:
        """A fresh snapshot per call: the file may have changed (or got a readable WAL) since."""
        with self._lock:
            self.db.close()
            self.db, self.snapshot = self._read_connection()

    def _create_schema(self) -> None:
        self.db.execute("PRAGMA journal_mode = WAL")
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise self._newer(version)
            if version == 0:  # a new file: schema 7's tables, then every later step
                script = SCHEMA + "".join(step for target, step in MIGRATIONS if target > SCHEMA_BASE)
            else:  # each step whose target is above the file's version, in order; SCHEMA adds missing tables
                script = "".join(step for target, step in MIGRATIONS if target > version) + SCHEMA
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            for trigger in CHANGE_TRIGGERS:
                db.execute(trigger)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back whole (a failed COMMIT too)."""
        with self._lock:
            if self.db.in_transaction:  # a verb made of verbs (cancel_item refreshes): one transaction, the outer one
                yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (SQLITE_FULL, some I/O errors): then
        # ROLLBACK would fail with "no transaction is active" and hide the error that matters.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # uncommitted changes never reach the file: the next open discards them

    def _check_shm(self) -> None:
        """Before SQLite reads or writes its memory-mapped WAL index (-shm): it must still be the file
        this connection mapped, no shorter, and (for a writer) writable by this user.

        A mapped page past a truncated file's end kills the process with SIGBUS on the next touch; a
        replaced or removed file leaves this process and the others with two different indexes of one
        log. Either way the connection is abandoned (see `_abandon`) and the store fault is said.
        """
        if self._abandoned is not None:
            raise self._shm_fault(self._abandoned)
        state = _shm_state(self.path)
        if self._shm is None:  # the first look (or not in WAL mode yet): what is there is what SQLite mapped
            if state is None:
                return
            self._shm, self._shm_size = (state.st_dev, state.st_ino), state.st_size
        problem = None
        if state is None:
            problem = "was removed"
        elif (state.st_dev, state.st_ino) != self._shm or not stat.S_ISREG(state.st_mode):
            problem = "was replaced"
        elif state.st_size < self._shm_size:
            problem = f"was truncated (from {self._shm_size} to {state.st_size} bytes)"
        if problem is not None:
            self._abandon(problem)
            raise self._shm_fault(problem)
        self._shm_size = state.st_size
        if self.mode != "read" and not os.access(f"{self.path}-shm", os.W_OK):
            raise StoreReadOnly(f"the store at {self.path} is read-only: its shared-memory file "
                                f"{self.path}-shm cannot be written by this user; nothing was changed.")

    def _shm_fault(self, problem: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"cannot use the SQLite store {self.path} safely: its shared-memory file {self.path}-shm {problem} "
            "while this process had it open; nothing more was changed, and the next bulkgen to open the store "
            "once every process using it has stopped rebuilds that file from the store and its log."
        )

    def _abandon(self, problem: str) -> None:
        """Leave this connection open until the process ends: closing it would checkpoint through the
        mapped index (SIGBUS on a truncated one, stale pages from a replaced one). The extra reference
        keeps Python from closing it when the store is dropped; the process's exit releases it, and every
        change committed before is in the log, which the next opener reads."""
        if self._abandoned is None:
            self._abandoned = problem
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.db))

    def close(self) -> None:
        if not self.snapshot and self._abandoned is None:
            try:
                self._check_shm()
            except StoreReadOnly:
                pass  # unwritable now, but still the file mapped: closing is safe
            except StoreUnavailable:
                return  # abandoned: not closed
        if self._abandoned is None:
            self.db.close()

    def __del__(self) -> None:
        # A store dropped without close(): the same check, so that Python does not close an abandoned
        # connection's sibling through a truncated index either.
        try:
            if "db" in self.__dict__:
                self.close()
        except Exception:  # noqa: BLE001  never from a finaliser
            pass


    # -- the primitives (queue.Queue) ---------------------------------------------------------------------

    @contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE`: the block's reads and writes are one transaction no other writer interleaves with."""
        try:
            if self.snapshot:
                self._reopen_snapshot()
            else:
                self._check_shm()
            with self._tx() as db:
                yield db
        except sqlite3.DatabaseError as exc:
            raise store_error(self.path, exc) from exc

    @_unavailable
    def _find(self, kind: str, where: Where, order: Iterable[str] = (), limit: int | None = None,
              fields: Iterable[str] | None = None) -> list[dict[str, Any]]:
        clause, args = _where(where)
        columns = "*" if fields is None else ", ".join(fields)
        sql = f"SELECT {columns} FROM {TABLES[kind]} WHERE {clause}"
        if order:
            sql += " ORDER BY " + ", ".join(f"{n[1:]} DESC" if n.startswith("-") else n for n in order)
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, limit]
        with self._lock:
            return [_decode(kind, row) for row in self.db.execute(sql, args)]

    @_unavailable
    def _insert(self, kind: str, rows: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            _insert(db, TABLES[kind], rows)

    @_unavailable
    def _insert_new(self, kind: str, row: dict[str, Any]) -> bool:
        with self._tx() as db:
            return db.execute(f"INSERT INTO {TABLES[kind]} ({', '.join(row)}) VALUES {_marks(row)}"
                              " ON CONFLICT DO NOTHING", [_sql(v) for v in row.values()]).rowcount == 1

    @_unavailable
    def _update(self, kind: str, where: Where, change: Change | Mapping[str, Any],
                now: dt.datetime | None = None) -> int:
        # `now` is not needed: the triggers log a status change with the write's own transaction.
        clause, args = _where(where)
        with self._tx() as db:
            return _update(db, TABLES[kind], change, clause, *args)

    @_unavailable
    def _tally(self, bulk_id: str) -> dict[str, tuple[int, float | None]]:
        rows = self.db.execute(
            "SELECT status, count(*), avg((julianday(completed_at) - julianday(started_at)) * 86400.0)"
            " FROM generation_jobs WHERE bulk_job_id = ? GROUP BY status", (bulk_id,))
        return {status: (n, mean) for status, n, mean in rows}

    def _user_lock(self, user: str, now: dt.datetime) -> AbstractContextManager[Any]:
        return nullcontext()  # inside `_atomic`: the transaction makes the count and the insert one step

    @_unavailable
    def _delete(self, kind: str, where: Where) -> int:
        clause, args = _where(where)
        with self._tx() as db:
            return int(db.execute(f"DELETE FROM {TABLES[kind]} WHERE {clause}", args).rowcount)

    # -- submit and read -------------------------------------------------------

    @_unavailable
    def usage(self, user: str) -> Usage:
        # A sum the database makes from its usage index: per user, not per job read back (a limited submit
        # asks it inside its own transaction, so its cost must not grow with the user's history).
        active = [s.value for s in rules.ACTIVE_BULK]
        row = self.db.execute(f"SELECT COALESCE(SUM(status IN {_marks(active)}), 0), COALESCE(SUM(stored_bytes), 0)"
                              " FROM bulk_jobs INDEXED BY bulk_jobs_usage WHERE userId = ?", (*active, user)).fetchone()
        return Usage(int(row[0]), int(row[1]))

    # -- reads of the repair ---------------------------------------------------

    @_unavailable
    def pending_bulk_ids(self) -> list[str]:
        pending = [s.value for s in PENDING_ITEM]
        rows = self.db.execute("SELECT DISTINCT bulk_job_id FROM generation_jobs INDEXED BY generation_jobs_lease"
                               f" WHERE status IN {_marks(pending)} ORDER BY bulk_job_id", pending)
        return [r[0] for r in rows]

    # -- single items ------------------------------------------------------------

    # Both neighbours in one statement, where the queue's verb takes two (a test reads its query plan).
    @_unavailable
    def item_neighbours(self, item_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        out = {}
        for item_id in item_ids:  # two lookups on the primary key's index each
            row = self.db.execute(ITEM_NEIGHBOURS_SQL, (item_id, item_id)).fetchone()
            out[item_id] = (row[0], row[1])
        return out

    # -- the processor's verbs -------------------------------------------------

    @_unavailable
    def claim_next(
        self, owner: str, lease_seconds: float, now: dt.datetime, max_in_flight: int = 1, sent: bool = False
    ) -> Item | None:
        with self._tx() as db:
            # One transaction: the slot, the in-flight count and the claim cannot
            # interleave with another process's (design.md, "Fencing").
            if db.execute(SLOT_HELD_SQL, (owner, COOLDOWN, iso(now))).fetchone() is None:
                return None  # no live slot: its lease passed on (a stall) or was never taken
            if self._claim_blocked(owner, max_in_flight):
                return None
            # Whose turn it is, then that job's first queued item: index lookups, where
            # one join would sort every queued item of every active job. The turn is
            # read and recorded in this transaction, so concurrent claims take turns.
            bulk = self._claim_job(db, now)
            row = None if bulk is None else db.execute(CLAIM_ITEM_SQL, (bulk["id"],)).fetchone()
            if row is None:
                return None
            fence = db.execute(NEXT_FENCE_SQL).fetchone()[0]
            _update(db, "generation_jobs", rules.claimed(owner, later(now, lease_seconds), now, fence, sent),
                    "id = ?", row["id"])
            self._start_job(row["bulk_job_id"], now)
            return self._get("items", {"id": row["id"]})  # type: ignore[no-any-return]

    @staticmethod
    def _claim_job(db: sqlite3.Connection, now: dt.datetime) -> sqlite3.Row | None:
        """The job whose turn it is (rules.claim_lookups), its turn recorded; inside the claim's transaction."""
        last = db.execute(LAST_TURN_SQL, (rules.TURN,)).fetchone()
        for lookup in rules.claim_lookups(None if last is None else last["userId"]):
            if lookup.urgent:
                bulk = db.execute(CLAIM_URGENT_SQL, (rules.URGENT_RANK, iso(now))).fetchone()
            elif lookup.after is not None:
                bulk = db.execute(CLAIM_TURN_SQL, (lookup.after, iso(now))).fetchone()
            else:
                bulk = db.execute(CLAIM_FIRST_TURN_SQL, (iso(now),)).fetchone()
            if bulk is not None:
                served = rules.turn_taken(lookup, bulk["userId"])
                if served is not None:
                    db.execute(TAKE_TURN_SQL, (rules.TURN, served))
                return bulk
        return None

    # -- the processor lease ---------------------------------------------------

    @_unavailable
    def set_cooldown(self, until: dt.datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO leases (name, owner, expires_at, acquired_at, host, pid) VALUES (?, '', ?, ?, '', 0)"
                " ON CONFLICT (name) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                (COOLDOWN, iso(until), iso(until)),
            )

    # -- the HTTP server: tokens and the change log --------------------------------------------------

    @_unavailable
    def _changes_since(self, after: int, limit: int, user: str | None, bulk_id: str | None,
                       now: dt.datetime) -> list[StateChange]:
        # The log is a table the triggers write in commit order (`change_lag` 0): `now` opens no window.
        where, args = "seq > ?", [after]
        for column, value in (("userId", user), ("bulk_job_id", bulk_id)):
            if value is not None:
                where, args = f"{where} AND {column} = ?", [*args, value]
        rows = self.db.execute(f"SELECT * FROM changes WHERE {where} ORDER BY seq LIMIT ?", (*args, limit))
        return [_change(r) for r in rows]

    @_unavailable
    def prune_changes(self, before: dt.datetime, limit: int) -> int:
        with self._tx() as db:
            top = db.execute(PRUNE_TOP_SQL, (iso(before), limit)).fetchone()[0]
            if top is None:
                return 0
            gone = db.execute("DELETE FROM changes WHERE seq <= ? AND at < ?", (top, iso(before))).rowcount
            db.execute(RAISE_FLOOR_SQL, (top,))
            return int(gone)

    @_unavailable
    def changes_floor(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = 'changes_floor'").fetchone()
        return 0 if row is None else int(row[0])

    @_unavailable
    def last_change(self) -> int:
        row = self.db.execute("SELECT max(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    @_unavailable
    def put_setting(self, name: str, value: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "value = excluded.value", (name, json.dumps(value)))

    @_unavailable
    def get_setting(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])  # type: ignore[no-any-return]


def _change(row: sqlite3.Row) -> StateChange:
    return record(StateChange, CHANGE_FIELDS, dict(row), _ts, json.loads)  # type: ignore[no-any-return]
