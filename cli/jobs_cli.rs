//! The job store on the command line: `run --db`, `jobs add`, the `jobs` subcommands'
//! arguments (`list`, `show`, `retry` and `cancel` are carried out by `jobs_admin.rs`, on a
//! store or through a sidecar), `machine-state`, `events list`, and the `turnstile_jobs`
//! gauge.
//!
//! What they print goes through the process's redactor (`turnstile_engine::redact`):
//! jobs' data, results and metadata and machines' contexts show sensitive fields as
//! `"[redacted]"`; the store keeps the real values.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use turnstile_engine::store::admin::Op;
use turnstile_engine::store::{
    new_job_from_json, Added, ListJobs, MachineRecord, NewJob, Store, StoreError, Timestamp,
    MAX_BATCH, STATUSES,
};
use turnstile_exporter::telemetry::Telemetry;

use crate::db::{open_existing, DbArg};
use crate::jobs_admin::{self, Target};

/// `println!` that ignores a closed stdout (`turnstile jobs list | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// How often `turnstile_jobs` is refreshed from the store (also after local changes).
pub const JOB_METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// `send-event` arguments.
#[derive(Debug, Args)]
pub struct SendEventArgs {
    /// The machine.
    #[arg(long)]
    pub target: String,
    /// The event name.
    #[arg(long = "type", value_name = "EVENT")]
    pub event: String,
    /// The payload, JSON.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// A job id carried with the event.
    #[arg(long)]
    pub job_id: Option<String>,
    /// W3C traceparent to continue.
    #[arg(long, env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// The directory the target's `turnstile run --socket-dir` serves (default:
    /// $XDG_RUNTIME_DIR/turnstile or /tmp/turnstile-UID).
    #[arg(
        long,
        env = "TURNSTILE_SOCKET_DIR",
        value_name = "DIR",
        conflicts_with = "db"
    )]
    pub socket_dir: Option<PathBuf>,
    /// Send through this store (a SQLite file or a PostgreSQL URL, as `run --db`) instead of
    /// a socket: the event goes into the store's event table for the process, on any host,
    /// that runs the machine. Prints the event's id.
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<String>,
    /// With --db: a process whose registration is older than this many seconds is dead
    /// (the `--job-lease` of the processes running the machine).
    #[arg(long, default_value_t = 30.0, value_name = "SECS", requires = "db")]
    pub stale_after: f64,
}

/// `turnstile send-event`
pub fn send_event(args: SendEventArgs) -> anyhow::Result<ExitCode> {
    let mut msg = serde_json::Map::new();
    msg.insert("type".into(), serde_json::Value::String(args.event));
    if let Some(p) = args.payload {
        match serde_json::from_str::<serde_json::Value>(&p) {
            Ok(v) => {
                msg.insert("payload".into(), v);
            }
            Err(e) => {
                eprintln!("error: --payload is not JSON: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if let Some(j) = args.job_id {
        msg.insert("job_id".into(), serde_json::Value::String(j));
    }
    if let Some(t) = args.traceparent {
        msg.insert("traceparent".into(), serde_json::Value::String(t));
    }
    let dir = args
        .socket_dir
        .unwrap_or_else(turnstile_engine::sockets::default_dir);
    let msg = serde_json::Value::Object(msg);
    // The checks the receiving socket makes (type, job id, size): a clear error here
    // instead of a datagram the receiver drops.
    let bytes = serde_json::to_vec(&msg)?;
    if let Err(e) =
        turnstile_engine::ingress::parse(&bytes, &turnstile_engine::ingress::Limits::SOCKET)
    {
        eprintln!("error: the message would be refused: {e}");
        return Ok(ExitCode::from(2));
    }
    turnstile_engine::sockets::send(&dir, &args.target, &msg).with_context(|| {
        format!(
            "cannot send to {}",
            turnstile_engine::sockets::socket_path(&dir, &args.target).display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Add a pending job, or (--from-file) a batch of jobs in one transaction.
    Add {
        /// Job type (what `check_database_queue`'s `job_type` selects). Required unless
        /// --from-file is given.
        #[arg(
            long = "type",
            value_name = "TYPE",
            required_unless_present = "from_file"
        )]
        job_type: Option<String>,
        /// The machine type it is meant for (default: any).
        #[arg(long)]
        machine_type: Option<String>,
        /// Job data, a JSON object (its fields are copied into the worker's context).
        #[arg(long, value_name = "JSON")]
        data: Option<String>,
        /// 1 = highest, 10 = lowest.
        #[arg(long, default_value_t = 5)]
        priority: i64,
        /// Job id (default: a fresh one).
        #[arg(long)]
        job_id: Option<String>,
        /// Attempts before it is dead-lettered (default: the worker's --job-max-attempts).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// W3C traceparent: the worker continues this trace (with --from-file: of every
        /// job, over the jobs' own `traceparent` fields).
        #[arg(long, env = "TRACEPARENT")]
        traceparent: Option<String>,
        /// Add nothing while a pending or processing job has this key (its id is printed
        /// instead).
        #[arg(long, value_name = "KEY")]
        unique_key: Option<String>,
        /// Not claimable before this RFC 3339 time (`2026-12-04T10:00:00Z`, or with an
        /// offset).
        #[arg(long, value_name = "TIME", conflicts_with = "delay")]
        run_after: Option<String>,
        /// Not claimable for this many seconds from now.
        #[arg(long, value_name = "SECS")]
        delay: Option<f64>,
        /// Add the jobs of this file (`-`: standard input): a JSON array of job objects, or
        /// one object per line (the fields of `POST /jobs`). All or nothing; prints
        /// `added ID` or `existing ID` per job, in order.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with_all = ["job_type", "machine_type", "data", "priority", "job_id",
                "max_attempts", "unique_key", "run_after", "delay"]
        )]
        from_file: Option<PathBuf>,
        /// The store.
        #[command(flatten)]
        db: DbArg,
    },
    /// List jobs, newest first (a page: `--after` the id printed at its end goes on).
    List {
        /// Only this status (pending, processing, completed, failed, dead, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only this type.
        #[arg(long = "type", value_name = "TYPE")]
        job_type: Option<String>,
        /// At most this many (with --url: 1 to 1000, the sidecar's page).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only jobs older than the job with this row id (the next page of a listing).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// The store, or the sidecar.
        #[command(flatten)]
        target: Target,
    },
    /// Show one job: status, attempts, last error, lease holder, trace id, data (redacted).
    Show {
        /// The job's id.
        job_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// The store, or the sidecar.
        #[command(flatten)]
        target: Target,
    },
    /// Put a dead-lettered or cancelled job back to pending (its attempts counted from 0).
    Retry {
        /// The job's id.
        job_id: String,
        /// Output format of the job as it is now.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// The store, or the sidecar.
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a pending job: status `cancelled`, kept and listed, never claimed (a claimed
    /// job is refused).
    Cancel {
        /// The job's id.
        job_id: String,
        /// Output format of the job as it is now.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// The store, or the sidecar.
        #[command(flatten)]
        target: Target,
    },
}

/// `events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List the transitions recorded by `run --persist` (event, from, to), newest first.
    List {
        /// Only events for this machine.
        #[arg(long)]
        machine: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// The store.
        #[command(flatten)]
        db: DbArg,
    },
}

/// `machine-state` arguments.
#[derive(Debug, Args)]
pub struct MachineStateArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutFormat::Text)]
    pub format: OutFormat,
    /// The store.
    #[command(flatten)]
    pub db: DbArg,
}

/// Output format of the listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// Aligned text.
    Text,
    /// One JSON array.
    Json,
}

/// Keeps `turnstile_jobs{job_type, status}` current: every [`JOB_METRICS_INTERVAL`] and
/// soon after a job is added in this process. The counts scan the job table, so they are
/// taken at most once per [`COUNT_COST_FACTOR`] times their own duration: on a large table
/// the gauges lag rather than keep a core busy counting.
pub async fn job_metrics(store: Arc<dyn Store>, telemetry: Arc<Telemetry>) {
    let notify = store.notify().clone();
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    loop {
        let started = std::time::Instant::now();
        let s = store.clone();
        if let Ok(Ok(counts)) = tokio::task::spawn_blocking(move || s.counts()).await {
            let mut now = std::collections::HashSet::new();
            for (t, st, n) in counts {
                telemetry.set_jobs(&t, &st, i64::try_from(n).unwrap_or(i64::MAX));
                now.insert((t, st));
            }
            // Every known status of every known type has a series (0 when none).
            let types: std::collections::HashSet<String> = seen
                .iter()
                .chain(now.iter())
                .map(|(t, _)| t.clone())
                .collect();
            for t in &types {
                for st in STATUSES {
                    let k = (t.clone(), (*st).to_owned());
                    if !now.contains(&k) {
                        telemetry.set_jobs(t, st, 0);
                    }
                }
            }
            seen.extend(now);
        }
        let s = store.clone();
        if let Ok(Ok(health)) = tokio::task::spawn_blocking(move || s.queue_health()).await {
            let mut types: Vec<String> = seen.iter().map(|(t, _)| t.clone()).collect();
            types.sort();
            types.dedup();
            telemetry.set_queue_health(&health, &types);
        }
        let spacing = started.elapsed() * COUNT_COST_FACTOR;
        tokio::select! {
            () = notify.notified() => {
                tokio::time::sleep(spacing.max(Duration::from_millis(200))).await;
            }
            () = tokio::time::sleep(JOB_METRICS_INTERVAL.max(spacing)) => {}
        }
    }
}

/// The job gauges spend at most one part in this many of a thread on their counts.
const COUNT_COST_FACTOR: u32 = 20;

/// How often `--job-retention` purges: a tenth of the retention, within these bounds.
const PURGE_EVERY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// `--job-retention`: deletes completed, cancelled and dead-lettered jobs older than
/// `retention` now and then every tenth of it (see [`PURGE_EVERY`]); logs what it deleted
/// and warns when the store fails (the next round tries again).
pub async fn purge_finished(store: Arc<dyn Store>, retention: Duration) {
    let every = (retention / 10).clamp(PURGE_EVERY.0, PURGE_EVERY.1);
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.purge_jobs(retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                target: "turnstile::jobs",
                purged = n,
                retention = %humantime::format_duration(retention),
                "purged finished jobs older than the retention (--job-retention)"
            ),
            Ok(Err(e)) => tracing::warn!(
                target: "turnstile::jobs",
                "purging finished jobs failed ({e}); trying again in {}",
                humantime::format_duration(every)
            ),
            Err(e) => tracing::warn!(target: "turnstile::jobs", "the purge stopped: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// `turnstile jobs ...`
pub fn jobs(cmd: JobsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobsCommand::Add {
            job_type,
            machine_type,
            data,
            priority,
            job_id,
            max_attempts,
            traceparent,
            unique_key,
            run_after,
            delay,
            from_file,
            db,
        } => {
            if let Some(tp) = &traceparent {
                if let Err(e) = turnstile_engine::TraceContext::parse(tp) {
                    eprintln!("error: invalid traceparent: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
            if let Some(file) = from_file {
                return add_from_file(&file, traceparent, &db);
            }
            let data = match data {
                None => None,
                Some(s) => match serde_json::from_str::<serde_json::Value>(&s) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("error: --data is not JSON: {e}");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            let run_after = match (run_after, delay) {
                (Some(t), _) => match Timestamp::parse_rfc3339(&t) {
                    Some(t) => Some(t),
                    None => {
                        eprintln!("error: --run-after must be an RFC 3339 time with its offset, like 2026-12-04T10:00:00Z");
                        return Ok(ExitCode::from(2));
                    }
                },
                (None, Some(secs)) => {
                    let at = Duration::try_from_secs_f64(secs)
                        .ok()
                        .and_then(|d| std::time::SystemTime::now().checked_add(d));
                    match at {
                        Some(at) => Some(Timestamp::from(at)),
                        None => {
                            eprintln!("error: --delay must be a number of seconds, 0 or more");
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
                (None, None) => None,
            };
            let store = open_existing(&db)?;
            let added = store.add_job(NewJob {
                job_id,
                job_type: job_type.unwrap_or_default(),
                machine_type,
                data,
                priority: Some(priority),
                max_attempts,
                traceparent,
                run_after,
                unique_key,
                ..NewJob::default()
            });
            match added {
                Ok(id) => outln!("{id}"),
                Err(StoreError::Duplicate { job_id, unique_key }) => {
                    eprintln!("job {job_id} with unique key `{unique_key}` is already pending or processing; nothing was added");
                    outln!("{job_id}");
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::List {
            status,
            job_type,
            limit,
            after,
            format,
            target,
        } => {
            if let Some(st) = &status {
                if !STATUSES.contains(&st.as_str()) {
                    return Err(crate::UsageError(format!(
                        "--status: unknown status `{st}` (one of {})",
                        STATUSES.join(", ")
                    ))
                    .into());
                }
            }
            let q = ListJobs {
                status,
                job_type,
                machine_type: None,
                limit: Some(limit),
                after,
            };
            jobs_admin::list(&q, format == OutFormat::Json, &target)
        }
        JobsCommand::Show {
            job_id,
            format,
            target,
        } => jobs_admin::show(&job_id, format == OutFormat::Json, &target),
        JobsCommand::Retry {
            job_id,
            format,
            target,
        } => jobs_admin::change(Op::Retry, &job_id, format == OutFormat::Json, &target),
        JobsCommand::Cancel {
            job_id,
            format,
            target,
        } => jobs_admin::change(Op::Cancel, &job_id, format == OutFormat::Json, &target),
    }
}

/// The jobs of a `--from-file` file: a JSON array, or one JSON object per line (blank
/// lines skipped). The error names the line, or the array element.
fn read_jobs(text: &str, traceparent: Option<&String>) -> Result<Vec<NewJob>, String> {
    let now = std::time::SystemTime::now();
    let read = |v: &serde_json::Value, what: &dyn Fn() -> String| {
        new_job_from_json(v, now, traceparent.cloned()).map_err(|e| format!("{}: {e}", what()))
    };
    let jobs = if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON array: {e}"))?;
        if items.len() > MAX_BATCH {
            return Err(format!(
                "{} jobs; at most {MAX_BATCH} in one file",
                items.len()
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| read(v, &|| format!("job {i} (counted from 0)")))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let mut jobs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if jobs.len() == MAX_BATCH {
                return Err(format!("more than {MAX_BATCH} jobs in one file"));
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
            jobs.push(read(&v, &|| format!("line {}", n + 1))?);
        }
        jobs
    };
    Ok(jobs)
}

/// `turnstile jobs add --from-file FILE`: every job or none; `added ID` or `existing ID`
/// per job. A file that cannot be read or holds a bad job exits 2, adding nothing.
fn add_from_file(
    file: &std::path::Path,
    traceparent: Option<String>,
    db: &DbArg,
) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(file)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let jobs = match read_jobs(&text, traceparent.as_ref()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {}: {e}; nothing was added", file.display());
            return Ok(ExitCode::from(2));
        }
    };
    let store = open_existing(db)?;
    for a in store.add_jobs(jobs)? {
        match a {
            Added::Added { job_id } => outln!("added {job_id}"),
            Added::Existing { job_id } => outln!("existing {job_id}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `turnstile machine-state`
pub fn machine_state(args: MachineStateArgs) -> anyhow::Result<ExitCode> {
    let store = open_existing(&args.db)?;
    let machines = store.machines()?;
    match args.format {
        OutFormat::Json => {
            let redactor = turnstile_engine::redact::global();
            let machines: Vec<MachineRecord> = machines
                .into_iter()
                .map(|mut m| {
                    if let Some(c) = m.context.as_mut() {
                        redactor.redact_owned(c);
                    }
                    m
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&machines)?)
        }
        OutFormat::Text => {
            outln!(
                "{:<24} {:<20} {:<24} {:<8} INSTANCE",
                "MACHINE",
                "STATE",
                "LAST_ACTIVITY",
                "PID"
            );
            for m in machines {
                outln!(
                    "{:<24} {:<20} {:<24} {:<8} {}",
                    m.machine_name,
                    m.current_state.as_deref().unwrap_or("-"),
                    m.last_activity
                        .map_or_else(|| "-".into(), |t| t.to_string()),
                    m.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    m.instance_id.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `turnstile events ...`
pub fn events(cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::List {
        machine,
        limit,
        format,
        db,
    } = cmd;
    let store = open_existing(&db)?;
    let events = store.transitions(machine.as_deref(), limit)?;
    match format {
        OutFormat::Json => outln!("{}", serde_json::to_string_pretty(&events)?),
        OutFormat::Text => {
            outln!(
                "{:>6} {:<24} {:<20} {:<20} {:<20} {:<20} JOB_ID",
                "ID",
                "CREATED",
                "MACHINE",
                "EVENT",
                "FROM",
                "TO"
            );
            for e in events {
                outln!(
                    "{:>6} {:<24} {:<20} {:<20} {:<20} {:<20} {}",
                    e.id,
                    e.created_at.map_or_else(|| "-".into(), |t| t.to_string()),
                    e.machine_name,
                    e.event,
                    e.from_state,
                    e.to_state,
                    e.job_id.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
