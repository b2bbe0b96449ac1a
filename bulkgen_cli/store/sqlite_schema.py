"""The SQLite store's tables and their migration steps (design.md, "The store contract": one version for the
data model, `rules.SCHEMA_VERSION`, which the last step reaches).

A new store takes SCHEMA, then every step of MIGRATIONS above SCHEMA_BASE; an older one every step above its
`user_version`, in order. The change log's triggers are CHANGE_TRIGGERS.
"""

from __future__ import annotations

from bulkgen_cli.core.model import CLAIMABLE_BULK

#: Saved templates (design.md, "Saved templates"); new in schema 6.
TEMPLATES_TABLE = """
CREATE TABLE IF NOT EXISTS templates (
    userId TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    mode TEXT,
    placeholders TEXT NOT NULL DEFAULT '[]',
    source TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (userId, name)
);
"""

#: Recurring schedules and their occurrences (design.md, "Recurring schedules"); new in schema 6.
SCHEDULE_TABLES = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    userId TEXT NOT NULL,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    zone TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    next_at TEXT,
    last_at TEXT,
    last_bulk_job_id TEXT,
    last_error TEXT,
    skipped_count INTEGER NOT NULL DEFAULT 0,
    skipped_recent TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX IF NOT EXISTS schedules_name ON schedules (userId, name);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (status, next_at);

CREATE TABLE IF NOT EXISTS schedule_occurrences (
    schedule_id TEXT NOT NULL,
    at TEXT NOT NULL,
    userId TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    claimed_at TEXT,
    bulk_job_id TEXT,
    error TEXT,
    finished_at TEXT,
    skipped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (schedule_id, at)
);
"""

#: The change log (design.md, "Live progress"); schema 9's step makes it too, for the indexes it adds.
CHANGES_TABLE = """
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    bulk_job_id TEXT NOT NULL,
    userId TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    queue_position INTEGER,
    error TEXT
);
"""

#: The tables as schema 7 made them: a new store takes SCHEMA, then every step of MIGRATIONS above it.
#: SCHEMA never changes again (an older store's steps, some of which create tables, must meet what they expect).
SCHEMA_BASE = 7
SCHEMA = """
CREATE TABLE IF NOT EXISTS bulk_jobs (
    id TEXT PRIMARY KEY,
    userId TEXT NOT NULL,
    mode TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    total_items INTEGER NOT NULL,
    completed_items INTEGER NOT NULL DEFAULT 0,
    failed_items INTEGER NOT NULL DEFAULT 0,
    cancelled_items INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    estimated_completion TEXT,
    error_summary TEXT NOT NULL DEFAULT '[]',
    notify TEXT NOT NULL DEFAULT '[]',
    notified_at TEXT,
    idempotency_key TEXT,
    outbox TEXT,
    notify_pending INTEGER NOT NULL DEFAULT 0,
    hook_pending INTEGER NOT NULL DEFAULT 0,
    priority TEXT NOT NULL DEFAULT 'normal',
    priority_rank INTEGER NOT NULL DEFAULT 1,
    not_before TEXT,
    group_id TEXT,
    quality TEXT NOT NULL DEFAULT 'warn',
    quality_ratio REAL NOT NULL DEFAULT 0.7,
    flagged_items INTEGER NOT NULL DEFAULT 0,
    quality_summary TEXT NOT NULL DEFAULT '[]',
    turned_down_items INTEGER NOT NULL DEFAULT 0,
    notify_policy TEXT
);
CREATE INDEX IF NOT EXISTS bulk_jobs_status ON bulk_jobs (status, created_at, id);
CREATE INDEX IF NOT EXISTS bulk_jobs_claim ON bulk_jobs (status, priority_rank, created_at, id);
CREATE INDEX IF NOT EXISTS bulk_jobs_group ON bulk_jobs (group_id) WHERE group_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS bulk_jobs_user ON bulk_jobs (userId, created_at);
CREATE INDEX IF NOT EXISTS bulk_jobs_created ON bulk_jobs (created_at);
CREATE UNIQUE INDEX IF NOT EXISTS bulk_jobs_idempotency
    ON bulk_jobs (userId, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS generation_jobs (
    id TEXT PRIMARY KEY,
    bulk_job_id TEXT NOT NULL REFERENCES bulk_jobs (id),
    userId TEXT NOT NULL,
    mode TEXT NOT NULL,
    article TEXT NOT NULL,
    status TEXT NOT NULL,
    queue_position INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    fence INTEGER,
    verdict TEXT
);
CREATE INDEX IF NOT EXISTS generation_jobs_queue
    ON generation_jobs (bulk_job_id, status, queue_position);
CREATE INDEX IF NOT EXISTS generation_jobs_lease ON generation_jobs (status, lease_expires_at);

CREATE INDEX IF NOT EXISTS bulk_jobs_notify ON bulk_jobs (notify_pending) WHERE notify_pending = 1;
CREATE INDEX IF NOT EXISTS bulk_jobs_hook ON bulk_jobs (hook_pending) WHERE hook_pending = 1;

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    userId TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    email TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
""" + CHANGES_TABLE + TEMPLATES_TABLE + SCHEDULE_TABLES

#: From schema 1 (before notifications) to 2.
MIGRATE_1_TO_2 = """
ALTER TABLE bulk_jobs ADD COLUMN outbox TEXT;
ALTER TABLE bulk_jobs ADD COLUMN notify_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bulk_jobs ADD COLUMN hook_pending INTEGER NOT NULL DEFAULT 0;
"""
#: From schema 2 to 3 (priorities and schedules).
MIGRATE_2_TO_3 = """
ALTER TABLE bulk_jobs ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE bulk_jobs ADD COLUMN priority_rank INTEGER NOT NULL DEFAULT 1;
ALTER TABLE bulk_jobs ADD COLUMN not_before TEXT;
"""
#: From schema 3 to 4 (--split groups).
MIGRATE_3_TO_4 = """
ALTER TABLE bulk_jobs ADD COLUMN group_id TEXT;
"""

#: From schema 4 to 5 (fencing tokens).
MIGRATE_4_TO_5 = """
ALTER TABLE generation_jobs ADD COLUMN fence INTEGER;
"""

#: From schema 5 to 6: saved templates; the quality gate (its policy and ratio on the job, the derived
#: flagged and turned-down counters and summary, the verdict on each item); recurring schedules (SCHEDULE_TABLES).
MIGRATE_5_TO_6 = TEMPLATES_TABLE + """
ALTER TABLE bulk_jobs ADD COLUMN quality TEXT NOT NULL DEFAULT 'warn';
ALTER TABLE bulk_jobs ADD COLUMN quality_ratio REAL NOT NULL DEFAULT 0.7;
ALTER TABLE bulk_jobs ADD COLUMN flagged_items INTEGER NOT NULL DEFAULT 0;
ALTER TABLE bulk_jobs ADD COLUMN quality_summary TEXT NOT NULL DEFAULT '[]';
ALTER TABLE bulk_jobs ADD COLUMN turned_down_items INTEGER NOT NULL DEFAULT 0;
ALTER TABLE generation_jobs ADD COLUMN verdict TEXT;
""" + SCHEDULE_TABLES

#: From schema 6 to 7 (bulkgen serve: API tokens, the change log, a job's notification policy).
#: The new tables are in SCHEMA (created if missing); the triggers are CHANGE_TRIGGERS.
MIGRATE_6_TO_7 = """
ALTER TABLE bulk_jobs ADD COLUMN notify_policy TEXT;
"""

#: From schema 7 to 8 (a job is never stuck): when the current try's request was sent (a try is charged
#: only once sent), and the token of an occurrence's claim (occurrences fenced like items).
MIGRATE_7_TO_8 = """
ALTER TABLE generation_jobs ADD COLUMN sent_at TEXT;
ALTER TABLE schedule_occurrences ADD COLUMN claim TEXT;
"""

#: From schema 8 to 9 (quotas): the bytes a job's articles take as stored, recorded at submit, and an index
#: that answers a user's active jobs and stored bytes without reading their rows (design.md, "Quotas").
MIGRATE_8_TO_9 = """
ALTER TABLE bulk_jobs ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS bulk_jobs_usage ON bulk_jobs (userId, status, stored_bytes);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: The statuses a claim takes from, as SQL text: the claim's partial indexes and its lookups must say it alike.
CLAIMABLE_SQL = "status IN (" + ", ".join(f"'{s.value}'" for s in CLAIMABLE_BULK) + ")"
#: From schema 9 to 10 (fair turns, design.md "Fair turns"): whose turn was last, and the claim's two indexes,
#: over claimable jobs only: urgent jobs oldest first, and each user's jobs in rules.JOB_ORDER.
MIGRATE_9_TO_10 = f"""
CREATE TABLE IF NOT EXISTS turns (name TEXT PRIMARY KEY, userId TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS bulk_jobs_urgent ON bulk_jobs (priority_rank, created_at, id) WHERE {CLAIMABLE_SQL};
CREATE INDEX IF NOT EXISTS bulk_jobs_turn ON bulk_jobs (userId, priority_rank, created_at, id) WHERE {CLAIMABLE_SQL};
"""

#: From schema 10 to 11 (live progress that stays bounded): the change log is pruned by time, and a
#: resuming stream reads one user's or one job's changes by index (design.md, "Live progress").
MIGRATE_10_TO_11 = CHANGES_TABLE + """
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
CREATE INDEX IF NOT EXISTS changes_user ON changes (userId, seq);
CREATE INDEX IF NOT EXISTS changes_job ON changes (bulk_job_id, seq);
"""

#: The migrations in order: (the schema version a step makes, its statements). A new step goes at the end.
MIGRATIONS = (
    (2, MIGRATE_1_TO_2),
    (3, MIGRATE_2_TO_3),
    (4, MIGRATE_3_TO_4),
    (5, MIGRATE_4_TO_5),
    (6, MIGRATE_5_TO_6),
    (7, MIGRATE_6_TO_7),
    (8, MIGRATE_7_TO_8),
    (9, MIGRATE_8_TO_9),
    (10, MIGRATE_9_TO_10),
    (11, MIGRATE_10_TO_11),
)

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
#: Every status change of a bulk job or an item is logged in `changes` by the write's own transaction,
#: so the log's numbers are in commit order (design.md, "Live progress"). Run one by one: each holds ';'.
CHANGE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS changes_bulk_new AFTER INSERT ON bulk_jobs BEGIN"
    " INSERT INTO changes (kind, record_id, bulk_job_id, userId, status, at)"
    f" VALUES ('bulk', NEW.id, NEW.id, NEW.userId, NEW.status, {_NOW}); END",
    "CREATE TRIGGER IF NOT EXISTS changes_bulk_status AFTER UPDATE OF status ON bulk_jobs"
    " WHEN NEW.status IS NOT OLD.status BEGIN"
    " INSERT INTO changes (kind, record_id, bulk_job_id, userId, status, at)"
    f" VALUES ('bulk', NEW.id, NEW.id, NEW.userId, NEW.status, {_NOW}); END",
    "CREATE TRIGGER IF NOT EXISTS changes_item_status AFTER UPDATE OF status ON generation_jobs"
    " WHEN NEW.status IS NOT OLD.status BEGIN"
    " INSERT INTO changes (kind, record_id, bulk_job_id, userId, status, at, queue_position, error)"
    f" VALUES ('item', NEW.id, NEW.bulk_job_id, NEW.userId, NEW.status, {_NOW}, NEW.queue_position, NEW.error);"
    " END",
)
