//! Where the job store is and how `turnstile` opens it: `--db` (a path or a URL, read
//! after clap so that a URL's password never reaches clap's error), `--db-sync`, `run`'s
//! store options, and the opening that waits for a database not reachable yet
//! (`--db-wait`), with the instance registration and the persister `run` needs. Shared
//! by `run` and the store commands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::TypedValueParser;
use clap::Args;
use turnstile_engine::instance::Instance;
use turnstile_engine::store::{
    Location, StateStore, Store, StoreError, StoreOptions, SyncMode, DEFAULT_POOL_SIZE,
};
use turnstile_engine::ActionRegistry;

/// The database file when neither `--db` nor `TURNSTILE_DB` says.
pub const DEFAULT_DB: &str = "turnstile.db";

/// Where the job store lives.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// The job and state store: a SQLite file (created when missing; statemachine-engine's
    /// `data/pipeline.db` works too), as a path or a sqlite://PATH URL, or a PostgreSQL
    /// database, as a postgres://USER:PASSWORD@HOST:PORT/DB URL. A URL of a backend this
    /// build does not have is refused. Default: ./turnstile.db.
    #[arg(long, env = "TURNSTILE_DB", value_name = "PATH|URL")]
    pub db: Option<String>,
    /// When a commit reaches the disk: `full` fsyncs every commit (a job survives a power
    /// loss; concurrent writes of this process share one fsync), `normal` only at
    /// checkpoints (survives this process being killed, not the machine going down).
    #[arg(long, env = "TURNSTILE_DB_SYNC", value_enum, default_value_t = DbSync::Full)]
    pub db_sync: DbSync,
}

/// `--db-sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbSync {
    /// fsync at every commit.
    Full,
    /// fsync at checkpoints.
    Normal,
}

impl From<DbSync> for SyncMode {
    fn from(s: DbSync) -> Self {
        match s {
            DbSync::Full => SyncMode::Full,
            DbSync::Normal => SyncMode::Normal,
        }
    }
}

impl DbArg {
    /// Where the store is; a location this build cannot open is a usage error (read here
    /// rather than by clap, whose message would repeat a URL's password).
    pub fn location(&self) -> Result<Location, crate::UsageError> {
        match &self.db {
            None => Ok(Location::Sqlite(PathBuf::from(DEFAULT_DB))),
            Some(s) => s
                .parse()
                .map_err(|e| crate::UsageError(format!("--db: {e}"))),
        }
    }
}

/// `run` options of the job store.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Job store")]
pub struct RunStoreArgs {
    /// The store. Opened when given, or when a config uses a job action.
    #[command(flatten)]
    pub db: DbArg,
    /// Seconds a claimed job stays leased to this process without renewal (renewed every
    /// third of it while the process lives; a dead worker's jobs are claimable again
    /// after it).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub job_lease: f64,
    /// Attempts of a job before it is dead-lettered (jobs may say otherwise).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub job_max_attempts: u32,
    /// First retry delay in seconds after a failed attempt (doubled each attempt).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub job_backoff: f64,
    /// Jobs one claim takes at most (1 to 1000): when a machine asks for a job and none
    /// is prefetched, this process claims up to N-1 more than its machines waiting, in
    /// one statement, and keeps the rest for its next askers of the same queue (leased,
    /// renewed, given back at exit, or when no machine took them within a third of the
    /// lease). Prefetched jobs wait behind this process's machines; 1 claims one job at
    /// a time.
    #[arg(long, default_value_t = 32, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub claim_batch: u16,
    /// Seconds to keep trying a store that cannot be reached at start (a sidecar often
    /// starts before its database); then the process exits 1. A malformed URL or refused
    /// credentials exit 2 at once.
    #[arg(
        long,
        env = "TURNSTILE_DB_WAIT",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    pub db_wait: f64,
    /// PostgreSQL: connections each of the store's two pools opens at most (one pool
    /// claims jobs, the other does everything else; one more connection listens for
    /// notifications), so a process holds at most 2 × N + 1. Ignored on SQLite.
    #[arg(
        long,
        env = "TURNSTILE_DB_POOL",
        default_value_t = DEFAULT_POOL_SIZE,
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from)
    )]
    pub db_pool: usize,
    /// Delete completed, cancelled and dead-lettered jobs that finished longer ago than
    /// this (`30d`, `12h`, `90m`): at start, then every tenth of it (at least every second,
    /// at most every hour). Default: they are kept.
    #[arg(long, env = "TURNSTILE_JOB_RETENTION", value_name = "DURATION",
          value_parser = parse_retention)]
    pub job_retention: Option<Duration>,
    /// Save each machine's state and context after every transition (plus a transition
    /// record) in the store, and start each machine in its saved state.
    #[arg(long)]
    pub persist: bool,
    /// Serve a Unix datagram socket per machine in this private directory (created 0700;
    /// sockets 0600) for statemachine-engine-style messages from other processes
    /// (`turnstile send-event`).
    #[arg(long, env = "TURNSTILE_SOCKET_DIR", value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
}

/// `--job-retention`: a duration of humantime's form, more than zero.
fn parse_retention(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(format!("{e} (write e.g. 30d, 12h or 90m)")),
    }
}

pub fn open_existing(db: &DbArg) -> anyhow::Result<Arc<dyn Store>> {
    let location = db.location()?;
    let opts = StoreOptions {
        renew: false,
        sync: db.db_sync.into(),
        ..StoreOptions::default()
    };
    open_waiting(&location, opts, Duration::ZERO, &|_| {})
}

/// Opens the store, trying again for `wait` while it cannot be reached. Settings the
/// database refuses are a usage error (exit 2); a store still unreachable after `wait`
/// (or failing otherwise) is an error (exit 1).
pub fn open_waiting(
    location: &Location,
    opts: StoreOptions,
    wait: Duration,
    waiting: &dyn Fn(&str),
) -> anyhow::Result<Arc<dyn Store>> {
    let deadline = std::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(250);
    loop {
        match turnstile_engine::store::open(location, opts.clone()) {
            Ok(store) => return Ok(store),
            Err(StoreError::Config(why)) => {
                return Err(crate::UsageError(format!(
                    "cannot open the job store {location}: {why}"
                ))
                .into())
            }
            Err(StoreError::Unavailable(why)) if std::time::Instant::now() < deadline => {
                waiting(&why);
                let pause =
                    delay.min(deadline.saturating_duration_since(std::time::Instant::now()));
                tracing::warn!(target: "turnstile::jobs", db = %location, "the job store cannot be reached ({why}); trying again in {pause:?} (for up to {wait:?} in all, --db-wait)");
                std::thread::sleep(pause);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(StoreError::Unavailable(why)) => {
                let waited = if wait.is_zero() {
                    String::new()
                } else {
                    format!("; gave up after {} s (--db-wait)", wait.as_secs_f64())
                };
                return Err(anyhow::anyhow!(
                    "cannot open the job store {location}: it cannot be reached ({why}){waited}"
                ));
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot open the job store {location}"))
                )
            }
        }
    }
}

/// Registers `instance` as live in `store` when its id was given (see
/// [`Instance::chosen`]); the stale limit is the lease (`--job-lease`): a process that did
/// not heartbeat for a whole lease is dead. An id a live process holds is a usage error
/// (exit 2). Returns whether the id was registered.
pub fn register_instance(
    store: &dyn Store,
    instance: &Instance,
    args: &RunStoreArgs,
) -> anyhow::Result<bool> {
    if !instance.chosen() {
        return Ok(false);
    }
    let lease = Duration::try_from_secs_f64(args.job_lease)
        .context("--job-lease must be a positive number of seconds")?;
    match store.register_instance(instance.id(), instance.incarnation(), lease) {
        Ok(()) => {
            tracing::info!(target: "turnstile::jobs", instance = instance.id(), "instance registered");
            Ok(true)
        }
        Err(e @ StoreError::InstanceInUse(_)) => Err(crate::UsageError(format!(
            "{e}: give this process another --instance-id, or stop that one"
        ))
        .into()),
        Err(e) => Err(anyhow::anyhow!("cannot register the instance: {e}")),
    }
}

/// Frees `instance`'s id at a clean exit (after the held jobs were given back).
pub fn unregister_instance(store: &dyn Store, instance: &Instance) {
    if let Err(e) = store.unregister_instance(instance.id(), instance.incarnation()) {
        tracing::warn!(target: "turnstile::jobs", instance = instance.id(), "unregistering the instance failed ({e}): its id is free once its last heartbeat is a lease old");
    }
}

/// Opens the store for `run` when `--db`, `--persist` or `--job-retention` was given or a
/// loaded config uses a job action,
/// and hands it to the job actions. Its lease owner and the instance id written with saved
/// machine states are `instance`'s.
pub fn open_for_run(
    args: &RunStoreArgs,
    registry: &ActionRegistry,
    instance: &Instance,
    waiting: &dyn Fn(&str),
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    if args.db.db.is_none()
        && !args.persist
        && args.job_retention.is_none()
        && !registry.jobs().used()
    {
        return Ok(None);
    }
    let secs = |v: f64, what: &str| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("{what} must be a positive number of seconds"))
    };
    let opts = StoreOptions {
        lease: secs(args.job_lease, "--job-lease")?,
        max_attempts: args.job_max_attempts.max(1),
        backoff_base: secs(args.job_backoff, "--job-backoff")?,
        sync: args.db.db_sync.into(),
        claim_batch: usize::from(args.claim_batch),
        owner: Some(instance.owner()),
        instance_id: Some(instance.id().to_owned()),
        pool_size: args.db_pool,
        ..StoreOptions::default()
    };
    let location = args.db.location()?;
    let wait = Duration::try_from_secs_f64(args.db_wait).map_err(|_| {
        crate::UsageError("--db-wait must be a number of seconds, 0 or more".into())
    })?;
    let store = open_waiting(&location, opts, wait, waiting)?;
    tracing::info!(target: "turnstile::jobs", db = %store.describe(), owner = store.owner(), "job store open");
    registry.jobs().set(store.clone());
    Ok(Some(store))
}

/// The state persister `--persist` asks for.
pub fn persister(
    args: &RunStoreArgs,
    store: Option<&Arc<dyn Store>>,
) -> Option<turnstile_engine::store::Persister> {
    let store = store.filter(|_| args.persist)?;
    Some(turnstile_engine::store::Persister::new(
        store.clone() as Arc<dyn StateStore>
    ))
}
