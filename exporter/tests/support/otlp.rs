//! A minimal OTLP/HTTP trace receiver built from the official protobuf definitions
//! (`opentelemetry-proto`): it decodes `ExportTraceServiceRequest` bodies posted to
//! `/v1/traces` and keeps the spans for assertions.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct RecvSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_OK` or `STATUS_CODE_ERROR`.
    pub status: String,
    pub status_message: String,
    /// Event names with their attributes.
    pub events: Vec<(String, Vec<(String, String)>)>,
    pub resource: Vec<(String, String)>,
}

impl RecvSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub port: u16,
    spans: Arc<Mutex<Vec<RecvSpan>>>,
    /// Spans received so far (kept or not).
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// Export requests answered and the CPU time their threads spent, in nanoseconds
    /// (Linux `schedstat`; 0 elsewhere).
    load: Arc<Load>,
}

#[derive(Debug, Default)]
struct Load {
    requests: AtomicU64,
    cpu_ns: AtomicU64,
}

/// CPU time of the calling thread so far, in nanoseconds (0 where Linux' `schedstat` is
/// missing).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn any_to_string(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(f)) => f.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kvs(v: &[KeyValue]) -> Vec<(String, String)> {
    v.iter()
        .map(|kv| (kv.key.clone(), any_to_string(&kv.value)))
        .collect()
}

pub fn decode(body: &[u8]) -> Result<Vec<RecvSpan>, prost::DecodeError> {
    let req = ExportTraceServiceRequest::decode(body)?;
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| kvs(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let (status, status_message) = match &s.status {
                    Some(st) => (
                        StatusCode::try_from(st.code)
                            .map(|c| c.as_str_name().to_string())
                            .unwrap_or_else(|_| "?".into()),
                        st.message.clone(),
                    ),
                    None => ("STATUS_CODE_UNSET".into(), String::new()),
                };
                out.push(RecvSpan {
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: kvs(&s.attributes),
                    status,
                    status_message,
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), kvs(&e.attributes)))
                        .collect(),
                    resource: resource.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Spans in an `ExportTraceServiceRequest`, decoded but not copied out.
pub fn count_spans(body: &[u8]) -> Result<usize, prost::DecodeError> {
    let req = ExportTraceServiceRequest::decode(body)?;
    Ok(req
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum())
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_keeping(true)
    }

    /// A receiver that decodes every request but only counts its spans ([`Self::count`]),
    /// for long runs.
    pub fn start_counting() -> Receiver {
        Self::start_keeping(false)
    }

    fn start_keeping(keep: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let load = Arc::new(Load::default());
        let (s2, c2, l2) = (spans.clone(), count.clone(), load.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (spans, count, load) = (s2.clone(), c2.clone(), l2.clone());
                let _ = std::thread::Builder::new()
                    .name("otlp-receiver".into())
                    .spawn(move || {
                        let _ = handle(stream, &spans, &count, &load, keep);
                    });
            }
        });
        Receiver {
            port,
            spans,
            count,
            load,
        }
    }

    /// Export requests answered so far.
    pub fn requests(&self) -> u64 {
        self.load.requests.load(Ordering::Relaxed)
    }

    /// CPU time the receiver's connection threads have spent so far (reading, decoding,
    /// answering), as measured by Linux; zero elsewhere.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.load.cpu_ns.load(Ordering::Relaxed))
    }

    /// Spans received so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    pub fn spans(&self) -> Vec<RecvSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the received spans (or panics after `timeout`).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[RecvSpan]) -> bool) -> Vec<RecvSpan> {
        let t0 = Instant::now();
        loop {
            let s = self.spans();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "spans did not arrive in {timeout:?}; got {:#?}",
                s.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn handle(
    stream: TcpStream,
    spans: &Mutex<Vec<RecvSpan>>,
    count: &std::sync::atomic::AtomicUsize,
    load: &Load,
    keep: bool,
) -> std::io::Result<()> {
    let mut cpu = thread_cpu_ns();
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        let mut ctype = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let (status, resp) = if method == "POST"
            && path == "/v1/traces"
            && ctype.starts_with("application/x-protobuf")
        {
            // A counting receiver decodes the request (as a collector would) but does
            // not flatten it: the copies were most of its work, on the cores the engine
            // and the exporter under test share.
            let decoded = if keep {
                decode(&body).map(|v| {
                    let n = v.len();
                    spans.lock().unwrap().extend(v);
                    n
                })
            } else {
                count_spans(&body)
            };
            match decoded {
                Ok(n) => {
                    count.fetch_add(n, Ordering::Relaxed);
                    (
                        "200 OK",
                        ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec(),
                    )
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else {
            ("404 Not Found", Vec::new())
        };
        // One write per response: headers written piecewise (`write!` on the bare
        // stream) went out as several small segments, and Nagle's algorithm held the
        // last one until the client's delayed ACK, about 40 ms per request.
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            resp.len()
        )
        .into_bytes();
        out.extend_from_slice(&resp);
        w.write_all(&out)?;
        w.flush()?;
        let now = thread_cpu_ns();
        load.cpu_ns
            .fetch_add(now.saturating_sub(cpu), Ordering::Relaxed);
        load.requests.fetch_add(1, Ordering::Relaxed);
        cpu = now;
    }
}
