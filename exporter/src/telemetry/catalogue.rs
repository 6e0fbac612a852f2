//! Every metric family `/metrics` can show, in one list: name, type, unit, help and label
//! names. The families are registered from these entries ([`Family::register`] for the
//! ones prometheus-client keeps, [`Family::describe`] for the ones collected at scrape
//! time), so a family cannot be exposed under a name or help the list does not have.
//!
//! The list is also what docs/metrics.md is checked against (a test in this module), and
//! what a real scrape is checked against ([`uncatalogued`], used by the end-to-end tests).

use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; exposed with a `_total` suffix.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    /// As written in `# TYPE` lines and in docs/metrics.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// The unit of a family, a suffix of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `_seconds`.
    Seconds,
    /// `_bytes`.
    Bytes,
}

impl Unit {
    fn prometheus(self) -> &'static prometheus_client::registry::Unit {
        static SECONDS: prometheus_client::registry::Unit =
            prometheus_client::registry::Unit::Seconds;
        static BYTES: prometheus_client::registry::Unit = prometheus_client::registry::Unit::Bytes;
        match self {
            Unit::Seconds => &SECONDS,
            Unit::Bytes => &BYTES,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => "_seconds",
            Unit::Bytes => "_bytes",
        }
    }
}

/// The registry a family is registered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// The `turnstile_` sub-registry.
    Turnstile,
    /// The root registry (the standard `process_*` names).
    None,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Where it is registered.
    pub prefix: Prefix,
    /// The name given to prometheus-client: without the prefix, the unit and `_total`.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its unit, if any.
    pub unit: Option<Unit>,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its label names, in order (`le` of histograms not included).
    pub labels: &'static [&'static str],
}

impl Family {
    /// The name a scrape shows (and docs/metrics.md lists): prefix, name, unit, and
    /// `_total` for counters, e.g. `turnstile_event_duration_seconds`.
    pub fn exposed_name(&self) -> String {
        let mut s = String::new();
        if self.prefix == Prefix::Turnstile {
            s.push_str("turnstile_");
        }
        s.push_str(self.name);
        if let Some(u) = self.unit {
            s.push_str(u.suffix());
        }
        if self.kind == Kind::Counter {
            s.push_str("_total");
        }
        s
    }

    /// Registers `metric` under this family's name, help and unit. `registry` must be the
    /// one of [`Family::prefix`]. The metric's own type must be the family's (checked in
    /// debug builds).
    pub fn register<M: Metric + TypedMetric>(&self, registry: &mut Registry, metric: M) {
        debug_assert_eq!(M::TYPE, self.kind.metric_type(), "{}", self.name);
        match self.unit {
            Some(u) => {
                registry.register_with_unit(self.name, self.help, u.prometheus().clone(), metric);
            }
            None => registry.register(self.name, self.help, metric),
        }
    }

    /// Starts this family in a collector's output (scrape-time families).
    pub fn describe<'a>(
        &self,
        encoder: &'a mut DescriptorEncoder<'_>,
    ) -> Result<MetricEncoder<'a>, std::fmt::Error> {
        encoder.encode_descriptor(
            self.name,
            self.help,
            self.unit.map(Unit::prometheus),
            self.kind.metric_type(),
        )
    }
}

const fn turnstile(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family {
    Family {
        prefix: Prefix::Turnstile,
        name,
        kind,
        unit,
        help,
        labels,
    }
}

const fn process(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Family {
    Family {
        prefix: Prefix::None,
        name,
        kind,
        unit,
        help,
        labels: &[],
    }
}

use Kind::{Counter, Gauge, Histogram};

/// `turnstile_build_info`.
pub const BUILD_INFO: Family = turnstile(
    "build_info",
    Gauge,
    None,
    "Turnstile build; always 1",
    &["version"],
);
/// `turnstile_transitions_total`.
pub const TRANSITIONS: Family = turnstile(
    "transitions",
    Counter,
    None,
    "Transitions taken, by machine, source and target state and event",
    &["machine", "from", "to", "event"],
);
/// `turnstile_events_total`.
pub const EVENTS: Family = turnstile(
    "events",
    Counter,
    None,
    "Events processed, by outcome (transitioned, ignored, rejected)",
    &["machine", "event", "outcome"],
);
/// `turnstile_event_duration_seconds`.
pub const EVENT_DURATION: Family = turnstile(
    "event_duration",
    Histogram,
    Some(Unit::Seconds),
    "Time from the start of an event to the end of the actions it triggered",
    &["machine"],
);
/// `turnstile_action_duration_seconds`.
pub const ACTION_DURATION: Family = turnstile(
    "action_duration",
    Histogram,
    Some(Unit::Seconds),
    "Time an action ran, by action type and outcome",
    &["machine", "action", "outcome"],
);
/// `turnstile_errors_total`.
pub const ERRORS: Family = turnstile(
    "errors",
    Counter,
    None,
    "Errors, by machine and kind",
    &["machine", "kind"],
);
/// `turnstile_state_duration_seconds`.
pub const STATE_DURATION: Family = turnstile(
    "state_duration",
    Histogram,
    Some(Unit::Seconds),
    "Time spent in a state before leaving it",
    &["machine", "state"],
);
/// `turnstile_config_reloads_total`.
pub const CONFIG_RELOADS: Family = turnstile(
    "config_reloads",
    Counter,
    None,
    "Config reloads, by result",
    &["result"],
);
/// `turnstile_config_last_reload_successful` (Prometheus's own name for it, prefixed).
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: Family = turnstile(
    "config_last_reload_successful",
    Gauge,
    None,
    "Whether the last config reload succeeded (1) or a config was refused (0)",
    &[],
);
/// `turnstile_config_last_reload_success_timestamp_seconds`.
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: Family = turnstile(
    "config_last_reload_success_timestamp",
    Gauge,
    Some(Unit::Seconds),
    "Unix time of the last successful config reload (the start, before any)",
    &[],
);
/// `turnstile_plugin_info`.
pub const PLUGIN_INFO: Family = turnstile(
    "plugin_info",
    Gauge,
    None,
    "Loaded plugins; always 1",
    &["plugin", "version"],
);
/// `turnstile_jobs` (set from the job store: `turnstile run --store`).
pub const JOBS: Family = turnstile(
    "jobs",
    Gauge,
    None,
    "Jobs in the job store, by type and status",
    &["job_type", "status"],
);
/// `turnstile_jobs_oldest_pending_age_seconds` (set from the job store).
pub const JOBS_OLDEST_PENDING_AGE: Family = turnstile(
    "jobs_oldest_pending_age",
    Gauge,
    Some(Unit::Seconds),
    "Age of the oldest pending job, by type",
    &["job_type"],
);
/// `turnstile_store_events_pending` (set from the job store).
pub const STORE_EVENTS_PENDING: Family = turnstile(
    "store_events_pending",
    Gauge,
    None,
    "Events recorded in the store for machines and not processed yet",
    &[],
);
/// `turnstile_store_connections` (set from the job store; backends with a pool).
pub const STORE_CONNECTIONS: Family = turnstile(
    "store_connections",
    Gauge,
    None,
    "Connections of the job store's pool, open and in use",
    &["state"],
);
/// `turnstile_job_changes_total`.
pub const JOB_CHANGES: Family = turnstile(
    "job_changes",
    Counter,
    None,
    "Jobs claimed, completed and failed by this process's machines",
    &["machine", "job_type", "change"],
);
/// `turnstile_stream_clients`.
pub const STREAM_CLIENTS: Family = turnstile(
    "stream_clients",
    Gauge,
    None,
    "Clients following the live record stream (GET /events)",
    &[],
);
/// `turnstile_stream_dropped_total`.
pub const STREAM_DROPPED: Family = turnstile(
    "stream_dropped",
    Counter,
    None,
    "Stream clients cut off for falling behind the ring of records",
    &[],
);
/// `turnstile_spans_dropped_total`.
pub const SPANS_DROPPED: Family = turnstile(
    "spans_dropped",
    Counter,
    None,
    "Spans not exported: queue full or export failed",
    &[],
);
/// `turnstile_spans_exported_total`.
pub const SPANS_EXPORTED: Family = turnstile(
    "spans_exported",
    Counter,
    None,
    "Spans handed to the OTLP collector",
    &[],
);
/// `turnstile_event_queue_depth` (read from the engine at scrape time).
pub const EVENT_QUEUE_DEPTH: Family = turnstile(
    "event_queue_depth",
    Gauge,
    None,
    "Events waiting in a machine's queue",
    &["machine"],
);
/// `turnstile_state_entered_timestamp_seconds` (read from the engine at scrape time).
pub const STATE_ENTERED_TIMESTAMP: Family = turnstile(
    "state_entered_timestamp",
    Gauge,
    Some(Unit::Seconds),
    "When a machine entered its current state, Unix time",
    &["machine"],
);
/// `turnstile_machine_state` (read from the engine at scrape time).
pub const MACHINE_STATE: Family = turnstile(
    "machine_state",
    Gauge,
    None,
    "1 for the state a machine is in, 0 for its other states",
    &["machine", "state"],
);
/// `turnstile_machine_paused` (read from the engine at scrape time).
pub const MACHINE_PAUSED: Family = turnstile(
    "machine_paused",
    Gauge,
    None,
    "1 while a machine is paused (by request or a breakpoint), 0 otherwise",
    &["machine"],
);
/// `turnstile_machine_instances` (read from the engine at scrape time).
pub const MACHINE_INSTANCES: Family = turnstile(
    "machine_instances",
    Gauge,
    None,
    "Running instances of a definition started at run time (start_fsm, POST /machines), by state",
    &["machine", "state"],
);
/// `turnstile_singleton_holder` (read from the engine at scrape time).
pub const SINGLETON_HOLDER: Family = turnstile(
    "singleton_holder",
    Gauge,
    None,
    "1 while this process runs a singleton machine (holds its lease), 0 while it stands by",
    &["machine"],
);
/// `process_cpu_seconds_total`.
pub const PROCESS_CPU: Family = process(
    "process_cpu",
    Counter,
    Some(Unit::Seconds),
    "Total user and system CPU time spent in seconds",
);
/// `process_resident_memory_bytes`.
pub const PROCESS_RESIDENT_MEMORY: Family = process(
    "process_resident_memory",
    Gauge,
    Some(Unit::Bytes),
    "Resident memory size in bytes",
);
/// `process_virtual_memory_bytes`.
pub const PROCESS_VIRTUAL_MEMORY: Family = process(
    "process_virtual_memory",
    Gauge,
    Some(Unit::Bytes),
    "Virtual memory size in bytes",
);
/// `process_threads`.
pub const PROCESS_THREADS: Family = process(
    "process_threads",
    Gauge,
    None,
    "Number of OS threads in the process",
);
/// `process_start_time_seconds`.
pub const PROCESS_START_TIME: Family = process(
    "process_start_time",
    Gauge,
    Some(Unit::Seconds),
    "Start time of the process since unix epoch in seconds",
);
/// `process_open_fds`.
pub const PROCESS_OPEN_FDS: Family = process(
    "process_open_fds",
    Gauge,
    None,
    "Number of open file descriptors",
);
/// `process_max_fds`.
pub const PROCESS_MAX_FDS: Family = process(
    "process_max_fds",
    Gauge,
    None,
    "Maximum number of open file descriptors",
);

/// Every family, in the order of docs/metrics.md.
pub const ALL: &[Family] = &[
    BUILD_INFO,
    TRANSITIONS,
    EVENTS,
    EVENT_DURATION,
    ACTION_DURATION,
    ERRORS,
    MACHINE_STATE,
    STATE_ENTERED_TIMESTAMP,
    STATE_DURATION,
    EVENT_QUEUE_DEPTH,
    MACHINE_PAUSED,
    MACHINE_INSTANCES,
    SINGLETON_HOLDER,
    JOBS,
    JOBS_OLDEST_PENDING_AGE,
    STORE_EVENTS_PENDING,
    STORE_CONNECTIONS,
    JOB_CHANGES,
    CONFIG_RELOADS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
    PLUGIN_INFO,
    SPANS_EXPORTED,
    SPANS_DROPPED,
    STREAM_CLIENTS,
    STREAM_DROPPED,
    PROCESS_CPU,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_VIRTUAL_MEMORY,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_THREADS,
    PROCESS_START_TIME,
];

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum`, `_count` and
/// an OpenMetrics counter's `_created` included).
pub fn family_of(sample: &str) -> Option<&'static Family> {
    ALL.iter().find(|f| {
        let name = f.exposed_name();
        let Some(rest) = sample.strip_prefix(name.as_str()) else {
            return false;
        };
        match f.kind {
            Kind::Histogram => ["", "_bucket", "_sum", "_count", "_created"].contains(&rest),
            Kind::Counter => ["", "_created"].contains(&rest),
            Kind::Gauge => rest.is_empty(),
        }
    })
}

/// What in an exposition (Prometheus text or OpenMetrics) the catalogue does not have: a
/// sample of an unknown family, or a label its family does not declare. Empty when
/// everything is catalogued.
pub fn uncatalogued(exposition: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for line in exposition.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..end];
        let Some(family) = family_of(sample) else {
            problems.push(format!("no family for `{sample}`: {line}"));
            continue;
        };
        if line[end..].starts_with('{') {
            let labels_end = line.find('}').unwrap_or(line.len());
            for label in label_names(&line[end + 1..labels_end]) {
                if label != "le" && !family.labels.contains(&label) {
                    problems.push(format!(
                        "label `{label}` not declared for `{}`: {line}",
                        family.exposed_name()
                    ));
                }
            }
        }
    }
    problems
}

/// The names in `a="x",b="y"` (values may hold escaped quotes and commas).
fn label_names(set: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = set;
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').trim());
        // Skip the value: up to the next quote not escaped.
        let value = &rest[eq + 2..];
        let mut escaped = false;
        let mut close = value.len();
        for (i, c) in value.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    close = i;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = value.get(close + 1..).unwrap_or("");
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    /// docs/metrics.md's metric table: exposed name -> (type, label names).
    fn documented() -> BTreeMap<String, (String, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Prometheus metrics"))
            .expect("docs/metrics.md has a `## Prometheus metrics` section");
        let mut out = BTreeMap::new();
        let mut header_seen = false;
        // The section's first table (the detail levels' table follows it).
        let table = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'));
        for line in table {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if !header_seen {
                assert_eq!(
                    cells[..3],
                    ["metric", "type", "labels"],
                    "the table's columns changed: update this test"
                );
                header_seen = true;
                continue;
            }
            if cells[0].starts_with("---") {
                continue;
            }
            // Label names are the quoted words outside parentheses (those list values).
            let mut labels = Vec::new();
            let mut depth = 0usize;
            for (i, part) in cells[2].split('`').enumerate() {
                if i % 2 == 1 {
                    if depth == 0 {
                        labels.push(part.to_owned());
                    }
                } else {
                    depth += part.matches('(').count();
                    depth = depth.saturating_sub(part.matches(')').count());
                }
            }
            for name in cells[0].split('`').skip(1).step_by(2) {
                let prev = out.insert(name.to_owned(), (cells[1].to_owned(), labels.clone()));
                assert!(
                    prev.is_none(),
                    "`{name}` is listed twice in docs/metrics.md"
                );
            }
        }
        out
    }

    #[test]
    fn docs_metrics_md_lists_exactly_the_catalogued_families() {
        let doc = documented();
        let cat: BTreeMap<String, (String, Vec<String>)> = ALL
            .iter()
            .map(|f| {
                let labels = f.labels.iter().map(|l| (*l).to_owned()).collect();
                (f.exposed_name(), (f.kind.as_str().to_owned(), labels))
            })
            .collect();
        assert_eq!(cat.len(), ALL.len(), "two families with one name");
        let undocumented: Vec<&String> = cat.keys().filter(|k| !doc.contains_key(*k)).collect();
        let nonexistent: Vec<&String> = doc.keys().filter(|k| !cat.contains_key(*k)).collect();
        let differing: Vec<String> = cat
            .iter()
            .filter_map(|(k, c)| {
                let d = doc.get(k)?;
                (d != c).then(|| format!("{k}: catalogue {c:?}, docs {d:?}"))
            })
            .collect();
        assert!(
            undocumented.is_empty() && nonexistent.is_empty() && differing.is_empty(),
            "docs/metrics.md and the catalogue disagree:\n\
             in the catalogue, not documented: {undocumented:?}\n\
             documented, not in the catalogue: {nonexistent:?}\n\
             type or labels differ: {differing:#?}"
        );
    }

    #[test]
    fn samples_are_matched_to_their_families() {
        let page = "# TYPE x gauge\n\
            turnstile_event_duration_seconds_bucket{machine=\"m\",le=\"0.1\"} 1\n\
            turnstile_transitions_total{machine=\"a,\\\"b=\\\"\",from=\"x\",to=\"y\",event=\"e\"} 2\n\
            process_cpu_seconds_total 0.5\n\
            turnstile_build_info{version=\"1\"} 1\n";
        assert_eq!(uncatalogued(page), Vec::<String>::new());
        let bad = "turnstile_nope 1\nturnstile_jobs{job_type=\"a\",machine=\"m\"} 1\n\
                   turnstile_build_info_total 1\n";
        let problems = uncatalogued(bad);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("turnstile_nope"));
        assert!(problems[1].contains("label `machine`"));
        assert!(problems[2].contains("turnstile_build_info_total"));
    }
}
