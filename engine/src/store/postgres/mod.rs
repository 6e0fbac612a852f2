//! The PostgreSQL store: one database shared by every Turnstile process on every host.
//!
//! - A connection pool (deadpool) on a small runtime of the store's own, so the store
//!   keeps the synchronous [`JobStore`] / [`StateStore`] API that the job actions call
//!   from blocking threads: a call hands its query to that runtime and waits for the
//!   answer. A connection that breaks (a server restart) is dropped by the pool and
//!   replaced on the next call; calls in between fail as [`StoreError::Unavailable`],
//!   claimers back off ([`JobStore::claim_backoff`]) and readiness reports not ready.
//! - The schema is created and migrated when the store opens ([`schema`]), under an
//!   advisory lock.
//! - A claim is one statement: the next claimable job is picked with
//!   `FOR UPDATE SKIP LOCKED` (claimers in other processes skip it instead of waiting)
//!   and leased in the same `UPDATE`. Claims run on a second pool whose connections set
//!   `synchronous_commit=off`: a claim does not wait for its WAL flush, and one a server
//!   crash loses leaves its job pending (at-least-once allows the second run); they also
//!   plan each statement once (`plan_cache_mode=force_generic_plan`) and only through
//!   indexes (no sequential or bitmap scans, hash or merge joins), so that a plan made
//!   while the table was small still suits it large. Expired leases are reaped before a
//!   claim (a statement of its own on the same connection) at most once a second, and
//!   when a claim finds nothing while a lease of its queue has expired. Times are the
//!   database's clock.
//! - Jobs added, given back, failed or completed send `NOTIFY turnstile_jobs` in their
//!   transaction; a connection of the store's own `LISTEN`s and wakes
//!   [`JobStore::notify`] ([`listen`]), so waiting claimers in every process wake at once
//!   (completions wake [`JobStore::finish_notify`] instead, and events sent
//!   [`crate::store::EventStore::event_notify`]).
//! - Leases are renewed like SQLite's ([`crate::store::holds`]); the same thread
//!   heartbeats the instance registered through the store ([`instances`]).
//!
//! Files: [`jobs`] (the queue), [`admin`] (operators' retries, cancels and purges), [`state`] (machine state, events, audit), [`instances`]
//! (live instances), [`leases`] (singleton machines' leases), [`rows`] (rows to records), [`error`] (driver errors to [`StoreError`]s),
//! [`finish`] (group-committed completions).

mod add;
mod admin;
mod error;
mod events;
mod finish;
mod instances;
mod jobs;
mod leases;
mod listen;
mod rows;
pub mod schema;
mod state;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use crate::store::holds::{spawn_renewal, Holds};
use crate::store::instances::Registration;
use crate::store::leases::Fences;
use crate::store::prefetch::Prefetch;
#[cfg(doc)]
use crate::store::{JobStore, StateStore};
use crate::store::{Store, StoreError, StoreOptions};
use error::pool_error;

/// How long a connection attempt may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a claim reaps expired leases first (a claim that finds nothing while a lease
/// of its queue has expired always does).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// First and longest claim backoff while the database is unreachable.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

struct Inner {
    /// The store's runtime: the pool's connections and the listener live on it. `None`
    /// only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// Connections for claims (`synchronous_commit=off`, generic plans through indexes).
    claims: Pool,
    /// When expired leases were last reaped.
    last_reap: Mutex<Option<Instant>>,
    config: tokio_postgres::Config,
    opts: StoreOptions,
    owner: String,
    notify: Arc<tokio::sync::Notify>,
    /// Woken by completions ([`crate::store::JobStore::finish_notify`]).
    finished: Arc<tokio::sync::Notify>,
    /// Woken by events sent ([`crate::store::EventStore::event_notify`]).
    events: Arc<tokio::sync::Notify>,
    /// The URL without its password, for logs.
    shown: String,
    holds: Holds,
    /// Jobs claimed ahead for this process's machines (`claim_batch` above 1).
    prefetch: Prefetch,
    /// The completion batcher's queue, started with the first completion.
    completions: OnceLock<finish::Queue>,
    /// The instance registered through this store object, heartbeaten by the lease
    /// renewal thread.
    registration: Registration,
    /// The epochs state writes of singleton machines carry ([`crate::store::leases`]).
    fences: Fences,
    /// Dropping it stops the lease renewal thread.
    stop_renewal: OnceLock<std::sync::mpsc::Sender<()>>,
    /// Starts the listener once.
    listening: Once,
    /// While calls fail because the database cannot be reached: failures in a row and
    /// when the last one failed.
    unreachable: Mutex<Option<(u32, Instant)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks end, which panics inside another
        // runtime (a store dropped by an async task): let them end in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A PostgreSQL job and state store. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.shown)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

/// Reads a `postgres://` or `postgresql://` URL (or a `key=value` connection string).
/// The error never repeats the URL (it may hold a password).
///
/// Settings that no connection can satisfy are refused here, as settings, instead of
/// failing every connection attempt as if the server were unreachable (which `--db-wait`
/// would retry in vain): a URL without a host (the driver has no default host), and
/// `sslmode=require` (the store connects without TLS).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::Config(format!("malformed PostgreSQL URL: {e}")))?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(StoreError::Config(
            "the PostgreSQL URL names no host: write postgres://USER:PASSWORD@HOST:PORT/DB".into(),
        ));
    }
    if config.get_ssl_mode() == SslMode::Require {
        return Err(StoreError::Config(
            "sslmode=require: this build of Turnstile connects to PostgreSQL without TLS \
             (use sslmode=disable or prefer, or reach the server through a TLS tunnel)"
                .into(),
        ));
    }
    Ok(config)
}

impl PgStore {
    /// Connects, migrates the schema and starts the lease renewal. A database that
    /// cannot be reached is [`StoreError::Unavailable`] (the caller may try again); a
    /// malformed URL, refused credentials, a missing database or a newer schema is
    /// [`StoreError::Config`].
    pub fn open(url: &str, opts: StoreOptions) -> Result<Self, StoreError> {
        let mut config = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("turnstile");
        }
        let shown = shown(&config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("turnstile-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(format!("cannot start the store's runtime: {e}")))?;
        let pool = build_pool(config.clone(), &opts)?;
        // Claims need not wait for their WAL flush: a claim a server crash loses leaves its
        // job pending, which at-least-once delivery allows (the job may run twice). Adds,
        // completions and failures stay durable.
        // Their statements (claims, expired leases, completions with batched claims) are
        // planned once per connection: with the server's default, a completion of a few
        // jobs was planned again at every call (its generic plan, costed for an array of 10
        // ids, never looked cheaper than a custom one for 1), and planning took twice its
        // execution. A plan made once must suit the table at every size it grows to (a
        // plan made when it held a few pages scanned all of it at every call later, until
        // an ANALYZE): each of these statements finds its rows through an index, so scans
        // of the whole table and hash or merge joins (over whole-table scans) are off.
        let mut fast = config.clone();
        const FAST: &str = "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan \
            -c enable_seqscan=off -c enable_bitmapscan=off -c enable_hashjoin=off \
            -c enable_mergejoin=off";
        let options = match fast.get_options() {
            Some(o) => format!("{o} {FAST}"),
            None => FAST.to_owned(),
        };
        fast.options(&options);
        let claims = build_pool(fast, &opts)?;
        let store = PgStore {
            inner: Arc::new(Inner {
                handle: rt.handle().clone(),
                rt: Some(rt),
                pool,
                claims,
                last_reap: Mutex::new(None),
                config,
                owner: opts.owner.clone().unwrap_or_else(crate::store::owner_id),
                notify: Arc::new(tokio::sync::Notify::new()),
                finished: Arc::new(tokio::sync::Notify::new()),
                events: Arc::new(tokio::sync::Notify::new()),
                shown,
                holds: Holds::default(),
                prefetch: Prefetch::new(opts.claim_batch, opts.lease),
                completions: OnceLock::new(),
                registration: Registration::default(),
                fences: Fences::default(),
                stop_renewal: OnceLock::new(),
                listening: Once::new(),
                unreachable: Mutex::new(None),
                opts,
            }),
        };
        let pool = store.inner.pool.clone();
        // Not noted as an outage: the caller says what an unreachable database at start
        // means (`--db-wait` tries again).
        store.run(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await
        })?;
        if store.inner.opts.renew {
            let stop = spawn_renewal(
                Arc::downgrade(&store.inner),
                store.inner.opts.lease,
                |inner| {
                    let store = PgStore { inner };
                    store.inner.registration.beat(&store);
                    store.renew_held()
                },
            )?;
            let _ = store.inner.stop_renewal.set(stop);
        }
        Ok(store)
    }

    /// Runs `fut` on the store's runtime and waits for its answer (from any thread; a
    /// caller on an async thread blocks it for the query's time, as with SQLite).
    fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let out = self.run(fut);
        self.note(&out);
        out
    }

    /// [`Self::call`] without keeping [`Inner::unreachable`] (and logging) current.
    fn run<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Db("the store's runtime stopped".into())))
    }

    /// Keeps [`Inner::unreachable`] current.
    fn note<T>(&self, out: &Result<T, StoreError>) {
        let mut u = self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match out {
            Err(StoreError::Unavailable(why)) => {
                if u.is_none() {
                    tracing::warn!(target: "turnstile::store", "PostgreSQL cannot be reached ({why}): claimers back off and the store reports not ready until it answers again");
                }
                let n = u.map_or(1, |(n, _)| n.saturating_add(1));
                *u = Some((n, Instant::now()));
            }
            Ok(_) | Err(_) => {
                if let Some((n, _)) = u.take() {
                    tracing::warn!(target: "turnstile::store", "PostgreSQL answers again (after {n} failed call(s))");
                    // Whatever was added meanwhile: look again.
                    self.inner.notify.notify_waiters();
                    self.inner.finished.notify_waiters();
                    self.inner.events.notify_waiters();
                }
            }
        }
    }

    /// Extends the leases of the jobs held in this process; prefetched jobs no machine
    /// took within the prefetch hold go back to the queue instead (see
    /// [`crate::store::prefetch`]).
    pub fn renew_held(&self) -> Result<usize, StoreError> {
        self.rewrite_unwritten();
        for id in self.inner.prefetch.take_stale() {
            if let Err(e) = crate::store::JobStore::release_job(self, &id, &self.inner.owner) {
                tracing::warn!(target: "turnstile::store", job = %id, "could not give back a prefetched job no machine took ({e}): trying again at the next renewal");
                self.inner.prefetch.give_back_later(id, &self.inner.holds);
            }
        }
        let ids = self.inner.holds.renewable();
        if ids.is_empty() {
            return Ok(0);
        }
        let (pool, owner, lease) = (
            self.inner.pool.clone(),
            self.inner.owner.clone(),
            self.inner.opts.lease_ms(),
        );
        let started = Instant::now();
        let asked = ids.clone();
        let renewed: std::collections::HashSet<String> = self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let st = client
                .prepare_cached(
                    "UPDATE jobs SET lease_until = clock_timestamp() + $3 * interval '1 millisecond'
                     WHERE job_id = ANY($1) AND status = 'processing' AND lease_owner = $2
                     RETURNING job_id",
                )
                .await
                .map_err(error::pg_error)?;
            let rows = client
                .query(&st, &[&ids, &owner, &(lease as f64)])
                .await
                .map_err(error::pg_error)?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0))
                .collect::<Result<_, _>>()
                .map_err(error::pg_error)
        })?;
        self.inner
            .prefetch
            .renewed(started, &asked, &renewed, &self.inner.holds);
        Ok(renewed.len())
    }

    /// Connections the pools hold now and how many of them are in use.
    pub fn pool_status(&self) -> (usize, usize) {
        [&self.inner.pool, &self.inner.claims]
            .iter()
            .map(|p| p.status())
            .fold((0, 0), |(open, busy), s| {
                (open + s.size, busy + s.size.saturating_sub(s.available))
            })
    }

    /// Starts the listener once.
    fn listen(&self) {
        self.inner.listening.call_once(|| {
            listen::start(
                &self.inner.handle,
                self.inner.config.clone(),
                listen::Wakes {
                    jobs: Arc::downgrade(&self.inner.notify),
                    finished: Arc::downgrade(&self.inner.finished),
                    events: Arc::downgrade(&self.inner.events),
                },
            );
        });
    }

    /// True when expired leases should be reaped before the next claim (at most every
    /// [`REAP_EVERY`]; a claim that finds nothing while a lease of its queue has expired reaps
    /// anyway and tries again).
    fn reap_due(&self) -> bool {
        let mut last = self
            .inner
            .last_reap
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= REAP_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    fn backoff(&self) -> Option<Duration> {
        let u = *self
            .inner
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (n, last) = u?;
        let full = BACKOFF_FIRST
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(BACKOFF_MAX);
        Some(
            full.saturating_sub(last.elapsed())
                .max(Duration::from_millis(10)),
        )
    }
}

/// A pool of at most [`StoreOptions::pool_size`] connections to `config`.
fn build_pool(config: tokio_postgres::Config, opts: &StoreOptions) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(opts.busy_timeout))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Config(format!("PostgreSQL pool: {e}")))
}

/// `postgres://user@host:port/db`, without the password.
fn shown(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

impl Store for PgStore {
    fn describe(&self) -> String {
        self.inner.shown.clone()
    }
}
