//! `turnstile tail [--machine M] [--kind K] [--url URL] [--json]`: follows a running
//! sidecar's `GET /events` in the terminal, one line per record.
//!
//! Lines are colored when standard output is a terminal (and `NO_COLOR` is not set), plain
//! otherwise; `--json` prints each record's JSON as it comes, one per line. When the
//! connection drops (the process restarts, the network fails, the client was cut off for
//! falling behind) it reconnects with a growing pause (up to [`MAX_BACKOFF`]) and
//! `Last-Event-ID`, so nothing the sidecar still holds is lost; a gap is printed as a
//! `missed` line. Reads need no token (`GET`); the sidecar is reached over plain `http://`
//! only (as `jobs --url`), without basic auth.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use serde_json::Value as Json;
use turnstile_exporter::telemetry::stream::Kind;

use crate::sidecar_client::{query, Sidecar};

/// The longest pause between two reconnections.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A stream that sends nothing (not even its heartbeat) for this long is reconnected.
const SILENCE: Duration = Duration::from_secs(45);

/// `tail` arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only records of this machine (a definition: all its instances; or one instance).
    #[arg(long)]
    pub machine: Option<String>,
    /// Only records of these kinds: transition, action, error, job, control, breakpoint
    /// (comma-separated, or repeated).
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    pub kind: Vec<String>,
    /// The sidecar (`http://HOST:PORT`).
    #[arg(long, env = "TURNSTILE_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Print each record's JSON, one per line, for other programs.
    #[arg(long)]
    pub json: bool,
}

fn parse_kind(s: &str) -> Result<String, String> {
    match Kind::parse(s.trim()) {
        Some(k) => Ok(k.as_str().to_owned()),
        None => {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            Err(format!("unknown kind `{s}` (one of {})", all.join(", ")))
        }
    }
}

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Json,
    Plain,
    Color,
}

/// Why a connection ended.
enum End {
    /// Reconnect (after a pause); `said` is printed to stderr first.
    Retry(String),
    /// Standard output is gone (a closed pipe): stop quietly.
    OutputClosed,
}

/// `turnstile tail`.
pub fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let sidecar = Sidecar::new(&args.url, None)?;
    let style = if args.json {
        Style::Json
    } else if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        Style::Color
    } else {
        Style::Plain
    };
    let kinds = (!args.kind.is_empty()).then(|| args.kind.join(","));
    let path = format!(
        "/events{}",
        query(&[("machine", args.machine.clone()), ("kind", kinds)])
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP client's runtime")?;
    rt.block_on(follow(&sidecar, &path, style))
}

async fn follow(sidecar: &Sidecar, path: &str, style: Style) -> anyhow::Result<ExitCode> {
    let mut last_id: Option<u64> = None;
    let first = Duration::from_millis(250);
    let mut backoff = first;
    let mut ever = false;
    loop {
        let mut now = false;
        let end = connection(sidecar, path, style, &mut last_id, ever, &mut now).await?;
        if now {
            // A connection that worked starts the pauses over.
            backoff = first;
            ever = true;
        }
        match end {
            End::OutputClosed => return Ok(ExitCode::SUCCESS),
            End::Retry(why) => {
                eprintln!(
                    "turnstile tail: {why}; reconnecting in {:.1} s",
                    backoff.as_secs_f64()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection: its records printed until it ends. A refusal that will not change by
/// retrying (a bad filter, a missing endpoint) is an error.
async fn connection(
    sidecar: &Sidecar,
    path: &str,
    style: Style,
    last_id: &mut Option<u64>,
    ever: bool,
    connected: &mut bool,
) -> anyhow::Result<End> {
    let headers: Vec<(&'static str, String)> = last_id
        .map(|id| ("last-event-id", id.to_string()))
        .into_iter()
        .collect();
    let (resp, driver) = match sidecar.open(path, &headers).await {
        Ok(x) => x,
        Err(e) => {
            if !ever {
                // The first connection fails: say where it tried.
                return Ok(End::Retry(format!(
                    "cannot reach the sidecar at {}: {e}",
                    sidecar.shown()
                )));
            }
            return Ok(End::Retry(format!("connection lost ({e})")));
        }
    };
    let _driver = AbortOnDrop(driver);
    let status = resp.status();
    if status != StatusCode::OK {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<Json>(&body)
            .ok()
            .and_then(|j| j["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        if status == StatusCode::SERVICE_UNAVAILABLE || status.is_server_error() {
            return Ok(End::Retry(format!("the sidecar refused: {message}")));
        }
        return Err(anyhow!(
            "{}{path}: {message} ({})",
            sidecar.shown().trim_end_matches('/'),
            status.as_u16()
        ));
    }
    if ever {
        eprintln!("turnstile tail: reconnected");
    }
    *connected = true;
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
            Err(_) => {
                return Ok(End::Retry(format!(
                    "nothing from the sidecar for {} s",
                    SILENCE.as_secs()
                )))
            }
            Ok(None) => return Ok(End::Retry("the sidecar ended the stream".into())),
            Ok(Some(Err(e))) => return Ok(End::Retry(format!("connection lost ({e})"))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut out = stdout.lock();
        while let Some(end) = find_blank_line(&buf) {
            let message: Vec<u8> = buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&message[..end.0]);
            let (id, data) = parse_message(&text);
            if let Some(id) = id {
                *last_id = Some(id);
            }
            let Some(data) = data else { continue };
            let line = match style {
                Style::Json => data.clone(),
                _ => match serde_json::from_str::<Json>(&data) {
                    Ok(record) => render(&record, style == Style::Color),
                    Err(_) => data.clone(),
                },
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(End::OutputClosed);
            }
        }
        if out.flush().is_err() {
            return Ok(End::OutputClosed);
        }
    }
}

/// Aborts the connection's task when the connection is done with.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The end of the first message in `buf`: (where its text ends, where the next begins).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An SSE message's `id:` and `data:` (lines joined); comments and other fields ignored.
fn parse_message(text: &str) -> (Option<u64>, Option<String>) {
    let mut id = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.trim().parse().ok(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    (id, data)
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

fn s<'a>(r: &'a Json, key: &str) -> &'a str {
    r.get(key).and_then(Json::as_str).unwrap_or("")
}

/// The `HH:MM:SS.mmm` of an RFC 3339 time.
fn clock(time: &str) -> &str {
    time.split_once('T')
        .map_or(time, |(_, t)| t.trim_end_matches('Z'))
}

/// The members of a record other than these, as `key=value`.
fn rest(r: &Json, skip: &[&str]) -> String {
    let Some(o) = r.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = o
        .iter()
        .filter(|(k, _)| !["id", "time", "kind", "machine", "instance"].contains(&k.as_str()))
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| match v {
            Json::String(s) => format!("{k}={s}"),
            v => format!("{k}={v}"),
        })
        .collect();
    parts.join(" ")
}

/// One readable line for a record.
fn render(r: &Json, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let kind = s(r, "kind");
    let time = paint(DIM, clock(s(r, "time")));
    // An instance started at run time by its own name (its definition's is `machine`).
    let machine = r
        .get("instance")
        .and_then(Json::as_str)
        .or_else(|| r.get("machine").and_then(Json::as_str))
        .unwrap_or("-");
    let (label, what) = match kind {
        "transition" => {
            let mut what = format!("{} -> {}  on {}", s(r, "from"), s(r, "to"), s(r, "event"));
            if let Some(j) = r.get("job_id").and_then(Json::as_str) {
                what.push_str(&format!("  job={j}"));
            }
            if let Some(p) = r.get("payload") {
                what.push_str(&format!("  {p}"));
            }
            (paint(GREEN, "transition"), what)
        }
        "action" => {
            let outcome = s(r, "outcome");
            let ms = r.get("duration_ms").and_then(Json::as_f64).unwrap_or(0.0);
            let mut what = format!(
                "{} #{} in {}: {}  {ms:.1} ms",
                s(r, "action"),
                r.get("index").and_then(Json::as_u64).unwrap_or(0),
                s(r, "state"),
                if outcome == "ok" {
                    outcome.to_owned()
                } else {
                    paint(RED, outcome)
                },
            );
            if let Some(e) = r.get("event").and_then(Json::as_str) {
                what.push_str(&format!("  -> {e}"));
            }
            if let Some(e) = r.get("error").and_then(Json::as_str) {
                what.push_str(&format!("  {}", paint(RED, e)));
            }
            (paint(CYAN, "action"), what)
        }
        "error" => (
            paint(RED, "error"),
            format!("{}: {}", s(r, "error_type"), s(r, "message")),
        ),
        "job" => (
            paint(YELLOW, "job"),
            format!(
                "{} {}  {}",
                s(r, "change"),
                s(r, "job_id"),
                rest(r, &["change", "job_id"])
            ),
        ),
        "missed" => {
            let said = match r.get("missed").and_then(Json::as_u64) {
                Some(n) => format!("-- {n} records missed (no longer held by the sidecar)"),
                None => "-- the sidecar restarted: records before this are unknown".to_owned(),
            };
            return format!("{time} {}", paint(BOLD, &said));
        }
        "cut_off" => {
            return format!(
                "{time} {}",
                paint(
                    BOLD,
                    &format!(
                        "-- cut off: this client fell {} records behind",
                        r.get("missed").and_then(Json::as_u64).unwrap_or(0)
                    )
                )
            );
        }
        "control" => (paint(MAGENTA, "control"), rest(r, &[])),
        "breakpoint" => (
            paint(&format!("{BOLD}{MAGENTA}"), "breakpoint"),
            rest(r, &[]),
        ),
        other => (other.to_owned(), rest(r, &[])),
    };
    let machine = paint(BOLD, machine);
    format!("{time} {machine} {label} {what}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_split_and_parsed() {
        let buf = b"retry: 2000\n: hi\n\nid: 7\ndata: {\"a\":1}\n\nid: 8";
        let (text_end, next) = find_blank_line(buf).unwrap();
        assert_eq!(
            parse_message(std::str::from_utf8(&buf[..text_end]).unwrap()),
            (None, None)
        );
        let rest = &buf[next..];
        let (t, _) = find_blank_line(rest).unwrap();
        assert_eq!(
            parse_message(std::str::from_utf8(&rest[..t]).unwrap()),
            (Some(7), Some("{\"a\":1}".into()))
        );
        assert!(find_blank_line(b"id: 8").is_none());
    }

    #[test]
    fn records_read_as_lines() {
        let r = json!({"id": 1, "time": "2026-12-05T07:33:54.011Z", "kind": "transition",
            "machine": "m", "event": "go", "from": "a", "to": "b", "payload": {"password": "[redacted]"}});
        assert_eq!(
            render(&r, false),
            "07:33:54.011 m transition a -> b  on go  {\"password\":\"[redacted]\"}"
        );
        assert!(render(&r, true).contains("\x1b[32mtransition\x1b[0m"));
        let r = json!({"time": "2026-12-05T07:33:54.011Z", "kind": "missed", "missed": 3});
        assert_eq!(
            render(&r, false),
            "07:33:54.011 -- 3 records missed (no longer held by the sidecar)"
        );
        let r = json!({"id": 2, "time": "t", "kind": "control", "machine": "m", "instance": null,
            "action": "pause"});
        assert_eq!(render(&r, false), "t m control action=pause");
        let r = json!({"id": 3, "time": "t", "kind": "control", "machine": "m", "instance": "m-7",
            "action": "pause"});
        assert_eq!(render(&r, false), "t m-7 control action=pause");
        assert!(parse_kind("nope").is_err());
        assert_eq!(parse_kind("job").unwrap(), "job");
    }
}
