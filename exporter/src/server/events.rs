//! `GET /events?machine=&kind=`: the live record stream
//! ([`crate::telemetry::stream`]) as server-sent events.
//!
//! Each record is one SSE message: `id:` the record's id, `data:` its JSON (one line).
//! A `Last-Event-ID` header resumes after that id from the stream's ring; when records
//! went in between, a message without an id comes first, `{"kind": "missed", "missed": N}`
//! (`N` null when the id is not one this process gave: it restarted). A comment
//! (`: heartbeat`) is sent every [`HEARTBEAT`] so proxies and clients see the connection
//! alive. A client that falls behind by more than the ring holds gets
//! `{"kind": "cut_off", "missed": N}` and the stream ends (counted in
//! `turnstile_stream_dropped_total`); it may reconnect with `Last-Event-ID`. One whose
//! connection takes nothing at all is cut off as soon as the ring passes it (without the
//! note, which it would not read).
//!
//! Its own file because the answer is not a whole body: each client has a task that reads
//! its [`Subscriber`] and hands SSE chunks to the connection through a small channel
//! (the response's [`EventBody`]); when the client goes, the body is dropped and the task ends.
//! The clients' tasks run on a thread of their own (see [`followers`]). A client
//! that reads nothing for the sidecar's write timeout is closed like any connection. The
//! connection is marked as streaming, so the connection budget never sheds it (see
//! `conn.rs`); the stream's own limit ([`crate::telemetry::stream::MAX_CLIENTS`]) bounds
//! them, with a 503 beyond it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::conn::Progress;
use super::request::{self, cut};
use super::response::{ApiError, Body, EventBody};
use super::state::State;
use crate::telemetry::records;
use crate::telemetry::stream::{Encoder, Kind, Step, Subscriber, TooManyClients};

/// How often a quiet stream sends a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Records taken from the ring at once (one chunk written to the client: at full speed,
/// one write to the socket per 2,048 records, about 300 KB).
const BATCH: usize = 2048;
/// Chunks waiting for the connection to write them, per client.
const CHUNKS: usize = 4;
/// How often a client whose connection takes nothing is checked for falling behind.
const LAG_CHECK: Duration = Duration::from_millis(100);

/// What a request knows of its connection (a request extension set by the server).
#[derive(Clone)]
pub(super) struct ConnInfo {
    /// The connection's progress, marked while it streams.
    pub(super) progress: Arc<Progress>,
    /// Set when the sidecar stops: the stream ends.
    pub(super) stop: watch::Receiver<bool>,
}

/// The filters of a stream request.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filter {
    machine: Option<String>,
    /// `None`: every kind.
    kinds: Option<Vec<Kind>>,
}

impl Filter {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut f = Filter::default();
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in request::parse_query(query)? {
            if seen.contains(&k) {
                return Err(format!("parameter `{}` is given twice", cut(&k, 40)));
            }
            match k.as_str() {
                "machine" => f.machine = Some(v),
                "kind" => {
                    let mut kinds = Vec::new();
                    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let kind = Kind::parse(name).ok_or_else(|| {
                            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                            format!(
                                "unknown record kind `{}` (one of {}; several separated by commas)",
                                cut(name, 40),
                                all.join(", ")
                            )
                        })?;
                        kinds.push(kind);
                    }
                    f.kinds = Some(kinds);
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{}` (expected machine or kind)",
                        cut(other, 40)
                    ))
                }
            }
            seen.push(k);
        }
        Ok(f)
    }

    /// Whether a record of `kind` about `machine` (for an instance started at run time:
    /// its definition) and `instance` is wanted: the filter's `machine` names a machine
    /// the process was started with, a definition (all its instances) or one instance.
    fn wants(&self, kind: Kind, machine: Option<&str>, instance: Option<&str>) -> bool {
        self.machine
            .as_deref()
            .is_none_or(|m| machine == Some(m) || instance == Some(m))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

/// The `Last-Event-ID` header: a record id.
fn last_event_id(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    let Some(v) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("").trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "Last-Event-ID must be a record id (a whole number), not `{}`",
            cut(s, 40)
        ))
    })
}

/// `GET /events`.
pub(super) fn events(state: &State, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let filter = Filter::parse(req.uri().query()).map_err(ApiError::bad_request)?;
    let after = last_event_id(req)?;
    let mut r = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        Bytes::new(),
    )));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if req.method() == Method::HEAD {
        return Ok(r);
    }
    let sub = state.telemetry.stream().subscribe(after).map_err(|TooManyClients(n)| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{n} clients follow the stream already (the most served at once); try again later"),
        )
        .header(RETRY_AFTER, "5")
    })?;
    let info = req.extensions().get::<ConnInfo>().cloned();
    let (tx, rx) = mpsc::channel(CHUNKS);
    let task = follow(sub, filter, tx, info);
    match followers() {
        Some(h) => drop(h.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
    *r.body_mut() = http_body_util::Either::Right(EventBody::new(rx));
    Ok(r)
}

/// The followers' own thread and runtime, made at the first client (`None` if the thread
/// cannot be made: they then run on the caller's runtime). On the runtime of the machines a
/// follower woken by a busy machine's record waited behind that machine: tokio runs a task
/// woken from a worker on that same worker next (no other worker may take it), while the
/// other worker idled. At the engine's full speed the follower then fell more than the
/// ring behind and was cut off (BENCHMARKS.md, the live record stream). On a thread of its
/// own the kernel shares the cores between it and the machines. The connection's task stays
/// on the sidecar's runtime; the chunks cross through the body's channel.
fn followers() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok()?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name("turnstile-events".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Unmarks the connection when the stream ends.
struct Streaming(Option<Arc<Progress>>);

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            p.set_streaming(false);
        }
    }
}

/// One client's task: records from its subscriber, as SSE chunks, until the client goes,
/// it is cut off or the sidecar stops.
async fn follow(
    mut sub: Subscriber,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
    info: Option<ConnInfo>,
) {
    let _streaming = Streaming(info.as_ref().map(|i| {
        i.progress.set_streaming(true);
        i.progress.clone()
    }));
    let mut stop = info.map(|i| i.stop);
    if tx
        .send(Bytes::from_static(b"retry: 2000\n: turnstile events\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let mut encoder = Encoder::default();
    let mut out = String::new();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        let stopping = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        let keep = |kind: Kind, machine: Option<&str>, instance: Option<&str>| {
            filter.wants(kind, machine, instance)
        };
        let (chunk, last) = tokio::select! {
            step = sub.next_sse(BATCH, keep, &mut encoder, &mut out) => match step {
                Step::Written => {
                    if out.is_empty() {
                        continue;
                    }
                    // The chunk is `out` itself (not a copy of it); the next batch is
                    // written into a buffer of the same room.
                    let room = out.capacity();
                    let chunk = Bytes::from(std::mem::replace(&mut out, String::with_capacity(room)));
                    (chunk, false)
                }
                Step::Missed(n) => {
                    let note = json!({"kind": "missed", "missed": n, "time": records::timestamp(records::coarse_now())});
                    (Bytes::from(format!("data: {note}\n\n")), false)
                }
                Step::CutOff { missed } => {
                    let note = json!({
                        "kind": "cut_off",
                        "missed": missed,
                        "after": sub.last_id(),
                        "time": records::timestamp(records::coarse_now()),
                    });
                    (Bytes::from(format!("data: {note}\n\n")), true)
                }
            },
            _ = heartbeat.tick() => (Bytes::from_static(b": heartbeat\n\n"), false),
            () = stopping => break,
            () = tx.closed() => break,
        };
        heartbeat.reset();
        // While the connection has not taken the chunk, the ring goes on: a client that
        // falls behind it is cut off now (nothing more is built for it), not when its
        // connection's write timeout ends it.
        let send = tx.send(chunk);
        tokio::pin!(send);
        let mut check = tokio::time::interval(LAG_CHECK);
        let sent = loop {
            tokio::select! {
                r = &mut send => break r.is_ok(),
                _ = check.tick() => if sub.cut_off_if_behind().is_some() {
                    break false;
                },
            }
        };
        if !sent || last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_are_checked() {
        let f = Filter::parse(Some("machine=a%20b&kind=transition,error")).unwrap();
        assert_eq!(f.machine.as_deref(), Some("a b"));
        assert_eq!(f.kinds, Some(vec![Kind::Transition, Kind::Error]));
        assert_eq!(Filter::parse(None).unwrap(), Filter::default());
        for (bad, says) in [
            ("kind=nope", "unknown record kind"),
            ("limit=3", "unknown parameter"),
            ("machine=a&machine=b", "twice"),
        ] {
            let e = Filter::parse(Some(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
