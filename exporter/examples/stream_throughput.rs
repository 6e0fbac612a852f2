//! `stream_throughput`: what following the live record stream (`GET /events`) costs the
//! engine, and whether a client that follows everything gets everything.
//!
//! The ping-pong machine of `engine_throughput/external` (one transition per external
//! event, one record per transition) on a `current_thread` runtime of its own, observed by
//! a [`Telemetry`] (with `/trace` records, as `turnstile run` does without OTLP, and metrics
//! only: the quick path):
//!
//! 1. **full speed**: a producer sends as fast as the machine takes them; events/s with no
//!    stream client and with one subscriber following everything on another thread (it
//!    writes every record as the sidecar's `GET /events` does, `Subscriber::next_sse`),
//!    rounds alternating,
//!    medians; and the CPU time the machine's thread spent per event (the producer's
//!    included), which the other threads of a busy machine do not move: on a machine
//!    whose cores are all taken, the client's thread takes CPU time from the machine's, and
//!    events/s then measure that share more than the cost of publishing;
//! 2. **100,000 events/s**: the producer paced to 100 events per millisecond for 2 s; the
//!    subscriber must receive every record (no cut-off);
//! 3. **HTTP**: the same two runs with a real client of the sidecar's `GET /events` (a
//!    socket read as fast as it comes, counting records) instead of the in-process
//!    subscriber; and the CPU time of the whole process per event (the producer, the
//!    machine, the sidecar and the client): where the cores are all busy, events/s with a
//!    client can be no more than that ratio of the speed without.
//!
//! Run: `cargo run --release -p turnstile-exporter --example stream_throughput [PART...]`,
//! where a part is `metrics_records`, `metrics` (the two full-speed runs), `paced` or
//! `http`; all four without one.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef};
use turnstile_exporter::server::{serve, SidecarConfig};
use turnstile_exporter::telemetry::stream::{Encoder, Kind, Step};
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

const ROUNDS: usize = 7;
const EVENTS_PER_ROUND: u64 = 400_000;

fn load(file: &str) -> Arc<MachineDef> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(file);
    let loaded = config::load_path(&path, &ActionRegistry::with_builtins());
    match loaded.def {
        Some(def) => def,
        None => panic!("{} does not load: {:?}", path.display(), loaded.diagnostics),
    }
}

struct Rig {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    telemetry: Arc<Telemetry>,
    name: Arc<str>,
}

impl Rig {
    /// `workers`: 0 for a `current_thread` runtime, else a multi-thread one with that many
    /// workers (as `turnstile run`, where the sidecar's tasks run beside the machines).
    fn new(config: TelemetryConfig, workers: usize) -> Self {
        let rt = if workers == 0 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
        }
        .expect("runtime");
        let telemetry = Telemetry::new(config).expect("telemetry");
        let plugins = ActionRegistry::with_builtins();
        let engine = telemetry.install(Engine::builder(), &plugins);
        let def = load("pingpong_external.yaml");
        let name = def.name.clone();
        rt.block_on(async { engine.spawn(def) }).expect("spawn");
        Self {
            rt,
            engine,
            telemetry,
            name,
        }
    }

    fn transitions(&self) -> u64 {
        self.engine
            .machine(&self.name)
            .expect("machine")
            .transitions
    }

    /// Sends `n` events (`per_ms` per millisecond, or as fast as they go) and waits for
    /// them to be processed; events per second.
    fn drive(&self, n: u64, per_ms: Option<u64>) -> f64 {
        self.drive_cpu(n, per_ms).0
    }

    /// [`Self::drive`], and the CPU time this thread (the `current_thread` runtime's: the
    /// machine's and the producer's) spent per event, in ns.
    fn drive_cpu(&self, n: u64, per_ms: Option<u64>) -> (f64, f64) {
        let base = self.transitions();
        let go: Arc<str> = Arc::from("go");
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        self.rt.block_on(async {
            let mut sent = 0;
            while sent < n {
                if let Some(rate) = per_ms {
                    let due = t0 + Duration::from_micros(sent * 1000 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let burst = per_ms.unwrap_or(n).min(n - sent);
                for _ in 0..burst {
                    self.engine
                        .send(&self.name, Event::new(go.clone()))
                        .await
                        .expect("send");
                }
                sent += burst;
            }
            while self.transitions() < base + n {
                tokio::task::yield_now().await;
            }
        });
        let wall = t0.elapsed().as_secs_f64();
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        (n as f64 / wall, cpu as f64 / n as f64)
    }
}

/// A subscriber following everything on a thread of its own: records received, cut-offs.
struct Follower {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    /// The CPU time its thread spent, in ns (set when it ends).
    cpu: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl Follower {
    fn start(t: &Arc<Telemetry>) -> Self {
        let mut sub = t.stream().subscribe(None).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let cpu = Arc::new(AtomicU64::new(0));
        let (s, r, c, spent) = (stop.clone(), received.clone(), cut.clone(), cpu.clone());
        let thread = thread::spawn(move || {
            let cpu0 = thread_cpu_ns();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut bytes = 0usize;
                let mut encoder = Encoder::default();
                let mut out = String::new();
                while !s.load(Ordering::Relaxed) {
                    let before = sub.last_id();
                    let keep = |_: Kind, _: Option<&str>, _: Option<&str>| true;
                    let next = sub.next_sse(512, keep, &mut encoder, &mut out);
                    match tokio::time::timeout(Duration::from_millis(50), next).await {
                        Ok(Step::Written) => {
                            bytes += out.len();
                            out.clear();
                            r.fetch_add(sub.last_id() - before, Ordering::Relaxed);
                        }
                        Ok(Step::CutOff { .. }) => {
                            c.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(Step::Missed(_)) | Err(_) => {}
                    }
                }
                std::hint::black_box(bytes);
            });
            spent.store(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        });
        Self {
            stop,
            received,
            cut,
            cpu,
            thread,
        }
    }

    /// Records received, cut-offs, CPU ns spent.
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("follower");
        (
            self.received.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
            self.cpu.load(Ordering::Relaxed),
        )
    }
}

/// The CPU time of the calling thread so far, in ns (`/proc/thread-self/schedstat`: time
/// on a CPU, exact, whatever else the machine runs; 0 where it cannot be read).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The CPU time of every thread of this process so far, in ns (each one's
/// `/proc/self/task/*/schedstat`; threads that ended before are not counted).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn full_speed(label: &str, config: TelemetryConfig) {
    let rig = Rig::new(config, 0);
    rig.drive(EVENTS_PER_ROUND / 4, None); // warm up
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    let (mut received, mut cut, mut published, mut client_cpu) = (0, 0, 0, 0);
    for _ in 0..ROUNDS {
        let (rate, cpu) = rig.drive_cpu(EVENTS_PER_ROUND, None);
        without.push(rate);
        cpu_without.push(cpu);
        let f = Follower::start(&rig.telemetry);
        let (rate, cpu) = rig.drive_cpu(EVENTS_PER_ROUND, None);
        with.push(rate);
        cpu_with.push(cpu);
        thread::sleep(Duration::from_millis(100));
        let (r, c, ns) = f.finish();
        received += r;
        cut += c;
        client_cpu += ns;
        published += EVENTS_PER_ROUND;
    }
    let (a, b) = (median(without), median(with));
    let (ca, cb) = (median(cpu_without), median(cpu_with));
    println!(
        "{label}: full speed, events/s median of {ROUNDS}: no client {a:.0}, one client {b:.0}, ratio {:.3}; the machine's thread, CPU ns per event: no client {ca:.1}, one client {cb:.1}, ratio of the speeds {:.3}; client received {received} of {published} records ({:.1} ns of CPU each), cut off {cut} times",
        b / a,
        ca / cb,
        client_cpu as f64 / received.max(1) as f64
    );
}

fn paced(label: &str, config: TelemetryConfig) {
    let rig = Rig::new(config, 0);
    let f = Follower::start(&rig.telemetry);
    let n = 200_000;
    let rate = rig.drive(n, Some(100));
    thread::sleep(Duration::from_millis(200));
    let (received, cut, _) = f.finish();
    println!(
        "{label}: paced at {rate:.0} events/s: client received {received} of {n} records, cut off {cut} times"
    );
}

/// A real HTTP client of `GET /events` on the sidecar: counts `id:` lines until told to
/// stop; (records, highest id, whether the ids were consecutive).
fn http_client(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, u64, bool)> {
    use std::io::Write as _;
    thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = vec![0u8; 1 << 16];
        let mut carry: Vec<u8> = Vec::new();
        let (mut n, mut last, mut consecutive) = (0u64, 0u64, true);
        while !stop.load(Ordering::Relaxed) {
            let got = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(_) => continue,
            };
            carry.extend_from_slice(&buf[..got]);
            let mut start = 0;
            while let Some(i) = carry[start..].iter().position(|b| *b == b'\n') {
                let line = &carry[start..start + i];
                if let Some(id) = line.strip_prefix(b"id: ") {
                    let id: u64 = std::str::from_utf8(id)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if last != 0 && id != last + 1 {
                        consecutive = false;
                    }
                    last = id;
                    n += 1;
                }
                start += i + 1;
            }
            carry.drain(..start);
        }
        (n, last, consecutive)
    })
}

fn http(config: TelemetryConfig) {
    let rig = Rig::new(config, 2);
    let sidecar = rig
        .rt
        .block_on(serve(
            SidecarConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                ..SidecarConfig::default()
            },
            rig.engine.clone(),
            rig.telemetry.clone(),
        ))
        .expect("sidecar");
    let addr = sidecar.addr();
    let connected = |want: i64| {
        let t0 = Instant::now();
        while rig
            .telemetry
            .render_metrics(false)
            .lines()
            .all(|l| l != format!("turnstile_stream_clients {want}"))
        {
            rig.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
            assert!(t0.elapsed() < Duration::from_secs(10), "no client");
        }
    };
    // Paced: every record must arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let client = http_client(addr, stop.clone());
    connected(1);
    let n = 200_000;
    let rate = rig.drive(n, Some(100));
    rig.rt
        .block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    stop.store(true, Ordering::Relaxed);
    let (got, _, consecutive) = client.join().expect("client");
    println!("http: paced at {rate:.0} events/s: the client received {got} of {n} records, ids consecutive: {consecutive}");
    connected(0);
    // Full speed, with and without the client.
    rig.drive(EVENTS_PER_ROUND / 4, None);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let cpu0 = process_cpu_ns();
        without.push(rig.drive(EVENTS_PER_ROUND, None));
        cpu_without.push((process_cpu_ns() - cpu0) as f64 / EVENTS_PER_ROUND as f64);
        let stop = Arc::new(AtomicBool::new(false));
        let client = http_client(addr, stop.clone());
        connected(1);
        let cpu0 = process_cpu_ns();
        with.push(rig.drive(EVENTS_PER_ROUND, None));
        cpu_with.push((process_cpu_ns() - cpu0) as f64 / EVENTS_PER_ROUND as f64);
        stop.store(true, Ordering::Relaxed);
        let _ = client.join();
        connected(0);
    }
    let (a, b) = (median(without), median(with));
    let dropped = rig
        .telemetry
        .render_metrics(false)
        .lines()
        .find(|l| l.starts_with("turnstile_stream_dropped_total "))
        .map(str::to_owned)
        .unwrap_or_default();
    let (ca, cb) = (median(cpu_without), median(cpu_with));
    println!(
        "http: full speed, events/s median of {ROUNDS}: no client {a:.0}, one HTTP client {b:.0}, ratio {:.3}; the process's CPU ns per event (every thread: producer, machine, sidecar, client): no client {ca:.1}, one client {cb:.1}, ratio {:.3}; {dropped}",
        b / a,
        ca / cb
    );
    rig.rt.block_on(sidecar.shutdown());
}

fn main() {
    let records = TelemetryConfig::default;
    let metrics = || TelemetryConfig {
        trace_buffer: 0,
        ..TelemetryConfig::default()
    };
    let only: Vec<String> = std::env::args().skip(1).collect();
    let run = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if run("metrics_records") {
        full_speed("metrics_records", records());
    }
    if run("metrics") {
        full_speed("metrics", metrics());
    }
    if run("paced") {
        paced("metrics_records", records());
    }
    if run("http") {
        http(records());
    }
}
