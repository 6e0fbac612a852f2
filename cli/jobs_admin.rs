//! `turnstile jobs list|show|retry|cancel`: the same commands on a store (`--db`) or
//! through a running sidecar (`--url`, with `TURNSTILE_TOKEN` for retry and cancel). Both
//! ways a job is the JSON [`admin::shown`] makes (redacted, with its `trace_id`), printed
//! by one printer; refusals are worded by [`JobChange::refusal`] on the store and by the
//! sidecar through it, so both ways say the same. An unknown job, a refused change, a
//! refused token and a read-only sidecar exit 1 with a message on stderr.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use hyper::Method;
use serde_json::Value as Json;
use turnstile_engine::store::admin::{self, Op};
use turnstile_engine::store::{JobChange, ListJobs, Store};

use crate::db::{open_existing, DbArg};
use crate::sidecar_client::{query, segment, Sidecar};

/// `println!` that ignores a closed stdout (`turnstile jobs list | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Where the jobs are: a store, or a sidecar that serves one.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Go through this running sidecar (`http://HOST:PORT`) instead of opening the store:
    /// its `/jobs` endpoints, with its token and read-only rules.
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub url: Option<String>,
    /// With --url: the bearer token the sidecar's writes need (prefer the environment
    /// variable, which `ps` does not show).
    #[arg(long, env = "TURNSTILE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The store.
    #[command(flatten)]
    pub db: DbArg,
}

/// What the commands talk to.
enum Source {
    Store(std::sync::Arc<dyn Store>),
    Sidecar(Sidecar),
}

impl Source {
    fn open(t: &Target) -> anyhow::Result<Self> {
        Ok(match &t.url {
            Some(url) => Source::Sidecar(Sidecar::new(url, t.token.clone())?.read_only_hint(
                "change the job through a sidecar that takes writes, or with --db on its store",
            )),
            None => Source::Store(open_existing(&t.db)?),
        })
    }

    /// A page of jobs, newest first, and the `after` of the next page.
    fn list(&self, q: &ListJobs) -> anyhow::Result<(Vec<Json>, Option<i64>)> {
        match self {
            Source::Store(s) => {
                let page = q.limit.unwrap_or(100);
                let mut jobs = s.list_jobs(&ListJobs {
                    limit: Some(page + 1),
                    ..q.clone()
                })?;
                let next = if jobs.len() > page {
                    jobs.truncate(page);
                    jobs.last().map(|j| j.id)
                } else {
                    None
                };
                Ok((jobs.into_iter().map(admin::shown).collect(), next))
            }
            Source::Sidecar(c) => {
                let v = c.get(&format!(
                    "/jobs{}",
                    query(&[
                        ("status", q.status.clone()),
                        ("type", q.job_type.clone()),
                        ("limit", q.limit.map(|l| l.to_string())),
                        ("after", q.after.map(|a| a.to_string())),
                    ])
                ))?;
                let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
                Ok((jobs, v["next"].as_i64()))
            }
        }
    }

    fn show(&self, id: &str) -> anyhow::Result<Json> {
        match self {
            Source::Store(s) => match s.get_job(id)? {
                Some(j) => Ok(admin::shown(j)),
                None => bail!(
                    "{}",
                    JobChange::NotFound
                        .refusal(Op::Retry, id)
                        .unwrap_or_default()
                ),
            },
            Source::Sidecar(c) => c.get(&format!("/jobs/{}", segment(id))),
        }
    }

    fn change(&self, op: Op, id: &str) -> anyhow::Result<Json> {
        match self {
            Source::Store(s) => {
                let changed = match op {
                    Op::Retry => s.retry_job(id)?,
                    Op::Cancel => s.cancel_job(id)?,
                };
                if let Some(why) = changed.refusal(op, id) {
                    bail!("{why}");
                }
                match changed {
                    JobChange::Changed(j) => Ok(admin::shown(*j)),
                    _ => bail!("job `{id}`: nothing changed"),
                }
            }
            Source::Sidecar(c) => match op {
                Op::Retry => c.write(Method::POST, &format!("/jobs/{}/retry", segment(id))),
                Op::Cancel => c.write(Method::DELETE, &format!("/jobs/{}", segment(id))),
            },
        }
    }
}

/// `jobs list`: a page, as a table or (`json`) a JSON array.
pub fn list(q: &ListJobs, json: bool, target: &Target) -> anyhow::Result<ExitCode> {
    let (jobs, next) = Source::open(target)?.list(q)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&Json::Array(jobs))?);
    } else {
        outln!(
            "{:<28} {:<14} {:<16} {:<10} {:>8} {:>3}  ERROR",
            "JOB_ID",
            "TYPE",
            "MACHINE_TYPE",
            "STATUS",
            "ATTEMPTS",
            "PRI"
        );
        for j in &jobs {
            outln!(
                "{:<28} {:<14} {:<16} {:<10} {:>8} {:>3}  {}",
                text(&j["job_id"]),
                text(&j["job_type"]),
                text(&j["machine_type"]),
                text(&j["status"]),
                format!("{}/{}", text(&j["attempts"]), text(&j["max_attempts"])),
                text(&j["priority"]),
                j["error_message"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(next) = next {
        eprintln!("more jobs: the next page is --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `jobs show ID`.
pub fn show(id: &str, json: bool, target: &Target) -> anyhow::Result<ExitCode> {
    let job = Source::open(target)?.show(id)?;
    print_job(&job, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `jobs retry ID` and `jobs cancel ID`: the job as it is now.
pub fn change(op: Op, id: &str, json: bool, target: &Target) -> anyhow::Result<ExitCode> {
    let job = Source::open(target)?.change(op, id)?;
    print_job(&job, json)?;
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as a table cell: strings bare, `null` as `-`.
fn text(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// A job as text rows, or (`json`) as pretty JSON.
fn print_job(j: &Json, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(j)?);
        return Ok(());
    }
    let rows = [
        ("job id", text(&j["job_id"])),
        ("type", text(&j["job_type"])),
        ("machine type", text(&j["machine_type"])),
        ("status", text(&j["status"])),
        (
            "attempts",
            format!("{}/{}", text(&j["attempts"]), text(&j["max_attempts"])),
        ),
        ("priority", text(&j["priority"])),
        ("last error", text(&j["error_message"])),
        ("lease holder", text(&j["lease_owner"])),
        ("lease until", text(&j["lease_until"])),
        ("trace id", text(&j["trace_id"])),
        ("created", text(&j["created_at"])),
        ("started", text(&j["started_at"])),
        ("finished", text(&j["completed_at"])),
        ("next attempt", text(&j["next_attempt_at"])),
        ("unique key", text(&j["unique_key"])),
        ("data", text(&j["data"])),
        ("result", text(&j["result"])),
        ("metadata", text(&j["metadata"])),
    ];
    for (k, v) in rows {
        outln!("{k:<13} {v}");
    }
    Ok(())
}
