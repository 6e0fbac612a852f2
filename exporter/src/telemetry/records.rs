//! Bounded ring buffers behind `/trace` and `/errors`: the most recent records, newest
//! first; memory stays flat however long the engine runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value as Json};

/// A fixed-capacity ring: pushing onto a full ring drops the oldest record.
#[derive(Debug)]
pub struct Ring<T> {
    cap: usize,
    items: Mutex<VecDeque<T>>,
}

impl<T: Clone> Ring<T> {
    /// An empty ring that keeps at most `cap` records (0 keeps none).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            items: Mutex::new(VecDeque::with_capacity(cap.min(4096))),
        }
    }

    /// Adds a record.
    pub fn push(&self, item: T) {
        if self.cap == 0 {
            return;
        }
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == self.cap {
            q.pop_front();
        }
        q.push_back(item);
    }

    /// The records that pass `keep`, newest first, at most `limit`.
    pub fn newest(&self, limit: usize, keep: impl Fn(&T) -> bool) -> Vec<T> {
        let q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .rev()
            .filter(|t| keep(t))
            .take(limit)
            .cloned()
            .collect()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One action of a traced event.
#[derive(Debug, Clone)]
pub struct ActionRecord {
    /// Action type.
    pub kind: Arc<str>,
    /// ok, error, timeout, interrupted.
    pub outcome: &'static str,
    /// How long it ran.
    pub duration_ms: f64,
    /// The event it returned.
    pub event: Option<Arc<str>>,
    /// Captured output, truncated.
    pub output: Option<String>,
    /// Error message.
    pub error: Option<String>,
}

/// The `/trace` rings of one definition's run-time instances: one per thread that records
/// for them, merged newest first by `/trace`. One ring shared by the instances of both
/// workers cost the engine more than the rest of an instance's telemetry: its lock, and
/// the reference counts of the names every record holds (the definition's, its states'),
/// bounced between the cores at each record, and again when the record was dropped. A
/// thread's ring and its own copies of the names ([`super::slot::Recipe`]) stay in its
/// core's cache. Each ring keeps the configured number of records.
#[derive(Debug)]
pub struct ThreadRings {
    cap: usize,
    rings: Mutex<Vec<(std::thread::ThreadId, Arc<Ring<TraceRecord>>)>>,
}

impl ThreadRings {
    /// No ring yet; each will keep at most `cap` records.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            rings: Mutex::default(),
        }
    }

    /// The calling thread's ring (made at its first call; the same one after a reload).
    pub fn this_thread(&self) -> Arc<Ring<TraceRecord>> {
        let me = std::thread::current().id();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, r)) = rings.iter().find(|(t, _)| *t == me) {
            return r.clone();
        }
        let r = Arc::new(Ring::new(self.cap));
        rings.push((me, r.clone()));
        r
    }

    /// Every thread's ring.
    pub fn all(&self) -> Vec<Arc<Ring<TraceRecord>>> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.iter().map(|(_, r)| r.clone()).collect()
    }
}

/// One processed event, as `/trace` shows it.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    /// When processing began.
    pub at: SystemTime,
    /// The event name.
    pub event: Arc<str>,
    /// The machine (an instance's definition).
    pub machine: Arc<str>,
    /// The instance's name, for an instance started at run time.
    pub instance: Option<Arc<str>>,
    /// State before.
    pub from: Arc<str>,
    /// State after.
    pub to: Arc<str>,
    /// Processing time including its actions.
    pub duration_ms: f64,
    /// transitioned, ignored, rejected.
    pub outcome: &'static str,
    /// The span's trace id, when a span was recorded (or the incoming one).
    pub trace_id: Option<String>,
    /// The span id.
    pub span_id: Option<String>,
    /// The job the event is about.
    pub job_id: Option<String>,
    /// The actions it ran.
    pub actions: Vec<ActionRecord>,
}

pub use turnstile_engine::runtime::clock::coarse_now;

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl TraceRecord {
    /// The `/trace` JSON shape: `{timestamp, event, data}`.
    pub fn to_json(&self) -> Json {
        json!({
            "timestamp": timestamp(self.at),
            "event": &*self.event,
            "data": {
                "machine": &*self.machine,
                "instance": self.instance.as_deref(),
                "from": &*self.from,
                "to": &*self.to,
                "duration_ms": self.duration_ms,
                "outcome": self.outcome,
                "trace_id": self.trace_id,
                "span_id": self.span_id,
                "job_id": self.job_id,
                "actions": self.actions.iter().map(|a| json!({
                    "type": &*a.kind,
                    "outcome": a.outcome,
                    "duration_ms": a.duration_ms,
                    "event": a.event.as_deref(),
                    "output": a.output,
                    "error": a.error,
                })).collect::<Vec<_>>(),
            }
        })
    }
}

/// One error, as `/errors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRecord {
    /// When it happened (RFC 3339).
    pub timestamp: String,
    /// The error kind (`action`, `config`, ...).
    pub error_type: &'static str,
    /// What went wrong.
    pub message: String,
    /// The machine, if any (an instance's definition).
    pub machine: Option<String>,
    /// The instance's name, for an instance started at run time.
    pub instance: Option<String>,
    /// Its state at the time, if any.
    pub state: Option<String>,
    /// The event being processed, if any.
    pub event: Option<String>,
    /// The trace the error belongs to, if any.
    pub trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_and_lists_newest_first() {
        let r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.newest(10, |_| true), vec![4, 3, 2]);
        assert_eq!(r.newest(1, |_| true), vec![4]);
        assert_eq!(r.newest(10, |i| i % 2 == 0), vec![4, 2]);
        let none: Ring<u8> = Ring::new(0);
        none.push(1);
        assert!(none.is_empty());
    }
}
