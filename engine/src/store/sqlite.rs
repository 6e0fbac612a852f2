//! The SQLite store: one file shared by every process that uses it (Turnstile workers,
//! the CLI, statemachine-engine's own tools).
//!
//! - WAL journal, `synchronous=FULL` by default ([`SyncMode`]), a busy timeout; one
//!   connection per store object, behind a mutex, written by one writer thread (one
//!   writer per process; SQLite serialises writers across processes).
//! - Every write runs in a `BEGIN IMMEDIATE` transaction, shared with the process's other
//!   waiting writes (group commit, [`super::group_commit`]), so a claim (reap expired
//!   leases, pick one job, lease it) cannot interleave with another process's claim.
//!   Claims are answered once run, before their commit; every other write after it.
//! - The `jobs` table keeps every column of statemachine-engine's (same names and types,
//!   created by the same statement), and adds `lease_owner`, `lease_until`, `attempts`,
//!   `max_attempts`, `next_attempt_at` and `traceparent` (added by `ALTER TABLE` to a file
//!   that statemachine-engine created). Its `machine_state`, `machine_events` tables are
//!   created the same way; Turnstile adds a `context` column to `machine_state`.
//! - A thread renews, every third of the lease time, the leases of the jobs this store
//!   object claimed and that are still held: by a machine that runs, or by a caller of the
//!   store API until it completes, fails or releases them ([`JobStore::set_holder`]). It
//!   ends with the store.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::{Map, Value as Json};

use super::group_commit::{Ack, GroupCommit, Hooks};
use super::{
    from_ms, now_ms, Claim, ClaimLoss, EventRecord, Failed, Holder, Job, JobFilter, JobStore,
    ListJobs, MachineRecord, NewJob, StateStore, StoreError, PENDING,
};

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
    ("machine_state", "context", "TEXT"),
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
CREATE TABLE IF NOT EXISTS turnstile_health (
    id INTEGER PRIMARY KEY,
    checked_at INTEGER,
    pad BLOB
);
";

/// How long a store may go without a committed write before a readiness check writes to
/// find out whether it still can.
const IDLE_PROBE: Duration = Duration::from_secs(5);

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a claim lasts without renewal (renewed every third of it while the process
    /// lives). Default 30 s.
    pub lease: Duration,
    /// Attempts of a job that does not say (`max_attempts` NULL). Default 3.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt. Default 1 s.
    pub backoff_base: Duration,
    /// Longest retry delay. Default 5 min.
    pub backoff_max: Duration,
    /// How long a writer waits for another process's lock. Default 10 s.
    pub busy_timeout: Duration,
    /// When a commit reaches the disk (`PRAGMA synchronous`).
    pub sync: SyncMode,
    /// Renew leases from a background thread (default true; tests of lease expiry turn it
    /// off to play a dead worker).
    pub renew: bool,
}

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `synchronous=FULL`: the WAL is fsynced at every commit; a committed job survives a
    /// power loss or a kernel crash. Group commit shares one fsync among the writes that
    /// wait together.
    #[default]
    Full,
    /// `synchronous=NORMAL`: fsync at checkpoints only; a commit survives the process
    /// being killed, but the last commits can be lost with the machine.
    Normal,
}

impl SyncMode {
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            busy_timeout: Duration::from_secs(10),
            sync: SyncMode::default(),
            renew: true,
        }
    }
}

struct Inner {
    conn: Arc<Mutex<Connection>>,
    group: GroupCommit,
    opts: SqliteOptions,
    owner: String,
    notify: Arc<tokio::sync::Notify>,
    path: PathBuf,
    /// The file it opened (device, inode).
    file: FileId,
    /// Jobs this store object claimed and has not completed, failed or released, with the
    /// machine that holds each (`None`: whoever called the store). Only these leases are
    /// renewed, and a machine's only while it runs.
    holds: Mutex<std::collections::HashMap<String, Option<Holder>>>,
    /// Dropping it stops the lease renewal thread.
    _stop_renewal: Option<mpsc::Sender<()>>,
}

/// A SQLite job and state store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

fn owner_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("turnstile:{}:{nanos:08x}", std::process::id())
}

impl SqliteStore {
    /// Opens (creating when needed) the database file with default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating when needed) the database file.
    pub fn open_with(path: &Path, opts: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = connect(path, &opts, true)?;
        let file = file_id(path)
            .map_err(|e| StoreError::Db(format!("cannot read {}: {e}", path.display())))?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let renew = opts.renew;
        let conn = Arc::new(Mutex::new(conn));
        let notify = Arc::new(tokio::sync::Notify::new());
        let hooks = {
            let (p1, p2, o) = (path.to_owned(), path.to_owned(), opts.clone());
            let n = notify.clone();
            let default_max = i64::from(opts.max_attempts);
            Hooks {
                count_lost: Box::new(move |tx, lost| count_lost(tx, lost, default_max)),
                check_file: Box::new(move || check_file(&p1, file)),
                reopen: Box::new(move || connect(&p2, &o, false)),
                recovered: Box::new(move || n.notify_waiters()),
            }
        };
        let store = SqliteStore {
            inner: Arc::new(Inner {
                group: GroupCommit::start(conn.clone(), hooks)?,
                conn,
                owner: owner_id(),
                notify,
                path: path.to_owned(),
                file,
                holds: Mutex::default(),
                _stop_renewal: renew.then_some(stop_tx),
                opts,
            }),
        };
        if renew {
            let weak = Arc::downgrade(&store.inner);
            let every = (store.inner.opts.lease / 3).max(Duration::from_millis(50));
            std::thread::Builder::new()
                .name("turnstile-lease".into())
                .spawn(move || loop {
                    match stop_rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let s = SqliteStore { inner };
                    if let Err(e) = s.renew_held() {
                        tracing::warn!(target: "turnstile::store", "lease renewal failed: {e}");
                    }
                })
                .map_err(|e| StoreError::Db(format!("cannot start the lease thread: {e}")))?;
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes of this store object so far and the transactions they took: with group
    /// commit, fewer transactions than writes when writes overlap.
    pub fn write_counts(&self) -> (u64, u64) {
        self.inner.group.counts()
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.opts
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in a committed write transaction shared with this process's other waiting
    /// writes (see [`super::group_commit`]).
    fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.group.write(Ack::Committed, f)
    }

    /// [`Self::write`] for claims: returns once `f` has run in the open transaction,
    /// before the commit (a claim lost with an uncommitted transaction leaves its job
    /// pending; see [`Ack::Executed`]). Answered early, it comes with the signal fired if
    /// its commit fails.
    fn claim_write<T, F>(
        &self,
        f: F,
        job_of: impl Fn(&T) -> Option<String> + Send + 'static,
    ) -> Result<(T, Option<ClaimLoss>), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.group.claim(f, job_of)
    }

    /// Whether the store can write now, for readiness: the file is the one opened, the
    /// last write that changed something committed, and, when none committed for a while
    /// (or the last one failed), a small write commits now.
    fn check_writes(&self) -> Result<(), StoreError> {
        check_file(&self.inner.path, self.inner.file).map_err(StoreError::Db)?;
        let (failing, idle) = {
            let h = self.inner.group.shared().health();
            (
                h.failing.clone(),
                h.last_commit.is_none_or(|t| t.elapsed() >= IDLE_PROBE),
            )
        };
        if failing.is_some() || idle {
            let probe = self.write(|tx| {
                tx.exec_cached(
                    "INSERT OR REPLACE INTO turnstile_health (id, checked_at, pad)
                     VALUES (1, ?1, zeroblob(8192))",
                    [now_ms()],
                )?;
                Ok(())
            });
            if let Err(e) = probe {
                return Err(StoreError::Db(format!("cannot write: {e}")));
            }
        }
        Ok(())
    }

    fn holds(&self) -> MutexGuard<'_, std::collections::HashMap<String, Option<Holder>>> {
        self.inner.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Extends the leases of the jobs held in this process (see [`Inner::holds`]): a job a
    /// machine holds only while that machine runs. Returns how many were extended.
    pub fn renew_held(&self) -> Result<usize, StoreError> {
        let ids: Vec<String> = {
            let mut holds = self.holds();
            holds.retain(|job, h| match h {
                Some(h) if !(h.alive)() => {
                    tracing::warn!(
                        target: "turnstile::store",
                        job = %job,
                        machine = %h.machine,
                        "the machine holding this job stopped: its lease is no longer renewed, the job returns to the queue when it expires"
                    );
                    false
                }
                _ => true,
            });
            holds.keys().cloned().collect()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let owner = self.inner.owner.clone();
        let lease_ms = self.lease_ms();
        self.write(move |tx| {
            let until = now_ms() + lease_ms;
            let mut n = 0;
            for id in &ids {
                n += tx.exec_cached(
                    "UPDATE jobs SET lease_until = ?3
                     WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                    params![id, owner, until],
                )?;
            }
            Ok(n)
        })
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.inner.opts.lease.as_millis()).unwrap_or(i64::MAX / 4)
    }
}

/// A file's identity: (device, inode); `(0, 0)` where there is none to read.
type FileId = (u64, u64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

/// `Err(why)` when `path` no longer names the file that was opened as `opened`.
fn check_file(path: &Path, opened: FileId) -> Result<(), String> {
    match file_id(path) {
        Ok(id) if id == opened => Ok(()),
        Ok(_) => Err(format!(
            "the database file {} was replaced by another file while open: this process \
             still writes to the old one; restart it to use the new file",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "the database file {} was deleted while open: writes would go to the deleted \
             file and be lost; put the file back (or restart with a new one)",
            path.display()
        )),
        // Unreadable for the moment (permissions): SQLite's own errors say more.
        Err(_) => Ok(()),
    }
}

/// Opens a connection with the store's settings; `create` when the file may be created.
fn connect(path: &Path, opts: &SqliteOptions, create: bool) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(opts.busy_timeout)?;
    if !conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", opts.sync.pragma())?;
    migrate(&conn)?;
    Ok(conn)
}

/// Writes the attempts of claims that were answered but not committed (see
/// [`super::group_commit`]): each counts as an attempt; a pending job out of attempts is
/// dead-lettered.
fn count_lost(tx: &Connection, lost: &[(String, u32)], default_max: i64) -> Result<(), StoreError> {
    for (job_id, n) in lost {
        tx.exec_cached(
            "UPDATE jobs SET attempts = COALESCE(attempts, 0) + ?2,
                error_message = 'a claim was lost: its transaction did not commit'
             WHERE job_id = ?1 AND status IN ('pending', 'processing')",
            params![job_id, n],
        )?;
        tx.exec_cached(
            "UPDATE jobs SET status = 'dead', completed_at = CURRENT_TIMESTAMP,
                lease_owner = NULL, lease_until = NULL, next_attempt_at = NULL,
                error_message = 'its last attempt was lost: the claim did not commit'
             WHERE job_id = ?1 AND status = 'pending' AND attempts >= COALESCE(max_attempts, ?2)",
            params![job_id, default_max],
        )?;
    }
    Ok(())
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

macro_rules! job_columns {
    () => {
        "id, job_id, job_type, machine_type, source_job_id, data, result, \
         priority, status, created_at, started_at, completed_at, error_message, metadata, \
         lease_owner, lease_until, attempts, max_attempts, next_attempt_at, traceparent"
    };
}
const JOB_COLUMNS: &str = job_columns!();

fn json_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Json>> {
    let s: Option<String> = row.get(i)?;
    Ok(s.map(|s| serde_json::from_str(&s).unwrap_or(Json::String(s))))
}

fn job_from_row(row: &Row<'_>, default_max: i64) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        job_id: row.get(1)?,
        job_type: row.get(2)?,
        machine_type: row.get(3)?,
        source_job_id: row.get(4)?,
        data: json_col(row, 5)?.unwrap_or(Json::Null),
        result: json_col(row, 6)?,
        priority: row.get::<_, Option<i64>>(7)?.unwrap_or(5),
        status: row
            .get::<_, Option<String>>(8)?
            .unwrap_or_else(|| PENDING.into()),
        created_at: row.get(9)?,
        started_at: row.get(10)?,
        completed_at: row.get(11)?,
        error_message: row.get(12)?,
        metadata: json_col(row, 13)?,
        lease_owner: row.get(14)?,
        lease_until: row.get(15)?,
        attempts: row.get::<_, Option<i64>>(16)?.unwrap_or(0),
        max_attempts: row.get::<_, Option<i64>>(17)?.unwrap_or(default_max),
        next_attempt_at: row.get(18)?,
        traceparent: row.get(19)?,
    })
}

fn new_job_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "job-{}{:06}-{}-{n}",
        t.as_secs(),
        t.subsec_micros(),
        std::process::id()
    )
}

/// The statement that picks the next job for `filter`. Only the filters given appear in
/// the SQL (not `?x IS NULL OR ...`), so SQLite walks the partial index `idx_jobs_pending_type`
/// or `idx_jobs_pending` in claim order and stops at the first match instead of sorting
/// every pending row (the plan is checked by a test).
fn pick_sql(filter: &JobFilter) -> &'static str {
    // `INDEXED BY`: without statistics SQLite may prefer statemachine-engine's
    // `idx_jobs_status` and sort every pending row.
    match (filter.job_type.is_some(), filter.machine_type.is_some()) {
        (true, true) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_type
             WHERE status = 'pending' AND job_type = ?2 AND machine_type = ?3
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (true, false) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_type
             WHERE status = 'pending' AND job_type = ?2 AND ?3 IS NULL
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (false, true) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending_machine
             WHERE status = 'pending' AND ?2 IS NULL AND machine_type = ?3
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
        (false, false) => {
            "SELECT id FROM jobs INDEXED BY idx_jobs_pending
             WHERE status = 'pending' AND ?2 IS NULL AND ?3 IS NULL
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT 1"
        }
    }
}

/// The retry delay after `attempts` attempts: `backoff_base`, doubled per attempt, at most
/// `backoff_max`.
fn backoff(opts: &SqliteOptions, attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    opts.backoff_base
        .saturating_mul(1u32 << exp)
        .min(opts.backoff_max)
}

/// Returns jobs whose lease expired to pending, or to `dead` when they are out of
/// attempts. Part of every claim's transaction.
/// One job by row id.
const JOB_BY_ROWID: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");

/// Statements run through the connection's statement cache: the job paths run the same
/// few statements thousands of times a second, and parsing them was a fifth of the cost.
trait Cached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize>;
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, p: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }
    fn row_cached<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        p: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

fn reap_expired(tx: &Connection, now: i64, default_max: i64) -> rusqlite::Result<usize> {
    let dead = tx.exec_cached(
        "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'dead', lease_owner = NULL, lease_until = NULL,
            completed_at = CURRENT_TIMESTAMP,
            error_message = 'lease expired after the last attempt (worker died?)'
         WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1
           AND attempts >= COALESCE(max_attempts, ?2)",
        params![now, default_max],
    )?;
    let back = tx.exec_cached(
        "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'pending', lease_owner = NULL, lease_until = NULL,
            started_at = NULL, error_message = 'lease expired (worker died?)'
         WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1",
        params![now],
    )?;
    Ok(dead + back)
}

impl JobStore for SqliteStore {
    fn add_job(&self, job: NewJob) -> Result<String, StoreError> {
        let job_id = job.job_id.clone().unwrap_or_else(new_job_id);
        let id = job_id.clone();
        self.write(move |tx| {
            let enc = |v: &Option<Json>| v.as_ref().map(Json::to_string);
            tx.exec_cached(
                "INSERT INTO jobs (job_id, job_type, machine_type, source_job_id, priority,
                    data, metadata, status, max_attempts, traceparent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9)",
                params![
                    id,
                    job.job_type,
                    job.machine_type,
                    job.source_job_id,
                    job.priority.unwrap_or(5),
                    enc(&job.data),
                    enc(&job.metadata),
                    job.max_attempts,
                    job.traceparent,
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Invalid(format!("a job with id `{id}` already exists"))
                }
                e => e.into(),
            })?;
            Ok(())
        })?;
        self.inner.notify.notify_waiters();
        Ok(job_id)
    }

    fn claim_next(&self, filter: &JobFilter, owner: &str) -> Result<Claim, StoreError> {
        self.claim_next_watched(filter, owner).map(|(c, _)| c)
    }

    fn claim_next_watched(
        &self,
        filter: &JobFilter,
        owner: &str,
    ) -> Result<(Claim, Option<ClaimLoss>), StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let lease_ms = self.lease_ms();
        let (filter, owner) = (filter.clone(), owner.to_owned());
        let shared = self.inner.group.shared().clone();
        let (claim, loss) = self.claim_write(
            move |tx| {
                // Read the clock in the transaction: a batch may start later than the call.
                let now = now_ms();
                reap_expired(tx, now, default_max)?;
                // Pick, lease, read back: three cached statements in the one immediate
                // transaction (an `UPDATE ... RETURNING` was re-prepared by SQLite on every
                // call).
                let picked: Option<i64> = tx
                    .row_cached(
                        pick_sql(&filter),
                        params![now, filter.job_type, filter.machine_type],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = picked {
                    tx.exec_cached(
                        "UPDATE jobs SET status = 'processing', started_at = CURRENT_TIMESTAMP,
                        lease_owner = ?2, lease_until = ?3, attempts = COALESCE(attempts, 0) + 1,
                        next_attempt_at = NULL
                     WHERE id = ?1",
                        params![id, owner, now + lease_ms],
                    )?;
                    let job =
                        tx.row_cached(JOB_BY_ROWID, [id], |r| job_from_row(r, default_max))?;
                    // Claimed again: an earlier lost claim's refusal no longer applies. In
                    // the writer, so that this claim's own loss (recorded after its batch)
                    // is not taken back by its caller.
                    shared.lost().take_refusal(&job.job_id);
                    return Ok(Claim::Job(Box::new(job)));
                }
                let due: Option<i64> = tx.row_cached(
                    "SELECT MIN(t) FROM (
                    SELECT MIN(next_attempt_at) AS t FROM jobs
                     WHERE status = 'pending' AND next_attempt_at IS NOT NULL
                       AND (?1 IS NULL OR job_type = ?1)
                       AND (?2 IS NULL OR machine_type = ?2)
                    UNION ALL
                    SELECT MIN(lease_until) FROM jobs
                     WHERE status = 'processing' AND lease_until IS NOT NULL
                       AND (?1 IS NULL OR job_type = ?1)
                       AND (?2 IS NULL OR machine_type = ?2))",
                    params![filter.job_type, filter.machine_type],
                    |r| r.get(0),
                )?;
                Ok(Claim::Empty {
                    next_due: due.map(from_ms),
                })
            },
            |c| match c {
                Claim::Job(j) => Some(j.job_id.clone()),
                Claim::Empty { .. } => None,
            },
        )?;
        match &claim {
            Claim::Job(j) => {
                self.holds().insert(j.job_id.clone(), None);
                Ok((claim, loss))
            }
            Claim::Empty { .. } => Ok((claim, None)),
        }
    }

    fn claim_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.claim_job_watched(job_id, owner).map(|(c, _)| c)
    }

    fn claim_job_watched(
        &self,
        job_id: &str,
        owner: &str,
    ) -> Result<(bool, Option<ClaimLoss>), StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let lease_ms = self.lease_ms();
        let (id, owner) = (job_id.to_owned(), owner.to_owned());
        let shared = self.inner.group.shared().clone();
        let (claimed, loss) = self.claim_write(
            move |tx| {
                let now = now_ms();
                reap_expired(tx, now, default_max)?;
                let n = tx.exec_cached(
                    "UPDATE jobs SET status = 'processing', started_at = CURRENT_TIMESTAMP,
                    lease_owner = ?2, lease_until = ?3, attempts = COALESCE(attempts, 0) + 1,
                    next_attempt_at = NULL
                 WHERE job_id = ?1 AND status = 'pending'",
                    params![id, owner, now + lease_ms],
                )?;
                if n > 0 {
                    // As in `claim_next_watched`: in the writer.
                    shared.lost().take_refusal(&id);
                }
                Ok(n > 0)
            },
            {
                let id = job_id.to_owned();
                move |claimed: &bool| claimed.then(|| id.clone())
            },
        )?;
        if claimed {
            self.holds().insert(job_id.to_owned(), None);
            return Ok((true, loss));
        }
        Ok((false, None))
    }

    fn release_job(&self, job_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.holds().remove(job_id);
        let (job_id, owner) = (job_id.to_owned(), owner.to_owned());
        let released = self.write(move |tx| {
            let n = tx.exec_cached(
                "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL,
                    started_at = NULL, attempts = MAX(COALESCE(attempts, 1) - 1, 0)
                 WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![job_id, owner],
            )?;
            Ok(n > 0)
        })?;
        if released {
            self.inner.notify.notify_waiters();
        }
        Ok(released)
    }

    fn complete_job(&self, job_id: &str, result: Option<&Json>) -> Result<bool, StoreError> {
        self.holds().remove(job_id);
        let job_id = job_id.to_owned();
        let result = result.map(Json::to_string);
        let shared = self.inner.group.shared().clone();
        let done = self.write(move |tx| {
            // In the writer: a claim of this job whose commit failed is known by now.
            if let Some(why) = shared.lost().take_refusal(&job_id) {
                return Err(StoreError::Db(format!(
                    "job `{job_id}` is not this worker's: its claim did not commit ({why}), so the job went back to the queue; this completion is refused"
                )));
            }
            let n = tx.exec_cached(
                "UPDATE jobs SET status = 'completed', completed_at = CURRENT_TIMESTAMP,
                    lease_owner = NULL, lease_until = NULL, result = COALESCE(?2, result)
                 WHERE job_id = ?1 AND status IN ('pending', 'processing')",
                params![job_id, result],
            )?;
            Ok(n > 0)
        })?;
        if done {
            // `wait_for_jobs` waiters.
            self.inner.notify.notify_waiters();
        }
        Ok(done)
    }

    fn fail_job(&self, job_id: &str, error: &str) -> Result<Failed, StoreError> {
        self.holds().remove(job_id);
        let default_max = i64::from(self.inner.opts.max_attempts);
        let (job_id, error) = (job_id.to_owned(), error.to_owned());
        let opts = self.inner.opts.clone();
        let shared = self.inner.group.shared().clone();
        let out = self.write(move |tx| {
            // A lost claim's attempt is counted in front of this transaction already.
            shared.lost().take_refusal(&job_id);
            let row: Option<(i64, Option<i64>)> = tx
                .row_cached(
                    "SELECT COALESCE(attempts, 0), max_attempts FROM jobs
                     WHERE job_id = ?1 AND status IN ('processing', 'pending')",
                    [&job_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((attempts, max)) = row else {
                return Ok(Failed::NotFound);
            };
            // A job failed without ever being claimed counts as one attempt.
            let attempts = attempts.max(1);
            if attempts >= max.unwrap_or(default_max) {
                tx.exec_cached(
                    "UPDATE jobs SET status = 'dead', error_message = ?2, attempts = ?3,
                        completed_at = CURRENT_TIMESTAMP, lease_owner = NULL, lease_until = NULL
                     WHERE job_id = ?1",
                    params![job_id, error, attempts],
                )?;
                return Ok(Failed::Dead);
            }
            let at = now_ms()
                + i64::try_from(backoff(&opts, attempts).as_millis()).unwrap_or(i64::MAX / 4);
            tx.exec_cached(
                "UPDATE jobs SET status = 'pending', error_message = ?2, attempts = ?3,
                    next_attempt_at = ?4, started_at = NULL, lease_owner = NULL,
                    lease_until = NULL
                 WHERE job_id = ?1",
                params![job_id, error, attempts, at],
            )?;
            Ok(Failed::Retry {
                at: from_ms(at),
                attempts,
            })
        })?;
        if !matches!(out, Failed::NotFound) {
            self.inner.notify.notify_waiters();
        }
        Ok(out)
    }

    fn renew_leases(&self, owner: &str) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        let lease_ms = self.lease_ms();
        self.write(move |tx| {
            Ok(tx.exec_cached(
                "UPDATE jobs SET lease_until = ?2 WHERE status = 'processing' AND lease_owner = ?1",
                params![owner, now_ms() + lease_ms],
            )?)
        })
    }

    fn abandon_job(&self, job_id: &str, why: &str) -> Result<bool, StoreError> {
        self.holds().remove(job_id);
        let (job_id, why, owner) = (job_id.to_owned(), why.to_owned(), self.inner.owner.clone());
        let done = self.write(move |tx| {
            let n = tx.exec_cached(
                "UPDATE jobs SET status = 'failed', error_message = ?3,
                    completed_at = CURRENT_TIMESTAMP, lease_owner = NULL, lease_until = NULL
                 WHERE job_id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![job_id, owner, why],
            )?;
            Ok(n > 0)
        })?;
        if done {
            self.inner.notify.notify_waiters();
        }
        Ok(done)
    }

    fn set_holder(&self, job_id: &str, holder: Holder) {
        if let Some(h) = self.holds().get_mut(job_id) {
            *h = Some(holder);
        }
    }

    fn queue_job_of(&self, machine: &str) -> Option<String> {
        self.holds()
            .iter()
            .find(|(_, h)| {
                h.as_ref()
                    .is_some_and(|h| h.from_queue && *h.machine == *machine)
            })
            .map(|(id, _)| id.clone())
    }

    fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        Ok(self
            .conn()
            .row_cached(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"),
                [job_id],
                |r| job_from_row(r, default_max),
            )
            .optional()?)
    }

    fn list_jobs(&self, q: &ListJobs) -> Result<Vec<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR job_type = ?2)
               AND (?3 IS NULL OR machine_type = ?3)
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let limit = q.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = st.query_map(params![q.status, q.job_type, q.machine_type, limit], |r| {
            job_from_row(r, default_max)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn pending_jobs(
        &self,
        filter: &JobFilter,
        limit: Option<usize>,
    ) -> Result<Vec<Job>, StoreError> {
        let default_max = i64::from(self.inner.opts.max_attempts);
        let conn = self.conn();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE status = 'pending' AND (?1 IS NULL OR job_type = ?1)
               AND (?2 IS NULL OR machine_type = ?2)
             ORDER BY priority ASC, created_at ASC, id ASC LIMIT ?3"
        ))?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = st.query_map(params![filter.job_type, filter.machine_type, limit], |r| {
            job_from_row(r, default_max)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT job_type, COALESCE(status, 'pending'), COUNT(*) FROM jobs
             GROUP BY 1, 2 ORDER BY 1, 2",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .row_cached("PRAGMA data_version", [], |r| r.get(0))?)
    }

    fn claim_backoff(&self) -> Option<Duration> {
        self.inner.group.shared().health().backoff()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.check_writes()?;
        // Reads the jobs table's first page: an unreadable file fails here.
        let _: Option<i64> = self
            .conn()
            .row_cached("SELECT 1 FROM jobs LIMIT 1", [], |r| r.get(0))
            .optional()?;
        Ok(())
    }

    fn notify(&self) -> &Arc<tokio::sync::Notify> {
        &self.inner.notify
    }

    fn owner(&self) -> &str {
        &self.inner.owner
    }
}

impl StateStore for SqliteStore {
    fn save_state(
        &self,
        machine: &str,
        state: &str,
        context: &Map<String, Json>,
    ) -> Result<(), StoreError> {
        let ctx = serde_json::to_string(context).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let conn = self.conn();
        conn.exec_cached(
            "INSERT INTO machine_state (machine_name, current_state, last_activity, pid, context)
             VALUES (?1, ?2, CURRENT_TIMESTAMP, ?3, ?4)
             ON CONFLICT(machine_name) DO UPDATE SET current_state = excluded.current_state,
                last_activity = excluded.last_activity, pid = excluded.pid,
                context = excluded.context",
            params![machine, state, i64::from(std::process::id()), ctx],
        )?;
        Ok(())
    }

    fn load_state(&self, machine: &str) -> Result<Option<MachineRecord>, StoreError> {
        Ok(self
            .conn()
            .row_cached(
                "SELECT machine_name, current_state, last_activity, pid, context
                 FROM machine_state WHERE machine_name = ?1",
                [machine],
                machine_from_row,
            )
            .optional()?)
    }

    fn machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT machine_name, current_state, last_activity, pid, context
             FROM machine_state ORDER BY machine_name",
        )?;
        let rows = st.query_map([], machine_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn record_event(
        &self,
        source: Option<&str>,
        target: &str,
        event_type: &str,
        job_id: Option<&str>,
        payload: Option<&Json>,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.exec_cached(
            "INSERT INTO machine_events (source_machine, target_machine, event_type, job_id,
                payload, status) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            params![
                source,
                target,
                event_type,
                job_id,
                payload.map(Json::to_string)
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn events(&self, target: Option<&str>, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT id, source_machine, target_machine, event_type, job_id, payload,
                COALESCE(status, 'pending'), created_at
             FROM machine_events WHERE (?1 IS NULL OR target_machine = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![target, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    source_machine: r.get(1)?,
                    target_machine: r.get(2)?,
                    event_type: r.get(3)?,
                    job_id: r.get(4)?,
                    payload: json_col(r, 5)?,
                    status: r.get(6)?,
                    created_at: r.get(7)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn persist_batch(
        &self,
        states: &super::SavedStates,
        audit: &[super::TransitionRecord],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO transitions (machine_name, from_state, to_state, event, job_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in audit {
                ins.execute(params![
                    r.machine_name,
                    r.from_state,
                    r.to_state,
                    r.event,
                    r.job_id
                ])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO machine_state (machine_name, current_state, last_activity, pid, context)
                 VALUES (?1, ?2, CURRENT_TIMESTAMP, ?3, ?4)
                 ON CONFLICT(machine_name) DO UPDATE SET current_state = excluded.current_state,
                    last_activity = excluded.last_activity, pid = excluded.pid,
                    context = excluded.context",
            )?;
            let pid = i64::from(std::process::id());
            for (m, (state, ctx)) in states {
                let ctx =
                    serde_json::to_string(ctx).map_err(|e| StoreError::Invalid(e.to_string()))?;
                up.execute(params![&**m, &**state, pid, ctx])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn transitions(
        &self,
        machine: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::TransitionRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT id, machine_name, from_state, to_state, event, job_id, created_at
             FROM transitions WHERE (?1 IS NULL OR machine_name = ?1)
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![machine, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(super::TransitionRecord {
                    id: r.get(0)?,
                    machine_name: r.get(1)?,
                    from_state: r.get(2)?,
                    to_state: r.get(3)?,
                    event: r.get(4)?,
                    job_id: r.get(5)?,
                    created_at: r.get(6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn clear_events(&self, target: &str, types: &[String]) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        for t in types {
            n += tx.exec_cached(
                "UPDATE machine_events SET status = 'processed', processed_at = CURRENT_TIMESTAMP
                 WHERE target_machine = ?1 AND event_type = ?2 AND status = 'pending'",
                params![target, t],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }
}

fn machine_from_row(r: &Row<'_>) -> rusqlite::Result<MachineRecord> {
    Ok(MachineRecord {
        machine_name: r.get(0)?,
        current_state: r.get(1)?,
        last_activity: r.get(2)?,
        pid: r.get(3)?,
        context: json_col(r, 4)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(conn: &Connection, sql: &str, n: usize) -> String {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params: Vec<Option<String>> = vec![Some("x".into()); n];
        let rows = st
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    }

    #[test]
    fn claims_walk_a_partial_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).unwrap();
        let conn = store.conn();
        for (jt, mt) in [(true, true), (true, false), (false, true), (false, false)] {
            let filter = JobFilter {
                job_type: jt.then(|| "t".into()),
                machine_type: mt.then(|| "m".into()),
            };
            let p = plan(&conn, pick_sql(&filter), 3);
            assert!(p.contains("idx_jobs_pending"), "{filter:?}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{filter:?} sorts: {p}");
        }
        let p = plan(
            &conn,
            "UPDATE jobs INDEXED BY idx_jobs_leased SET status = 'pending'
             WHERE status = 'processing' AND lease_until IS NOT NULL AND lease_until < ?1",
            1,
        );
        assert!(p.contains("idx_jobs_leased"), "{p}");
    }

    #[test]
    fn the_sync_mode_is_the_connection_s() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, want) in [(SyncMode::Full, 2), (SyncMode::Normal, 1)] {
            let store = SqliteStore::open_with(
                &dir.path().join("q.db"),
                SqliteOptions {
                    sync: mode,
                    renew: false,
                    ..SqliteOptions::default()
                },
            )
            .unwrap();
            let got: i64 = store
                .conn()
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(got, want, "{mode:?}");
        }
        assert_eq!(SqliteOptions::default().sync, SyncMode::Full);
    }

    #[test]
    fn concurrent_writers_share_commits_and_keep_their_own_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("q.db")).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = store.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let job = NewJob {
                            job_id: Some(format!("t{t}-{i}")),
                            job_type: "task".into(),
                            ..NewJob::default()
                        };
                        s.add_job(job).unwrap();
                        // A duplicate fails alone; the batch it shares still commits.
                        let dup = NewJob {
                            job_id: Some(format!("t{t}-{i}")),
                            job_type: "task".into(),
                            ..NewJob::default()
                        };
                        assert!(matches!(s.add_job(dup), Err(StoreError::Invalid(_))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let all = store
            .list_jobs(&ListJobs {
                limit: None,
                ..ListJobs::default()
            })
            .unwrap();
        assert_eq!(all.len(), 1600);
        let (ops, batches) = store.inner.group.counts();
        assert_eq!(ops, 3200);
        assert!(
            batches < ops,
            "no two writes shared a commit ({ops} in {batches})"
        );
    }
}
