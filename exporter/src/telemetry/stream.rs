//! The live record stream behind `GET /events`: transitions, action results, errors, job
//! changes, control actions and breakpoint hits, one [`Record`] each, with increasing ids.
//!
//! Its own file because it is both sides of a queue: the observer calls (on the machines'
//! tasks) publish, the sidecar's stream clients read. A machine never waits for a client:
//!
//! - **No client**: a publisher's whole cost is one relaxed atomic load
//!   ([`Stream::active`]); no record is built.
//! - **Clients**: records go into one bounded ring ([`RING_CAPACITY`] records; the oldest
//!   goes when it is full), each with the next id. Publishing is a short lock; clients
//!   copy what they have not seen yet out of the ring at their own pace, each with its own
//!   cursor ([`Subscriber`]), and turn it into JSON on their own task.
//! - **Lanes**: on the metrics-only path a busy machine's transitions go first into a
//!   buffer of its own (`stream_lane.rs`, at most [`LANES`] machines at once), written
//!   without a lock; whoever takes the ring's lock next (a reader looking, a record put
//!   directly, the machine when its lane is full) moves them to the ring, where they get
//!   their ids. A machine's records keep its order; across machines, ids follow the order
//!   records reach the ring.
//! - **What a publish costs the machine**: the ring's slots are written in place once it
//!   is full (no allocation or free per record), and a transition, the record a busy
//!   machine publishes most, is written as three indexes into its machine's [`Names`]
//!   (the slot keeps the `Arc` of the last machine that wrote it, so a machine writing
//!   over its own records touches no reference count). The names are looked up, and the
//!   record built and turned into JSON, by the reader, on its own thread; the sidecar's
//!   reader ([`Subscriber::next_sse`]) writes a transition's server-sent event straight
//!   from its copy of the slot, with its machine's names kept as JSON strings, without
//!   building a [`Record`].
//! - **A client that falls behind** by more than the ring holds finds its next record gone:
//!   it is cut off ([`Batch::CutOff`]) and counted in `turnstile_stream_dropped_total`.
//! - **Resuming**: a subscriber may start after an id it saw before (`Last-Event-ID`); the
//!   ring serves what it still holds, and a [`Batch::Missed`] first says how many records
//!   went in between.
//!
//! Values of sensitive fields (the process's redactor, `turnstile_engine::redact`) are
//! shown as `"[redacted]"` in the records' JSON.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Map, Value as Json};
use tokio::sync::Notify;

use super::records;
use super::stream_lane::{Lane, Line, Writer};

/// Records the ring holds: how far a client may fall behind before it is cut off, and how
/// far back `Last-Event-ID` resumes.
pub const RING_CAPACITY: usize = 65_536;
/// Stream clients served at once (more are refused).
pub const MAX_CLIENTS: usize = 64;
/// How long a subscriber that has just been given records waits before it looks again
/// (instead of asking to be woken by the next record).
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);
/// How long a subscriber waiting for a record waits at most before it looks again (see
/// [`Subscriber::next`]'s wait).
const BACKSTOP: std::time::Duration = std::time::Duration::from_millis(20);

/// What a record reports (its `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A machine changed state.
    Transition,
    /// An action ended.
    Action,
    /// An error (as `/errors` records it).
    Error,
    /// A job was claimed, completed, failed, retried or cancelled.
    Job,
    /// An operator acted on a machine (pause, resume, step, stop, restart, context patch).
    Control,
    /// A machine reached a breakpoint.
    Breakpoint,
}

impl Kind {
    /// Every kind, in the order docs/operations.md lists them.
    pub const ALL: [Kind; 6] = [
        Kind::Transition,
        Kind::Action,
        Kind::Error,
        Kind::Job,
        Kind::Control,
        Kind::Breakpoint,
    ];

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transition => "transition",
            Kind::Action => "action",
            Kind::Error => "error",
            Kind::Job => "job",
            Kind::Control => "control",
            Kind::Breakpoint => "breakpoint",
        }
    }

    /// The kind of this name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a record says beyond `id`, `time`, `kind` and `machine`.
#[derive(Debug, Clone)]
pub enum Fields {
    /// `event`, `from`, `to` and, when the report carried them, the event's `payload`
    /// (redacted when shown) and `job_id`.
    Transition {
        /// The event's name.
        event: Arc<str>,
        /// The state left.
        from: Arc<str>,
        /// The state entered.
        to: Arc<str>,
        /// The event's payload.
        payload: Option<Arc<Json>>,
        /// The job the event belongs to.
        job_id: Option<String>,
    },
    /// Any other kind: its fields as JSON (redacted when shown), shared by the readers.
    Json(Arc<Map<String, Json>>),
}

/// One record of the stream.
#[derive(Debug)]
pub struct Record {
    /// Increasing, from 1, for the process's lifetime.
    pub id: u64,
    /// When it was published.
    pub time: SystemTime,
    /// What it reports.
    pub kind: Kind,
    /// The machine it is about, if any (an instance's definition).
    pub machine: Option<Arc<str>>,
    /// The instance's name, for an instance started at run time.
    pub instance: Option<Arc<str>>,
    /// The rest.
    pub fields: Fields,
}

impl Record {
    /// The record of a ring slot that is not an indexed transition.
    fn other(id: u64, time: SystemTime, kind: Kind, (machine, instance, fields): &Other) -> Self {
        Self {
            id,
            time,
            kind,
            machine: machine.clone(),
            instance: instance.clone(),
            fields: fields.clone(),
        }
    }

    /// The record as JSON, one line: `{id, time, kind, machine, instance, ...}`; sensitive
    /// fields redacted.
    pub fn to_json(&self) -> Json {
        let redactor = turnstile_engine::redact::global();
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("time".into(), json!(records::timestamp(self.time)));
        o.insert("kind".into(), json!(self.kind.as_str()));
        o.insert("machine".into(), json!(self.machine.as_deref()));
        o.insert("instance".into(), json!(self.instance.as_deref()));
        match &self.fields {
            Fields::Transition {
                event,
                from,
                to,
                payload,
                job_id,
            } => {
                o.insert("event".into(), json!(&**event));
                o.insert("from".into(), json!(&**from));
                o.insert("to".into(), json!(&**to));
                if let Some(p) = payload {
                    o.insert("payload".into(), redactor.redact_json(p).into_owned());
                }
                if let Some(j) = job_id {
                    o.insert("job_id".into(), json!(j));
                }
            }
            Fields::Json(m) => {
                for (k, v) in redactor.redact_map(m).iter() {
                    if !o.contains_key(k) {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Json::Object(o)
    }
}

/// Writes records as [`Record::to_json`] shows them, one line each, without building a
/// JSON value for the commonest kind (transitions) and formatting each millisecond's
/// timestamp once: the sidecar turns every record into text for every client.
pub struct Encoder {
    redactor: Arc<turnstile_engine::redact::Redactor>,
    time: Option<(SystemTime, String)>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            redactor: turnstile_engine::redact::global(),
            time: None,
        }
    }
}

/// A number's decimal digits, on the stack, without the formatting machinery: a record's
/// id is written twice per record (`id:` line and JSON) for each client, formatted once.
struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self { buf, start: i }
    }

    fn as_str(&self) -> &str {
        // Always ASCII digits; never the fallback.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

/// `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

impl Encoder {
    /// Appends `r`'s JSON (no newline) to `out`.
    pub fn write(&mut self, r: &Record, out: &mut String) {
        let Fields::Transition {
            event,
            from,
            to,
            payload,
            job_id,
        } = &r.fields
        else {
            let _ = write!(out, "{}", r.to_json());
            return;
        };
        self.transition_head(&Decimal::new(r.id), r.time, out);
        for (key, value) in [("", &r.machine), (",\"instance\":", &r.instance)] {
            out.push_str(key);
            match value {
                Some(v) => push_json_str(out, v),
                None => out.push_str("null"),
            }
        }
        for (key, value) in [
            (",\"event\":", event),
            (",\"from\":", from),
            (",\"to\":", to),
        ] {
            out.push_str(key);
            push_json_str(out, value);
        }
        self.transition_tail(payload.as_ref(), job_id.as_deref(), out);
    }

    /// Appends `r` as one server-sent event: its `id:` line, a `data:` line of its JSON
    /// and the blank line that ends the message.
    pub fn write_sse(&mut self, r: &Record, out: &mut String) {
        sse_head(&Decimal::new(r.id), out);
        self.write(r, out);
        out.push_str("\n\n");
    }

    /// A transition's JSON up to its machine's value: `{"id":..,"time":"..",
    /// "kind":"transition","machine":`.
    fn transition_head(&mut self, id: &Decimal, time: SystemTime, out: &mut String) {
        let time = match &self.time {
            Some((t, s)) if *t == time => s,
            _ => {
                let s = records::timestamp(time);
                &self.time.insert((time, s)).1
            }
        };
        out.push_str("{\"id\":");
        out.push_str(id.as_str());
        out.push_str(",\"time\":\"");
        out.push_str(time);
        out.push_str("\",\"kind\":\"transition\",\"machine\":");
    }

    /// A transition's JSON after its `to`: the payload (redacted), the job id, the `}`.
    fn transition_tail(&self, payload: Option<&Arc<Json>>, job_id: Option<&str>, out: &mut String) {
        if let Some(p) = payload {
            out.push_str(",\"payload\":");
            let _ = write!(out, "{}", self.redactor.redact_json(p));
        }
        if let Some(j) = job_id {
            out.push_str(",\"job_id\":");
            push_json_str(out, j);
        }
        out.push('}');
    }
}

/// A slot's time (Unix milliseconds) as the record's: what [`records::coarse_now`] gives.
fn at(unix_ms: u64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms)
}

/// A server-sent event's start: `id: N\ndata: `.
fn sse_head(id: &Decimal, out: &mut String) {
    out.push_str("id: ");
    out.push_str(id.as_str());
    out.push_str("\ndata: ");
}

/// A machine's name (its definition's, and its own for an instance started at run time)
/// and the names of its definition's states and events: its transitions are published by
/// index into these.
#[derive(Debug)]
pub struct Names {
    machine: Arc<str>,
    instance: Option<Arc<str>>,
    /// Shared by the names of a definition's instances.
    states: Arc<[Arc<str>]>,
    events: Arc<[Arc<str>]>,
}

impl Names {
    /// The names of `def`, for the instance `instance` of it (`None`: a machine the
    /// process was started with).
    pub fn new(def: &turnstile_engine::MachineDef, instance: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(Self {
            machine: def.name.clone(),
            instance,
            states: def.states.iter().map(|s| s.name.clone()).collect(),
            events: def.events.iter().cloned().collect(),
        })
    }

    /// A transition's fields by the indexes of its states and event here; an index that
    /// names nothing here is named `""`.
    fn transition(
        &self,
        [from, to, event]: [usize; 3],
        payload: Option<Arc<Json>>,
        job_id: Option<String>,
    ) -> Fields {
        let name = |v: &[Arc<str>], i: usize| v.get(i).cloned().unwrap_or_else(|| Arc::from(""));
        Fields::Transition {
            event: name(&self.events, event),
            from: name(&self.states, from),
            to: name(&self.states, to),
            payload,
            job_id,
        }
    }

    /// The definition's state names, by index.
    pub fn states(&self) -> &[Arc<str>] {
        &self.states
    }

    /// These names for the instance `instance` (the state and event names shared).
    pub fn for_instance(&self, instance: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            machine: self.machine.clone(),
            instance: Some(instance),
            states: self.states.clone(),
            events: self.events.clone(),
        })
    }

    /// A copy with names of its own.
    fn copy(&self) -> Arc<Self> {
        let own = |s: &Arc<str>| Arc::<str>::from(&**s);
        Arc::new(Self {
            machine: own(&self.machine),
            instance: self.instance.as_ref().map(own),
            states: self.states.iter().map(own).collect(),
            events: self.events.iter().map(own).collect(),
        })
    }

    /// The three indexes as the ring keeps them, when each names something here (and
    /// fits in 16 bits: a transition of a larger definition is kept with its names).
    fn indexes(&self, from: usize, to: usize, event: usize) -> Option<[u16; 3]> {
        let fits = |i: usize, n: usize| u16::try_from(i).ok().filter(|_| i < n);
        Some([
            fits(from, self.states.len())?,
            fits(to, self.states.len())?,
            fits(event, self.events.len())?,
        ])
    }
}

/// A transition's payload and job id, when it has either (rare at full speed).
type Extra = (Option<Arc<Json>>, Option<String>);

/// What a slot holds beyond its time.
enum Body {
    /// A transition by indexes (`from`, `to`, `event`) into the slot's [`Names`].
    Indexed([u16; 3], Option<Arc<Extra>>),
    /// Any other record: its kind, and its machine, instance and fields (shared with the
    /// readers that copy it).
    Other(Kind, Arc<Other>),
}

/// A record that is not an indexed transition: its machine and instance (as in
/// [`Record`]) and its fields.
type Other = (Option<Arc<str>>, Option<Arc<str>>, Fields);

/// One place in the ring, written over when the ring is full: 32 bytes, two to a cache
/// line (the publisher writes a line the ring last touched 65,536 records ago). Its
/// record's id is where it is.
struct Slot {
    /// When it was published, in Unix milliseconds (the coarse clock's).
    time: u64,
    /// The names of the last machine that published an indexed transition here (kept
    /// while the same machine writes over its own records).
    names: Option<Arc<Names>>,
    body: Body,
}

/// A slot as a reader copies it under the lock (reference counts only for what is
/// rare): made into a [`Record`] after.
#[derive(Debug)]
enum Copied {
    Indexed(u64, u64, [u16; 3], usize, Option<Arc<Extra>>),
    Other(u64, u64, Kind, Arc<Other>),
}

struct Ring {
    /// Record `id` is at `(id - 1) % capacity`; grows to the capacity, then written over.
    slots: Vec<Slot>,
    /// The id the next record gets.
    next_id: u64,
    /// Once the ring is full, where the next record goes (`(next_id - 1) % capacity`,
    /// kept as it goes round instead of divided for each record).
    head: usize,
    /// The machines' lanes (`stream_lane.rs`), in the order they were made; their records
    /// are moved here (and given ids) before anything else is put or read. At most
    /// [`LANES`].
    lanes: Vec<Arc<LaneOf>>,
}

/// A machine's lane and the names its transitions are indexes into.
struct LaneOf {
    lane: Lane,
    names: Arc<Names>,
}

/// Machines that publish through a lane of their own at once (each 256 KB, made when the
/// machine first publishes while someone follows the stream, kept while its feed lives);
/// the others take the ring's lock for each record.
const LANES: usize = 8;

impl Ring {
    /// Writes a record: into the next slot while the ring grows, else over the oldest
    /// one. Gives back what the slot held, to be dropped outside the lock.
    fn put(
        &mut self,
        capacity: usize,
        time: u64,
        names: Option<&Arc<Names>>,
        body: Body,
    ) -> Option<(Body, Option<Arc<Names>>)> {
        self.next_id += 1;
        if self.slots.len() < capacity {
            if self.slots.capacity() == 0 {
                self.slots.reserve_exact(capacity);
            }
            self.slots.push(Slot {
                time,
                names: names.cloned(),
                body,
            });
            return None;
        }
        let i = self.head;
        self.head = if i + 1 == capacity { 0 } else { i + 1 };
        let slot = &mut self.slots[i];
        slot.time = time;
        let names = match names {
            Some(n) if !slot.names.as_ref().is_some_and(|o| Arc::ptr_eq(o, n)) => {
                slot.names.replace(n.clone())
            }
            _ => None,
        };
        Some((std::mem::replace(&mut slot.body, body), names))
    }

    /// Moves the records waiting in the machines' lanes into the ring, lane by lane (a
    /// machine's records stay in its order).
    fn drain_lanes(&mut self, capacity: usize) {
        if self.lanes.is_empty() {
            return;
        }
        let lanes = std::mem::take(&mut self.lanes);
        for l in &lanes {
            l.lane.drain(|time, packed| {
                let ix = unpack(packed);
                // The commonest case first: the ring is full and the slot held another
                // of this machine's transitions (nothing to free, no count to move).
                if self.slots.len() == capacity {
                    let slot = &mut self.slots[self.head];
                    if let (Body::Indexed(old, None), Some(n)) = (&mut slot.body, &slot.names) {
                        if Arc::ptr_eq(n, &l.names) {
                            *old = ix;
                            slot.time = time;
                            self.next_id += 1;
                            self.head = if self.head + 1 == capacity {
                                0
                            } else {
                                self.head + 1
                            };
                            return;
                        }
                    }
                }
                drop(self.put(capacity, time, Some(&l.names), Body::Indexed(ix, None)));
            });
        }
        self.lanes = lanes;
    }

    /// The id of the oldest record held (`next_id` when empty).
    fn oldest(&self) -> u64 {
        self.next_id - self.slots.len() as u64
    }

    /// Where record `id` is, in a ring of `capacity` slots.
    fn index(id: u64, capacity: usize) -> usize {
        usize::try_from((id - 1) % capacity.max(1) as u64).unwrap_or(0)
    }
}

/// The stream: the ring, its clients and their metrics.
pub struct Stream {
    /// Subscribers now: publishers build records only when this is above 0 (shared with
    /// the runtime, which reports untimed transitions only then).
    clients: Arc<AtomicUsize>,
    ring: Mutex<Ring>,
    /// A subscriber is waiting for the next record (so a publish wakes it). On a line of
    /// its own: the lanes' writers read it with every record.
    waiting: Line<AtomicBool>,
    notify: Notify,
    capacity: usize,
    max_clients: usize,
    /// `turnstile_stream_clients`.
    pub(crate) clients_gauge: Gauge,
    /// `turnstile_stream_dropped_total`.
    pub(crate) dropped: Counter,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("clients", &self.clients.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Stream {
    fn default() -> Self {
        Self::new(RING_CAPACITY, MAX_CLIENTS)
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyClients(pub usize);

impl Stream {
    /// A stream whose ring holds `capacity` records (at least 1) and that serves at most
    /// `max_clients` subscribers.
    pub fn new(capacity: usize, max_clients: usize) -> Self {
        Self {
            clients: Arc::new(AtomicUsize::new(0)),
            ring: Mutex::new(Ring {
                slots: Vec::new(),
                next_id: 1,
                head: 0,
                lanes: Vec::new(),
            }),
            waiting: Line(AtomicBool::new(false)),
            notify: Notify::new(),
            capacity: capacity.max(1),
            max_clients,
            clients_gauge: Gauge::default(),
            dropped: Counter::default(),
        }
    }

    /// True when someone follows the stream: check before building a record.
    #[inline]
    pub fn active(&self) -> bool {
        self.clients.load(Ordering::Relaxed) > 0
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a record about `machine` (a definition's name) and, for an instance started
    /// at run time, `instance` (when someone follows the stream); never waits for a client.
    pub fn push(
        &self,
        kind: Kind,
        machine: Option<Arc<str>>,
        instance: Option<Arc<str>>,
        fields: Fields,
    ) {
        if !self.active() {
            return;
        }
        self.put(
            None,
            Body::Other(kind, Arc::new((machine, instance, fields))),
        );
    }

    /// Adds a transition of the machine named by `names`, by the indexes of its states and
    /// event there (when someone follows the stream). Indexes that name nothing there are
    /// published as `""`, as a record with names would show them.
    pub fn push_transition(
        &self,
        names: &Arc<Names>,
        [from, to, event]: [usize; 3],
        payload: Option<Arc<Json>>,
        job_id: Option<String>,
    ) {
        if !self.active() {
            return;
        }
        let extra = (payload.is_some() || job_id.is_some()).then(|| Arc::new((payload, job_id)));
        match names.indexes(from, to, event) {
            Some(ix) => self.put(Some(names), Body::Indexed(ix, extra)),
            None => {
                let (payload, job_id) = match extra.map(Arc::try_unwrap) {
                    Some(Ok(e)) => e,
                    _ => (None, None),
                };
                let fields = names.transition([from, to, event], payload, job_id);
                self.put(
                    None,
                    Body::Other(
                        Kind::Transition,
                        Arc::new((Some(names.machine.clone()), names.instance.clone(), fields)),
                    ),
                );
            }
        }
    }

    /// Writes a record into the ring (after what the lanes hold): the next slot while it
    /// grows, else the oldest one's.
    fn put(&self, names: Option<&Arc<Names>>, body: Body) {
        let time = turnstile_engine::runtime::clock::coarse_unix_ms();
        let replaced = {
            let mut ring = self.ring();
            ring.drain_lanes(self.capacity);
            ring.put(self.capacity, time, names, body)
        };
        // What the slot held is dropped outside the lock (nothing, for a transition
        // without payload written over another by the same machine).
        drop(replaced);
        self.wake();
    }

    /// Wakes a subscriber that waits for the next record.
    #[inline]
    fn wake(&self) {
        if self.waiting.0.load(Ordering::SeqCst) && self.waiting.0.swap(false, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// [`Stream::wake`] for a lane's writer: no fence between its record and the look at
    /// `waiting` (see the subscriber's `BACKSTOP`).
    #[inline]
    fn wake_relaxed(&self) {
        if self.waiting.0.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// A lane of its own for the machine named by `names` (None when [`LANES`] are taken).
    fn lane(&self, names: &Arc<Names>) -> Option<Arc<LaneOf>> {
        let mut ring = self.ring();
        if ring.lanes.len() >= LANES {
            return None;
        }
        let l = Arc::new(LaneOf {
            lane: Lane::new(),
            names: names.clone(),
        });
        ring.lanes.push(l.clone());
        Some(l)
    }

    /// Moves what `lane` holds into the ring and gives it up (its machine's feed ends).
    fn release(&self, lane: &Arc<LaneOf>) {
        let mut ring = self.ring();
        ring.drain_lanes(self.capacity);
        ring.lanes.retain(|l| !Arc::ptr_eq(l, lane));
    }

    /// Publishes a record of `kind` whose fields are `fields` (a JSON object's members;
    /// `id`, `time`, `kind`, `machine` and `instance` are set here). For the reports that
    /// are not the observer's own: control actions and breakpoint hits (`Kind::Control`,
    /// `Kind::Breakpoint`, with an `action` field saying what was done), an operator's job
    /// writes. `machine`: a definition's name, and an instance's for an instance started
    /// at run time. Free when nobody follows the stream.
    pub fn publish(
        &self,
        kind: Kind,
        machine: Option<(&str, Option<&str>)>,
        fields: impl FnOnce() -> Json,
    ) {
        if !self.active() {
            return;
        }
        let fields = match fields() {
            Json::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        self.push(
            kind,
            machine.map(|(m, _)| Arc::from(m)),
            machine.and_then(|(_, i)| i).map(Arc::from),
            Fields::Json(Arc::new(fields)),
        );
    }

    /// A subscriber that sees the records published from now on or, with `after` (a
    /// `Last-Event-ID`), those after that id still in the ring. Refused beyond the stream's
    /// client limit.
    pub fn subscribe(self: &Arc<Self>, after: Option<u64>) -> Result<Subscriber, TooManyClients> {
        let max = self.max_clients;
        self.clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| TooManyClients(max))?;
        self.clients_gauge.inc();
        let mut ring = self.ring();
        // What the lanes hold was published before: it gets its ids now.
        ring.drain_lanes(self.capacity);
        let (next, missed) = match after {
            None => (ring.next_id, 0),
            // An id this process never gave: the stream restarted since (ids start at 1
            // again); what went before is unknown, the ring is served from its start.
            Some(a) if a >= ring.next_id => (ring.oldest(), u64::MAX),
            Some(a) => {
                let want = a + 1;
                let oldest = ring.oldest();
                (want.max(oldest), oldest.saturating_sub(want))
            }
        };
        drop(ring);
        Ok(Subscriber {
            stream: self.clone(),
            next,
            missed: (missed > 0).then_some(missed),
            busy: false,
            copied: Vec::new(),
            local: Vec::new(),
        })
    }
}

/// What a subscriber gets next.
#[derive(Debug)]
pub enum Batch {
    /// Records in id order (at least one).
    Records(Vec<Record>),
    /// Records went before the subscriber could see them (`Last-Event-ID` older than the
    /// ring's oldest record); `None`: an id this process never gave (it restarted), how
    /// many is unknown. Comes first, then the ring's records.
    Missed(Option<u64>),
    /// The subscriber fell behind by more than the ring holds: it is cut off (and
    /// counted); `missed` records went unseen.
    CutOff {
        /// Records it did not see.
        missed: u64,
    },
}

/// What [`Subscriber::next_sse`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It took records (at least one) and wrote those wanted (maybe none).
    Written,
    /// As [`Batch::Missed`]; nothing written.
    Missed(Option<u64>),
    /// As [`Batch::CutOff`]; nothing written.
    CutOff {
        /// Records it did not see.
        missed: u64,
    },
}

/// One client's cursor in the ring. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscriber {
    stream: Arc<Stream>,
    /// The id of the next record it wants.
    next: u64,
    /// Records missed before it started (`u64::MAX`: unknown), reported first.
    missed: Option<u64>,
    /// The last call found records: more are likely to follow.
    busy: bool,
    /// Kept for the next call (its allocation).
    copied: Vec<Copied>,
    /// The subscriber's own copies of the [`Names`] it has seen (keyed by the ring's):
    /// the records it builds clone and drop names for every record, and the reference
    /// counts of the definition's own names share cache lines with what the machine
    /// reads as it routes its events. At most [`LOCAL_NAMES`].
    local: Vec<(Arc<Names>, Arc<Local>)>,
}

/// Machines whose names a subscriber keeps copies of (more: it starts over).
const LOCAL_NAMES: usize = 64;

/// A subscriber's copy of a machine's [`Names`], and each name as a JSON string: an
/// indexed transition is written as server-sent event by copying these, without building
/// a [`Record`] or escaping a name per record.
#[derive(Debug)]
struct Local {
    names: Arc<Names>,
    machine: String,
    /// The instance's name as JSON, `null` for a machine the process was started with.
    instance: String,
    states: Box<[String]>,
    events: Box<[String]>,
}

impl Local {
    fn new(n: &Names) -> Self {
        let json = |s: &Arc<str>| {
            let mut o = String::with_capacity(s.len() + 2);
            push_json_str(&mut o, s);
            o
        };
        Self {
            names: n.copy(),
            machine: json(&n.machine),
            instance: n.instance.as_ref().map_or_else(|| "null".to_owned(), json),
            states: n.states.iter().map(json).collect(),
            events: n.events.iter().map(json).collect(),
        }
    }

    /// Name `i` of `v` as JSON: `""` when out of range, as a [`Record`] names it.
    fn json(v: &[String], i: u32) -> &str {
        v.get(i as usize).map_or("\"\"", String::as_str)
    }
}

/// What a subscriber took: records given to its [`Sink`], or a note.
enum Took {
    Records,
    Missed(Option<u64>),
    CutOff { missed: u64 },
}

/// Where [`Subscriber::take`] puts the records it takes, in id order.
trait Sink {
    /// An indexed transition of the machine named by `names`.
    fn indexed(
        &mut self,
        id: u64,
        time: SystemTime,
        names: &Local,
        ix: [u32; 3],
        extra: Option<&Extra>,
    );
    /// Any other record.
    fn other(&mut self, id: u64, time: SystemTime, kind: Kind, o: &Other);
}

/// [`Subscriber::next`]: the records built.
impl Sink for Vec<Record> {
    fn indexed(
        &mut self,
        id: u64,
        time: SystemTime,
        l: &Local,
        [from, to, event]: [u32; 3],
        extra: Option<&Extra>,
    ) {
        let names = &l.names;
        let (payload, job_id) = extra.cloned().unwrap_or_default();
        let ix = [from, to, event].map(|i| i as usize);
        self.push(Record {
            id,
            time,
            kind: Kind::Transition,
            machine: Some(names.machine.clone()),
            instance: names.instance.clone(),
            fields: names.transition(ix, payload, job_id),
        });
    }

    fn other(&mut self, id: u64, time: SystemTime, kind: Kind, o: &Other) {
        self.push(Record::other(id, time, kind, o));
    }
}

/// [`Subscriber::next_sse`]: the records `keep` wants, as server-sent events.
struct Sse<'a, F> {
    keep: F,
    encoder: &'a mut Encoder,
    out: &'a mut String,
}

impl<F: Fn(Kind, Option<&str>, Option<&str>) -> bool> Sink for Sse<'_, F> {
    fn indexed(
        &mut self,
        id: u64,
        time: SystemTime,
        l: &Local,
        [from, to, event]: [u32; 3],
        extra: Option<&Extra>,
    ) {
        let instance = l.names.instance.as_deref();
        if !(self.keep)(Kind::Transition, Some(&l.names.machine), instance) {
            return;
        }
        let out = &mut *self.out;
        let id = Decimal::new(id);
        sse_head(&id, out);
        self.encoder.transition_head(&id, time, out);
        out.push_str(&l.machine);
        out.push_str(",\"instance\":");
        out.push_str(&l.instance);
        out.push_str(",\"event\":");
        out.push_str(Local::json(&l.events, event));
        out.push_str(",\"from\":");
        out.push_str(Local::json(&l.states, from));
        out.push_str(",\"to\":");
        out.push_str(Local::json(&l.states, to));
        let (payload, job_id) = match extra {
            Some((p, j)) => (p.as_ref(), j.as_deref()),
            None => (None, None),
        };
        self.encoder.transition_tail(payload, job_id, out);
        out.push_str("\n\n");
    }

    fn other(&mut self, id: u64, time: SystemTime, kind: Kind, o: &Other) {
        if !(self.keep)(kind, o.0.as_deref(), o.1.as_deref()) {
            return;
        }
        self.encoder
            .write_sse(&Record::other(id, time, kind, o), self.out);
    }
}

impl Subscriber {
    /// The id of the last record this subscriber was given (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// When the ring has dropped records this subscriber has not seen (it fell behind):
    /// how many, counted as a client cut off. For a client whose connection is not taking
    /// what it was given: it is cut off without waiting for it.
    pub fn cut_off_if_behind(&mut self) -> Option<u64> {
        let oldest = {
            let mut ring = self.stream.ring();
            ring.drain_lanes(self.stream.capacity);
            ring.oldest()
        };
        if self.next >= oldest {
            return None;
        }
        self.stream.dropped.inc();
        Some(oldest - self.next)
    }

    /// Takes up to `max` records not yet seen into `sink`, or None when there is none.
    fn take(&mut self, max: usize, sink: &mut impl Sink) -> Option<Took> {
        if let Some(m) = self.missed.take() {
            return Some(Took::Missed((m != u64::MAX).then_some(m)));
        }
        let mut ring = self.stream.ring();
        ring.drain_lanes(self.stream.capacity);
        let oldest = ring.oldest();
        if self.next < oldest {
            let missed = oldest - self.next;
            drop(ring);
            self.stream.dropped.inc();
            return Some(Took::CutOff { missed });
        }
        if self.next >= ring.next_id {
            return None;
        }
        let end = ring
            .next_id
            .min(self.next.saturating_add(max.max(1) as u64));
        let mut copied = std::mem::take(&mut self.copied);
        let mut names: Vec<Arc<Names>> = Vec::new();
        let capacity = self.stream.capacity;
        let mut i = Ring::index(self.next, capacity);
        for id in self.next..end {
            let Some(slot) = ring.slots.get(i) else {
                break;
            };
            i = if i + 1 == capacity { 0 } else { i + 1 };
            copied.push(match &slot.body {
                Body::Indexed(ix, extra) => {
                    // The names of consecutive records are mostly the same machine's.
                    let n = match (&slot.names, names.last()) {
                        (Some(s), Some(l)) if Arc::ptr_eq(s, l) => names.len() - 1,
                        (Some(s), _) => {
                            names.push(s.clone());
                            names.len() - 1
                        }
                        // Never: an indexed transition is put with its names.
                        (None, _) => continue,
                    };
                    Copied::Indexed(id, slot.time, *ix, n, extra.clone())
                }
                Body::Other(kind, o) => Copied::Other(id, slot.time, *kind, o.clone()),
            });
        }
        drop(ring);
        self.next = end;
        let local: Vec<Arc<Local>> = names.iter().map(|n| self.local_names(n)).collect();
        for c in copied.drain(..) {
            match c {
                Copied::Indexed(id, time, ix, n, extra) => {
                    let ix = ix.map(u32::from);
                    sink.indexed(id, at(time), &local[n], ix, extra.as_deref());
                }
                Copied::Other(id, time, kind, o) => sink.other(id, at(time), kind, &o),
            }
        }
        self.copied = copied;
        Some(Took::Records)
    }

    /// This subscriber's copy of `n`.
    fn local_names(&mut self, n: &Arc<Names>) -> Arc<Local> {
        if let Some((_, l)) = self.local.iter().find(|(k, _)| Arc::ptr_eq(k, n)) {
            return l.clone();
        }
        if self.local.len() >= LOCAL_NAMES {
            self.local.clear();
        }
        let l = Arc::new(Local::new(n));
        self.local.push((n.clone(), l.clone()));
        l
    }

    /// Waits for what comes next: up to `max` records, a [`Batch::Missed`] or a
    /// [`Batch::CutOff`] (after which the subscriber gives nothing more).
    pub async fn next(&mut self, max: usize) -> Batch {
        let mut records = Vec::new();
        match self.wait(max, &mut records).await {
            Took::Records => Batch::Records(records),
            Took::Missed(m) => Batch::Missed(m),
            Took::CutOff { missed } => Batch::CutOff { missed },
        }
    }

    /// As [`Subscriber::next`], but the records taken are written to `out` as
    /// server-sent events (each one's `id:` and `data:` lines, as
    /// [`Encoder::write_sse`] writes it), those that `keep` wants by their kind, machine
    /// and instance: the sidecar's `GET /events` writes the commonest records, transitions,
    /// straight from the ring's copies, without a [`Record`] each.
    pub async fn next_sse(
        &mut self,
        max: usize,
        keep: impl Fn(Kind, Option<&str>, Option<&str>) -> bool,
        encoder: &mut Encoder,
        out: &mut String,
    ) -> Step {
        let mut sink = Sse { keep, encoder, out };
        match self.wait(max, &mut sink).await {
            Took::Records => Step::Written,
            Took::Missed(m) => Step::Missed(m),
            Took::CutOff { missed } => Step::CutOff { missed },
        }
    }

    async fn wait(&mut self, max: usize, sink: &mut impl Sink) -> Took {
        loop {
            if let Some(b) = self.take(max, sink) {
                self.busy = true;
                return b;
            }
            if std::mem::take(&mut self.busy) {
                // Records came a moment ago: a short pause gathers the next ones into one
                // batch, and while records keep coming the publishers never have to wake
                // this subscriber (a wake-up per record would cost them more than the
                // record).
                tokio::time::sleep(GATHER).await;
                continue;
            }
            let stream = self.stream.clone();
            let notified = stream.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            stream.waiting.0.store(true, Ordering::SeqCst);
            // A record published before `waiting` was set did not wake us: look again.
            if let Some(b) = self.take(max, sink) {
                return b;
            }
            // A lane's writer reads `waiting` without a fence (a locked instruction per
            // record is what the lanes spare it): in the moment its record is not yet seen
            // here, it may not see `waiting` set either. Looking again after `BACKSTOP`
            // bounds how late that record can be.
            let _ = tokio::time::timeout(BACKSTOP, notified).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stream.clients.fetch_sub(1, Ordering::SeqCst);
        self.stream.clients_gauge.dec();
    }
}

/// A machine's lane (`stream_lane.rs`), kept in its telemetry slot: made when the machine
/// first publishes a transition while someone follows the stream (`None`: no lane was
/// free; the machine puts its records in the ring itself), given back when the slot goes.
/// One per machine, whichever path publishes its transitions, so that they keep its order.
#[derive(Default)]
pub(super) struct LaneCell(std::sync::OnceLock<Option<Box<Held>>>);

/// A lane held by a machine.
struct Held {
    stream: Arc<Stream>,
    lane: Arc<LaneOf>,
    writer: Writer,
}

impl Drop for Held {
    /// The lane's records go to the ring, and the lane to the next machine that asks.
    fn drop(&mut self) {
        self.stream.release(&self.lane);
    }
}

impl Stream {
    /// [`Stream::push_transition`] for the machine whose lane `cell` keeps: a transition
    /// without payload or job id goes through the lane when it has one.
    pub(super) fn push_transition_in(
        self: &Arc<Self>,
        cell: &LaneCell,
        names: &Arc<Names>,
        [from, to, event]: [usize; 3],
        payload: Option<Arc<Json>>,
        job_id: Option<String>,
    ) {
        if !self.active() {
            return;
        }
        if payload.is_none() && job_id.is_none() && self.lane_push(cell, names, [from, to, event]) {
            return;
        }
        self.push_transition(names, [from, to, event], payload, job_id);
    }

    /// Writes a transition into `cell`'s lane; false when it has none, or is full (the
    /// caller puts it in the ring, which takes the lane's records first).
    #[inline]
    fn lane_push(self: &Arc<Self>, cell: &LaneCell, names: &Arc<Names>, ix: [usize; 3]) -> bool {
        let held = cell.0.get_or_init(|| {
            let lane = self.lane(names)?;
            Some(Box::new(Held {
                stream: self.clone(),
                lane,
                writer: Writer::new(),
            }))
        });
        let Some(h) = held else {
            return false;
        };
        let Some(ix) = names.indexes(ix[0], ix[1], ix[2]) else {
            return false;
        };
        if !Arc::ptr_eq(&h.lane.names, names) {
            return false;
        }
        let time = turnstile_engine::runtime::clock::coarse_unix_ms();
        if !h.writer.push(&h.lane.lane, time, pack(ix)) {
            return false;
        }
        self.wake_relaxed();
        true
    }
}

/// A machine's stream feed on the metrics-only path (the telemetry's quick observer): it
/// publishes what the machine reports by index, named by the machine's [`Names`], through
/// the machine's lane.
pub(super) struct QuickFeed {
    stream: Arc<Stream>,
}

impl QuickFeed {
    pub(super) fn new(stream: &Arc<Stream>) -> Self {
        Self {
            stream: stream.clone(),
        }
    }

    /// The stream's count of followers (see [`QuickTiming::report_untimed_while`]).
    ///
    /// [`QuickTiming::report_untimed_while`]: turnstile_engine::observe::QuickTiming::report_untimed_while
    pub(super) fn followers(&self) -> Arc<AtomicUsize> {
        self.stream.clients.clone()
    }

    /// A transition of the machine `names` names, whose lane `cell` keeps, reported by
    /// indexes (the event's payload is not known here).
    #[inline]
    pub(super) fn transition<'a>(
        &self,
        cell: &LaneCell,
        names: impl FnOnce() -> &'a Arc<Names>,
        from: usize,
        to: usize,
        event_id: usize,
    ) {
        if self.stream.active() {
            self.push(cell, names(), from, to, event_id);
        }
    }

    #[inline(never)]
    fn push(&self, cell: &LaneCell, names: &Arc<Names>, from: usize, to: usize, event_id: usize) {
        self.stream
            .push_transition_in(cell, names, [from, to, event_id], None, None);
    }
}

/// A transition's indexes as a lane keeps them (one word).
fn pack([from, to, event]: [u16; 3]) -> u64 {
    u64::from(from) | u64::from(to) << 16 | u64::from(event) << 32
}

/// The indexes [`pack`] packed.
fn unpack(w: u64) -> [u16; 3] {
    [w as u16, (w >> 16) as u16, (w >> 32) as u16]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn push(s: &Stream, n: u64) {
        s.publish(
            Kind::Control,
            Some(("m", None)),
            || json!({"action": "pause", "n": n}),
        );
    }

    fn ids(b: Batch) -> Vec<u64> {
        match b {
            Batch::Records(r) => r.iter().map(|r| r.id).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_is_kept_without_a_client_and_ids_increase() {
        let s = Arc::new(Stream::new(4, 2));
        push(&s, 0);
        assert!(!s.active());
        let mut sub = s.subscribe(None).unwrap();
        assert_eq!(s.clients_gauge.get(), 1);
        push(&s, 1);
        push(&s, 2);
        let Batch::Records(got) = sub.next(10).await else {
            panic!("records expected")
        };
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1, 2]);
        let r = got[0].to_json();
        assert_eq!(r["kind"], "control");
        assert_eq!(r["machine"], "m");
        assert_eq!(r["action"], "pause");
        drop(sub);
        assert!(!s.active());
        assert_eq!(s.clients_gauge.get(), 0);
    }

    #[tokio::test]
    async fn resuming_serves_the_ring_and_says_what_was_missed() {
        let s = Arc::new(Stream::new(4, 2));
        let _keep = s.subscribe(None).unwrap();
        for n in 0..6 {
            push(&s, n);
        }
        // Ids 3..=6 are held.
        let mut sub = s.subscribe(Some(4)).unwrap();
        assert_eq!(ids(sub.next(10).await), vec![5, 6]);
        drop(sub);
        let mut sub = s.subscribe(Some(0)).unwrap();
        assert!(matches!(sub.next(10).await, Batch::Missed(Some(2))));
        assert_eq!(ids(sub.next(10).await), vec![3, 4, 5, 6]);
        drop(sub);
        // An id never given: a restart; the ring from its start.
        let mut sub = s.subscribe(Some(99)).unwrap();
        assert!(matches!(sub.next(10).await, Batch::Missed(None)));
        assert_eq!(ids(sub.next(2).await), vec![3, 4]);
        assert!(matches!(s.subscribe(None), Err(TooManyClients(2))));
    }

    /// Transitions by index, from more machines than a subscriber keeps names for, and
    /// written over in the ring by other machines' records: each is named after its own.
    #[tokio::test]
    async fn indexed_transitions_are_named_after_their_machine() {
        let s = Arc::new(Stream::new(16, 2));
        let mut sub = s.subscribe(None).unwrap();
        let machines: Vec<Arc<Names>> = (0..LOCAL_NAMES + 6)
            .map(|i| {
                Arc::new(Names {
                    machine: Arc::from(format!("m{i}")),
                    instance: (i % 2 == 1).then(|| Arc::from(format!("i{i}"))),
                    states: vec![Arc::from("a"), Arc::from(format!("s{i}"))].into(),
                    events: vec![Arc::from("go")].into(),
                })
            })
            .collect();
        let mut seen = 0;
        for round in 0..3 {
            for (i, names) in machines.iter().enumerate() {
                s.push_transition(names, [0, 1, 0], None, (round == 1).then(|| "j".into()));
                // Out of range: named "" (as before the ring kept indexes).
                s.push_transition(names, [0, 7, 0], None, None);
                let Batch::Records(got) = sub.next(10).await else {
                    panic!("records expected")
                };
                assert_eq!(got.len(), 2);
                for (k, r) in got.iter().enumerate() {
                    seen += 1;
                    assert_eq!(r.id, seen);
                    assert_eq!(r.machine.as_deref(), Some(&*format!("m{i}")));
                    let instance = format!("i{i}");
                    assert_eq!(r.instance.as_deref(), (i % 2 == 1).then_some(&*instance));
                    let Fields::Transition { to, job_id, .. } = &r.fields else {
                        panic!("{r:?}")
                    };
                    let want = if k == 0 {
                        format!("s{i}")
                    } else {
                        String::new()
                    };
                    assert_eq!(&**to, want);
                    assert_eq!(job_id.is_some(), k == 0 && round == 1);
                }
            }
        }
        assert!(sub.local.len() <= LOCAL_NAMES);
    }

    /// The server-sent events written from the ring's copies are those of the records
    /// [`Subscriber::next`] builds, as [`Encoder::write_sse`] writes them, for the records
    /// the filter keeps: indexed transitions (with names to escape, out of range, with a
    /// payload and job id) and other kinds.
    #[tokio::test]
    async fn sse_from_the_ring_is_what_the_records_show() {
        let s = Arc::new(Stream::new(64, 3));
        let mut records = s.subscribe(None).unwrap();
        let mut sse = s.subscribe(None).unwrap();
        let names = Arc::new(Names {
            machine: Arc::from("m \"1\""),
            instance: Some(Arc::from("i \"1\"")),
            states: vec![Arc::from("a"), Arc::from("b\\\n")].into(),
            events: vec![Arc::from("go\u{1}")].into(),
        });
        let other = Arc::new(Names {
            machine: Arc::from("n"),
            instance: None,
            states: vec![Arc::from("x")].into(),
            events: vec![Arc::from("e")].into(),
        });
        s.push_transition(&names, [0, 1, 0], None, None);
        s.push_transition(&names, [0, 9, 0], None, None);
        let payload = Arc::new(json!({"k": 1, "api_token": "s"}));
        s.push_transition(&names, [1, 0, 0], Some(payload), Some("j\"1".into()));
        s.push_transition(&other, [0, 0, 0], None, None);
        push(&s, 7);
        s.publish(
            Kind::Control,
            Some(("n", None)),
            || json!({"action": "pause"}),
        );
        s.publish(
            Kind::Control,
            Some(("m \"1\"", Some("i \"1\""))),
            || json!({"action": "resume"}),
        );
        let Batch::Records(got) = records.next(100).await else {
            panic!("records expected")
        };
        assert_eq!(got.len(), 7);
        for keep_machine in [None, Some("n"), Some("m \"1\""), Some("i \"1\"")] {
            for keep_kind in [None, Some(Kind::Transition), Some(Kind::Control)] {
                let keep = |kind: Kind, machine: Option<&str>, instance: Option<&str>| {
                    keep_machine.is_none_or(|m| machine == Some(m) || instance == Some(m))
                        && keep_kind.is_none_or(|k| k == kind)
                };
                let mut want = String::new();
                let mut enc = Encoder::default();
                let kept = |r: &&Record| keep(r.kind, r.machine.as_deref(), r.instance.as_deref());
                for r in got.iter().filter(kept) {
                    enc.write_sse(r, &mut want);
                }
                let mut sub = s.subscribe(Some(0)).unwrap();
                let mut out = String::new();
                let step = sub
                    .next_sse(100, keep, &mut Encoder::default(), &mut out)
                    .await;
                assert_eq!(step, Step::Written);
                assert_eq!(out, want);
                assert_eq!(sub.last_id(), 7);
            }
        }
        let mut out = String::new();
        let step = sse
            .next_sse(100, |_, _, _| true, &mut Encoder::default(), &mut out)
            .await;
        assert_eq!(step, Step::Written);
        assert!(out.starts_with("id: 1\ndata: {\"id\":1,"), "{out}");
        assert!(
            out.contains("\"to\":\"\"}") && out.contains("\"[redacted]\""),
            "{out}"
        );
        assert!(out.contains("\"instance\":\"i \\\"1\\\"\""), "{out}");
        assert_eq!(out.matches("\n\n").count(), 7);
    }

    /// Two slots to a cache line; a definition whose indexes do not fit the slot's 16
    /// bits has its transitions published with their names.
    #[tokio::test]
    async fn slots_are_small_and_large_definitions_are_named() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        let s = Arc::new(Stream::new(8, 1));
        let mut sub = s.subscribe(None).unwrap();
        let n = usize::from(u16::MAX) + 3;
        let names = Arc::new(Names {
            machine: Arc::from("big"),
            instance: None,
            states: (0..n).map(|i| Arc::from(format!("s{i}"))).collect(),
            events: vec![Arc::from("go")].into(),
        });
        s.push_transition(&names, [n - 1, 1, 0], None, None);
        s.push_transition(&names, [1, n - 2, 0], None, None);
        let Batch::Records(got) = sub.next(10).await else {
            panic!("records expected")
        };
        let named: Vec<(u64, String, String)> = got
            .iter()
            .map(|r| match &r.fields {
                Fields::Transition { from, to, .. } => (r.id, from.to_string(), to.to_string()),
                Fields::Json(_) => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(
            named,
            vec![
                (1, format!("s{}", n - 1), "s1".to_owned()),
                (2, "s1".to_owned(), format!("s{}", n - 2)),
            ]
        );
    }

    /// A machine's transitions through its lane keep their order with the records put in
    /// the ring directly, whoever moves them; a subscriber sees only what was published
    /// after it came, whatever was still in a lane; a full lane loses nothing; a feed
    /// that ends gives its lane back.
    #[tokio::test]
    async fn a_lane_keeps_the_machines_order() {
        let s = Arc::new(Stream::new(4 * super::super::stream_lane::LANE_SLOTS, 3));
        let names = Arc::new(Names {
            machine: Arc::from("m"),
            instance: None,
            states: vec![Arc::from("a"), Arc::from("b")].into(),
            events: vec![Arc::from("go")].into(),
        });
        let feed = QuickFeed::new(&s);
        let cell = LaneCell::default();
        feed.transition(&cell, || &names, 0, 1, 0);
        assert!(cell.0.get().is_none(), "nothing published without a client");
        let mut sub = s.subscribe(None).unwrap();
        feed.transition(&cell, || &names, 0, 1, 0);
        push(&s, 1);
        // With a job id: put in the ring directly, after what the lane holds.
        s.push_transition_in(&cell, &names, [1, 0, 0], None, Some("j".into()));
        let mut late = s.subscribe(None).unwrap();
        feed.transition(&cell, || &names, 0, 1, 0);
        let shown = |b: Batch| -> Vec<(u64, String)> {
            let Batch::Records(r) = b else {
                panic!("records expected")
            };
            r.iter()
                .map(|r| match &r.fields {
                    Fields::Transition { to, .. } => (r.id, to.to_string()),
                    Fields::Json(_) => (r.id, r.kind.as_str().to_owned()),
                })
                .collect()
        };
        let want = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
            v.iter().map(|(i, t)| (*i, (*t).to_owned())).collect()
        };
        assert_eq!(
            shown(sub.next(10).await),
            want(&[(1, "b"), (2, "control"), (3, "a"), (4, "b")])
        );
        assert_eq!(shown(late.next(10).await), want(&[(4, "b")]));
        drop(late);
        // More than a lane holds, with nobody looking: the machine moves it to the ring.
        let n = super::super::stream_lane::LANE_SLOTS as u64 + 5;
        for i in 0..n {
            feed.transition(&cell, || &names, 0, (i % 2) as usize, 0);
        }
        let mut seen = 4;
        while seen < 4 + n {
            let Batch::Records(r) = sub.next(1000).await else {
                panic!("records expected")
            };
            for r in r {
                seen += 1;
                assert_eq!(r.id, seen);
                let Fields::Transition { to, .. } = &r.fields else {
                    panic!("{r:?}")
                };
                assert_eq!(&**to, if (seen - 5) % 2 == 0 { "a" } else { "b" });
            }
        }
        assert_eq!(s.ring().lanes.len(), 1);
        feed.transition(&cell, || &names, 0, 1, 0);
        drop(cell);
        assert!(s.ring().lanes.is_empty());
        assert_eq!(shown(sub.next(10).await), want(&[(seen + 1, "b")]));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_cut_off_and_counted() {
        let s = Arc::new(Stream::new(4, 2));
        let mut sub = s.subscribe(None).unwrap();
        for n in 0..10 {
            push(&s, n);
        }
        assert!(matches!(sub.next(10).await, Batch::CutOff { missed: 6 }));
        assert_eq!(s.dropped.get(), 1);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_is_woken_by_a_publish() {
        let s = Arc::new(Stream::new(16, 2));
        let mut sub = s.subscribe(None).unwrap();
        let waiter = tokio::spawn(async move { ids(sub.next(10).await) });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        push(&s, 0);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![1]);
    }

    #[test]
    fn the_encoder_writes_what_to_json_shows() {
        let mut enc = Encoder::default();
        for (machine, instance, payload, job) in [
            (
                Some("m \"1\""),
                Some("i-\"1\""),
                Some(json!({"a\nb": [1, {"token": "t"}], "x": "\u{1}\\"})),
                Some("j\t1\u{8}\u{c}"),
            ),
            (Some("m"), None, None, None),
            (None, None, None, None),
        ] {
            let r = Record {
                id: 1_234_567_890,
                time: SystemTime::now(),
                kind: Kind::Transition,
                machine: machine.map(Arc::from),
                instance: instance.map(Arc::from),
                fields: Fields::Transition {
                    event: Arc::from("go\u{7f}é"),
                    from: Arc::from("a"),
                    to: Arc::from("b\\"),
                    payload: payload.map(Arc::new),
                    job_id: job.map(str::to_owned),
                },
            };
            for _ in 0..2 {
                let mut out = String::new();
                enc.write(&r, &mut out);
                let back: Json = serde_json::from_str(&out).unwrap();
                assert_eq!(back, r.to_json(), "{out}");
                assert_eq!(out, r.to_json().to_string());
            }
        }
        let r = Record {
            id: 8,
            time: SystemTime::now(),
            kind: Kind::Control,
            machine: None,
            instance: None,
            fields: Fields::Json(Arc::new(Map::new())),
        };
        let mut out = String::new();
        enc.write(&r, &mut out);
        assert_eq!(out, r.to_json().to_string());
    }

    #[test]
    fn sensitive_fields_are_redacted() {
        let r = Record {
            id: 1,
            time: SystemTime::now(),
            kind: Kind::Transition,
            machine: Some(Arc::from("m")),
            instance: None,
            fields: Fields::Transition {
                event: Arc::from("go"),
                from: Arc::from("a"),
                to: Arc::from("b"),
                payload: Some(Arc::new(json!({"user": "x", "api_token": "s3cret"}))),
                job_id: None,
            },
        };
        let j = r.to_json();
        assert_eq!(j["payload"]["api_token"], "[redacted]");
        assert_eq!(j["payload"]["user"], "x");
        let mut m = Map::new();
        m.insert("password".into(), json!("p"));
        let r = Record {
            fields: Fields::Json(Arc::new(m)),
            kind: Kind::Control,
            ..r
        };
        assert_eq!(r.to_json()["password"], "[redacted]");
    }
}
