//! The SQLite schema: statemachine-engine's tables, created by the same statements so
//! that its tools and Turnstile share one file, and what Turnstile adds (lease, retry and
//! unique-key columns, `machine_state.instance_id` and `machine_events.traceparent` by
//! `ALTER TABLE`, the audit table, the live instances (`turnstile_instances`, times in
//! milliseconds), the singleton machines' leases (`turnstile_leases`, likewise), the machine
//! registry and event consumer leases (`turnstile_machines`, `turnstile_event_consumers`),
//! partial indexes for claims and pending events, the
//! partial unique index that keeps one pending or processing job per unique key). Applied at
//! every open; each step is idempotent, so processes opening one file at once agree.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::{StoreError, StoreOptions, SyncMode};

/// statemachine-engine 1.0.91's `jobs` table, verbatim (`schema/generic/001_jobs.sql`).
pub const SME_JOBS_SQL: &str = "CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT UNIQUE NOT NULL,
    job_type TEXT NOT NULL,
    machine_type TEXT,
    source_job_id TEXT,
    data TEXT,
    result TEXT,
    priority INTEGER DEFAULT 5,
    status TEXT DEFAULT 'pending',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    started_at TIMESTAMP,
    completed_at TIMESTAMP,
    error_message TEXT,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS idx_jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS idx_jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS idx_jobs_machine_type ON jobs (machine_type, status);
CREATE INDEX IF NOT EXISTS idx_jobs_priority ON jobs (priority DESC, created_at ASC);
CREATE TABLE IF NOT EXISTS machine_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_machine TEXT,
    target_machine TEXT NOT NULL,
    event_type TEXT NOT NULL,
    job_id TEXT,
    payload TEXT,
    status TEXT DEFAULT 'pending',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    processed_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_events_machine ON machine_events (target_machine, status);
CREATE INDEX IF NOT EXISTS idx_events_created ON machine_events (created_at);
CREATE TABLE IF NOT EXISTS machine_state (
    machine_name TEXT PRIMARY KEY,
    current_state TEXT,
    last_activity TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    pid INTEGER,
    metadata TEXT,
    config_type TEXT
);
CREATE INDEX IF NOT EXISTS idx_machine_state_activity ON machine_state (last_activity);
CREATE INDEX IF NOT EXISTS idx_machine_state_config_type ON machine_state (config_type);
";

/// Columns Turnstile adds: (table, column, declaration).
const EXTRA_COLUMNS: &[(&str, &str, &str)] = &[
    ("jobs", "lease_owner", "TEXT"),
    ("jobs", "lease_until", "INTEGER"),
    ("jobs", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "max_attempts", "INTEGER"),
    ("jobs", "next_attempt_at", "INTEGER"),
    ("jobs", "traceparent", "TEXT"),
    ("jobs", "unique_key", "TEXT"),
    ("machine_state", "context", "TEXT"),
    ("machine_state", "instance_id", "TEXT"),
    ("machine_state", "paused", "INTEGER NOT NULL DEFAULT 0"),
    ("machine_state", "definition", "TEXT"),
    ("machine_state", "retired", "INTEGER NOT NULL DEFAULT 0"),
    ("machine_events", "traceparent", "TEXT"),
];

const TURNSTILE_INDEXES: &str = "
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_name TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    event TEXT NOT NULL,
    job_id TEXT,
    created_at TIMESTAMP DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS idx_transitions_machine ON transitions (machine_name, id);
DROP INDEX IF EXISTS idx_jobs_claim;
DROP INDEX IF EXISTS idx_jobs_lease;
CREATE INDEX IF NOT EXISTS idx_jobs_pending_type ON jobs (job_type, priority, created_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_jobs_pending_machine ON jobs (machine_type, priority, created_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_jobs_pending ON jobs (priority, created_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_jobs_leased ON jobs (lease_until) WHERE status = 'processing';
CREATE UNIQUE INDEX IF NOT EXISTS idx_jobs_unique_key ON jobs (unique_key)
    WHERE status IN ('pending', 'processing') AND unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS turnstile_instances (
    instance_id TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turnstile_leases (
    name TEXT PRIMARY KEY,
    holder TEXT,
    epoch INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS turnstile_machines (
    machine_name TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    PRIMARY KEY (machine_name, incarnation)
);
CREATE TABLE IF NOT EXISTS turnstile_event_consumers (
    target_machine TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    lease_until INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_events_pending ON machine_events (target_machine, id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_machine_state_owner ON machine_state (instance_id)
    WHERE definition IS NOT NULL AND retired = 0;
CREATE TABLE IF NOT EXISTS turnstile_health (
    id INTEGER PRIMARY KEY,
    checked_at INTEGER,
    pad BLOB
);
";

/// Opens a connection with the store's settings; `create` when the file may be created.
pub(super) fn connect(
    path: &Path,
    opts: &StoreOptions,
    create: bool,
) -> Result<Connection, StoreError> {
    let conn = open(path, opts, create)?;
    let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
    if !read_only {
        // Switching a fresh file to WAL takes an exclusive lock and does not always wait
        // through the busy handler: processes that open one new file at once try again.
        retry_while_busy(opts.busy_timeout, || {
            conn.pragma_update(None, "journal_mode", "WAL")
        })?;
    }
    conn.pragma_update(None, "synchronous", sync_pragma(opts.sync))?;
    if read_only {
        migrate(&conn)?;
    } else {
        // One immediate transaction: processes that open the file at once migrate one after
        // the other (the busy handler waits for the lock), never interleaving a check and
        // an ALTER, and never upgrading a read lock into a write lock (which SQLite refuses
        // at once with "database is locked" when another connection waits to write).
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match migrate(&conn) {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(conn)
}

/// A second connection to a database [`connect`] opened, for reads: no migration, the
/// same busy handling.
pub(super) fn connect_reader(path: &Path, opts: &StoreOptions) -> Result<Connection, StoreError> {
    let conn = open(path, opts, false)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Opens `path` (created when `create` and missing) with the store's busy handling.
fn open(path: &Path, opts: &StoreOptions, create: bool) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    wait_when_busy(&mut conn, opts.busy_timeout)?;
    Ok(conn)
}

/// How long a connection waiting for a lock looks again every [`FINE_STEP`] before it
/// looks every [`COARSE_STEP`].
const FINE_WAIT: Duration = Duration::from_millis(50);
/// The pause between two tries for a lock during the first [`FINE_WAIT`].
const FINE_STEP: Duration = Duration::from_micros(100);
/// The pause between two tries for a lock after [`FINE_WAIT`].
const COARSE_STEP: Duration = Duration::from_millis(2);

/// Makes `conn` wait up to `limit` for a lock another connection holds, trying again
/// every 100 µs for the first 50 ms. SQLite's own busy timeout sleeps 1, 2, 5, 10, 15,
/// 20, 25... ms between tries: a process that writes often (a sender of events: a commit
/// per millisecond, each holding the write lock for its fsync) finds the lock free in the
/// gaps, while the other waits out ever longer sleeps, seconds at worst; and a store's
/// writer waits holding its connection, which its reads need too (the event consumer's
/// takes, the WAL watch).
fn wait_when_busy(conn: &mut Connection, limit: Duration) -> rusqlite::Result<()> {
    let mut since = Instant::now();
    conn.busy_handler(Some(move |count: i32| {
        if count == 0 {
            since = Instant::now();
        }
        let waited = since.elapsed();
        if waited >= limit {
            return false;
        }
        let step = if waited < FINE_WAIT {
            FINE_STEP
        } else {
            COARSE_STEP
        };
        std::thread::sleep(step.min(limit - waited));
        true
    }))
}

/// Runs `f` again while SQLite answers busy or locked, for up to `limit`.
fn retry_while_busy<T>(
    limit: std::time::Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SME_JOBS_SQL)?;
    for (table, col, decl) in EXTRA_COLUMNS {
        let exists: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([col])?;
        if !exists {
            match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {decl}")) {
                Ok(()) => {}
                // Another process added it between our check and our ALTER.
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    conn.execute_batch(TURNSTILE_INDEXES)?;
    Ok(())
}

/// `PRAGMA synchronous` for a [`SyncMode`].
pub(super) fn sync_pragma(mode: SyncMode) -> &'static str {
    match mode {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A connection waiting for the write lock gets it soon after a writer that takes it
    /// again and again lets it go, and gives up after its busy timeout, not before.
    #[test]
    fn a_busy_connection_gets_the_lock_in_a_gap_and_gives_up_after_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let opts = StoreOptions {
            busy_timeout: Duration::from_millis(300),
            renew: false,
            ..StoreOptions::default()
        };
        let holder = connect(&path, &opts, true).unwrap();
        let waiter = connect(&path, &opts, false).unwrap();
        // Held for 1 s: the waiter gives up after its 300 ms.
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t0 = Instant::now();
        let e = waiter.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        let waited = t0.elapsed();
        assert!(e.to_string().contains("locked"), "{e}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        holder.execute_batch("COMMIT").unwrap();
        // Taken again 1 ms after each release, for 20 ms at a time: the waiter gets it in
        // one of the gaps (SQLite's own busy timeout waits 1, 2, 5, 10, 15, 20, 25... ms
        // between tries, and may miss them all).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let busy = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                holder.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                holder.execute_batch("COMMIT").unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        std::thread::sleep(Duration::from_millis(10));
        let got = waiter.execute_batch("BEGIN IMMEDIATE");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        got.unwrap();
        waiter.execute_batch("COMMIT").unwrap();
        busy.join().unwrap();
    }
}
