//! A minimal OTLP/HTTP trace receiver built from the official protobuf definitions
//! (`opentelemetry-proto`): it decodes `ExportTraceServiceRequest` bodies posted to
//! `/v1/traces` and keeps the spans for assertions.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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
        let (s2, c2) = (spans.clone(), count.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (spans, count) = (s2.clone(), c2.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &spans, &count, keep);
                });
            }
        });
        Receiver { port, spans, count }
    }

    /// Spans received so far.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
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
    keep: bool,
) -> std::io::Result<()> {
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
            match decode(&body) {
                Ok(v) => {
                    count.fetch_add(v.len(), std::sync::atomic::Ordering::Relaxed);
                    if keep {
                        spans.lock().unwrap().extend(v);
                    }
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
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            resp.len()
        )?;
        w.write_all(&resp)?;
        w.flush()?;
    }
}
