//! The command line's shape: the clap types (`Cli`, `Command`, the arguments of each
//! command) and the value parsers of their options.
//!
//! Kept apart from the code that carries the commands out so that the whole command line
//! (and its `--help`) can be read in one file, and so that the parsers are tested without
//! starting anything. The job store's commands keep their arguments in `jobs_cli.rs`, next
//! to their code.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use turnstile_engine::breakpoint::On;
use turnstile_engine::instance::Instance;
use turnstile_engine::MetricsDetail;
use turnstile_exporter::server::web::WebConfig;
use turnstile_exporter::server::SidecarConfig;
use turnstile_exporter::telemetry::spans::{self, SpanSettings};
use turnstile_exporter::telemetry::{TelemetryConfig, DEFAULT_TIMING_SAMPLE};

use crate::db::RunStoreArgs;
use crate::jobs_cli::{EventsCommand, JobsCommand, MachineStateArgs, SendEventArgs};
use crate::logging::LogArgs;

/// Turnstile: event-driven state machines declared in YAML.
#[derive(Debug, Parser)]
#[command(name = "turnstile", version, about)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    /// Also redact fields whose names contain NAME (case-insensitively) wherever data is
    /// shown: added to the default list (password, passwd, secret, token, api_key, apikey,
    /// authorization, cookie, private_key) and to the configs' `redact:` lists. Repeat it,
    /// or give a comma-separated list.
    #[arg(
        long = "redact",
        global = true,
        env = "TURNSTILE_REDACT",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub redact: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run machines until they reach a final state or SIGINT/SIGTERM arrives.
    Run(RunArgs),
    /// Check configs: every problem with line, column and a hint. Exit 2 on errors.
    Validate(ValidateArgs),
    /// Print a machine as a Mermaid `stateDiagram-v2`.
    Diagram(DiagramArgs),
    /// Add or list jobs in the job store.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Show the machine states saved in the store.
    MachineState(MachineStateArgs),
    /// List events recorded in the store.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Send an event to a machine of another `turnstile run` process: through its
    /// `--socket-dir` socket, or with --db through the store (any host).
    SendEvent(SendEventArgs),
    /// Follow a running sidecar's live records (`GET /events`), one line each: transitions,
    /// action results, errors, job changes, control actions, breakpoint hits.
    Tail(crate::tail::TailArgs),
    /// Drive a running sidecar's machines: pause, resume, step, stop, restart, context,
    /// breakpoints, diagram, start.
    Ctl(CtlArgs),
    /// Print a bcrypt hash of a password read from stdin (its first line), for
    /// `basic_auth_users` in a --web-config file.
    HashPassword(HashPasswordArgs),
}

/// `hash-password`.
#[derive(Debug, Args)]
pub struct HashPasswordArgs {
    /// bcrypt cost: each check takes 2^COST rounds (10: about 50 ms on one core). The
    /// sidecar accepts 4 to 14.
    #[arg(long, default_value_t = 10, value_name = "COST",
          value_parser = clap::value_parser!(u32).range(4..=i64::from(turnstile_exporter::server::web::MAX_BCRYPT_COST)))]
    pub cost: u32,
}

impl Command {
    /// The `--plugins` paths of the command.
    pub fn plugins(&self) -> &[PathBuf] {
        match self {
            Command::Run(RunArgs { plugins, .. })
            | Command::Validate(ValidateArgs { plugins, .. })
            | Command::Diagram(DiagramArgs { plugins, .. }) => plugins,
            Command::Jobs(_)
            | Command::MachineState(_)
            | Command::Events(_)
            | Command::SendEvent(_)
            | Command::Tail(_)
            | Command::Ctl(_)
            | Command::HashPassword(_) => &[],
        }
    }
}

/// `ctl`: the sidecar to drive, the output format, and the operation.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The sidecar (`http://HOST:PORT`).
    #[arg(
        long,
        global = true,
        env = "TURNSTILE_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// The bearer token the sidecar's writes need (prefer the environment variable, which
    /// `ps` does not show).
    #[arg(long, global = true, env = "TURNSTILE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format: text, or the sidecar's JSON answer.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ctl` operations.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Start an instance of a definition (`POST /machines`); prints its name.
    Start {
        /// The definition to start an instance of, as `POST /machines` takes it.
        definition: String,
        /// The instance's name (default: one the sidecar picks).
        #[arg(long)]
        name: Option<String>,
        /// Its initial context, a JSON object (merged over the definition's).
        #[arg(long, value_name = "JSON")]
        context: Option<String>,
    },
    /// Pause: the machine holds at its next event (a running action goes on).
    Pause {
        /// The machine.
        machine: String,
    },
    /// Resume a paused machine (its held event first).
    Resume {
        /// The machine.
        machine: String,
    },
    /// While paused, process exactly one held or queued event and stay paused.
    Step {
        /// The machine.
        machine: String,
    },
    /// Stop the machine as if it reached a final state.
    Stop {
        /// The machine.
        machine: String,
    },
    /// Back to the initial state and context, queue cleared, entry actions run.
    Restart {
        /// The machine.
        machine: String,
    },
    /// Print the machine's context, or (--set, --file) change it with a JSON merge patch
    /// (RFC 7396) and print it as it is now.
    Context {
        /// The machine.
        machine: String,
        /// A JSON merge patch: `{"attempts": 0, "stale": null}` sets `attempts` and
        /// removes `stale`.
        #[arg(long, value_name = "JSON", conflicts_with = "file")]
        set: Option<String>,
        /// Read the merge patch from this file (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Breakpoints: add, list, remove.
    #[command(subcommand)]
    Break(BreakCommand),
    /// Print the machine as a Mermaid `stateDiagram-v2`, its current state marked.
    Diagram {
        /// The machine.
        machine: String,
    },
}

/// `ctl break` operations.
#[derive(Debug, Subcommand)]
pub enum BreakCommand {
    /// Set a breakpoint: a hit pauses the machine before the step (after the error is
    /// recorded, for `error`).
    Add {
        /// The machine.
        machine: String,
        /// What it stops at: enter (a state), event (before any event is processed),
        /// transition (before a rule's transition), error (after one is recorded).
        #[arg(long, value_name = "KIND", value_parser = parse_on)]
        on: On,
        /// Only in (for `enter`: into) this state.
        #[arg(long)]
        state: Option<String>,
        /// Only for this event.
        #[arg(long)]
        event: Option<String>,
        /// Only when this condition on the context holds, e.g.
        /// `attempts > 3 && exists(order.id)`.
        #[arg(long, value_name = "EXPR")]
        when: Option<String>,
    },
    /// List the machine's breakpoints, with their hit counts.
    List {
        /// The machine.
        machine: String,
    },
    /// Remove a breakpoint by its id.
    Rm {
        /// The machine.
        machine: String,
        /// The breakpoint's id (`ctl break list` shows them).
        id: u64,
    },
}

/// `ctl break add --on`: a breakpoint kind, as the engine names them.
fn parse_on(s: &str) -> Result<On, String> {
    On::parse(s.trim()).ok_or_else(|| {
        let all: Vec<&str> = On::ALL.iter().map(|o| o.as_str()).collect();
        format!("unknown breakpoint kind `{s}` (one of {})", all.join(", "))
    })
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Machine config files (one machine each).
    #[arg(required = true)]
    pub configs: Vec<PathBuf>,
    /// Name of the machine (only with one config); default: `metadata.machine_name`.
    #[arg(long)]
    pub machine_name: Option<String>,
    /// Capacity of each machine's event queue.
    #[arg(long, default_value_t = turnstile_engine::runtime::engine::DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: usize,
    /// Seconds to wait for machines to stop after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10.0)]
    pub stop_timeout: f64,
    /// A plugin library, or a directory of them (every *.so in it); repeatable.
    #[arg(long = "plugins", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
    /// Reload a config when its file changes: running machines keep their state when
    /// it still exists; an invalid file is refused and the old config keeps running.
    /// With --watch, `run` keeps going after every machine has stopped.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: seconds between re-hashes of every config, which back up missed
    /// file notifications.
    #[arg(long, default_value_t = 2.0, value_name = "SECS", requires = "watch")]
    pub watch_interval: f64,
    /// This process's id among the processes sharing a store: on job leases (with a
    /// per-start incarnation), on saved machine states, and as the spans'
    /// `service.instance.id`. A given id belongs to one live process: with a store, a
    /// second process started with an id a live one holds exits 2. Default: the host name
    /// (in Kubernetes, the pod name), shared by processes on one host and not checked.
    #[arg(long, env = "TURNSTILE_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,
    /// Run machine NAME as a singleton (as `metadata.singleton: true` does): of the
    /// processes sharing the store, exactly one runs it, holding a lease (--job-lease);
    /// the others stand by and take over from its saved state. Repeatable.
    #[arg(long = "singleton", value_name = "NAME")]
    pub singletons: Vec<String>,
    /// The HTTP sidecar and telemetry.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// The job store.
    #[command(flatten)]
    pub store: RunStoreArgs,
}

/// `validate` arguments.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Machine config files.
    #[arg(required = true)]
    pub configs: Vec<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// A plugin library, or a directory of them (every *.so in it); repeatable.
    #[arg(long = "plugins", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
}

/// `validate --format`, `ctl --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `diagram` arguments.
#[derive(Debug, Args)]
pub struct DiagramArgs {
    /// A machine config file.
    pub config: PathBuf,
    /// A plugin library, or a directory of them (every *.so in it); repeatable.
    #[arg(long = "plugins", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
}

/// `run` options for the HTTP sidecar, metrics and spans.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sidecar and telemetry")]
pub struct ServeArgs {
    /// Where the HTTP sidecar listens (IP:PORT; port 0 picks a free one). In a container
    /// use 0.0.0.0:8000.
    #[arg(long, env = "TURNSTILE_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:8000", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Fail when the port is taken instead of falling back to the next port.
    #[arg(long)]
    strict_port: bool,
    /// Bearer token that writes (POST) need; prefer the environment variable, which `ps`
    /// does not show.
    #[arg(
        long,
        env = "TURNSTILE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Refuse every write (POST) with 403; reads stay open.
    #[arg(long)]
    read_only: bool,
    /// TLS, basic auth and response headers from a web configuration file in the format
    /// of Prometheus's exporter-toolkit (tls_server_config, basic_auth_users,
    /// http_server_config.headers); re-read when it or its certificate files change.
    #[arg(long, env = "TURNSTILE_WEB_CONFIG", value_name = "FILE")]
    web_config: Option<PathBuf>,
    /// With basic_auth_users in --web-config, the health endpoints (/healthz, /readyz,
    /// /-/healthy, /-/ready, /healthz/machines) need credentials too (they are open for
    /// probes otherwise).
    #[arg(long, requires = "web_config")]
    health_needs_auth: bool,
    /// Do not start the HTTP sidecar.
    #[arg(long, conflicts_with_all = ["strict_port", "token", "read_only", "keep_serving", "web_config"])]
    no_sidecar: bool,
    /// Keep the sidecar serving after every machine has stopped, until SIGINT/SIGTERM (to
    /// read the final metrics, traces and errors).
    #[arg(long)]
    pub keep_serving: bool,
    /// Records of processed events kept per machine for /trace (0: none).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    trace_buffer: usize,
    /// Error records kept for /errors.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    error_buffer: usize,
    /// Metric breakdowns shown for every machine beyond the default series, a comma list of
    /// `states` (state durations by state, a state gauge per declared state),
    /// `transitions` (transitions by rule, events by name), `actions` (action durations by
    /// type and outcome), `all` or `none`; a config's `metrics: {detail: ...}` adds to it
    /// for its machine (docs/metrics.md lists the series each one costs).
    #[arg(long, env = "TURNSTILE_METRICS_DETAIL", value_name = "LIST", default_value = "none", value_parser = MetricsDetail::parse_list)]
    metrics_detail: MetricsDetail,
    /// With the metrics only (--trace-buffer 0, no spans), time one event in N of those that
    /// run no action, to keep the clock off the hot path (1: time every one). Counts stay
    /// exact; events with actions are always timed.
    #[arg(long, env = "TURNSTILE_METRICS_TIMING_SAMPLE", value_name = "N", default_value_t = DEFAULT_TIMING_SAMPLE, value_parser = clap::value_parser!(u32).range(1..))]
    metrics_timing_sample: u32,
    /// Export spans over OTLP/HTTP to this URL (`http://collector:4318` gets `/v1/traces`
    /// appended). Without it, spans are exported when OTEL_EXPORTER_OTLP_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    #[arg(long, value_name = "URL", value_parser = parse_otlp_endpoint)]
    otlp_endpoint: Option<String>,
}

/// `--listen`: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or a bare port (on 127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    Err(format!(
        "`{s}` is not a listen address: use IP:PORT, e.g. 127.0.0.1:8000 or 0.0.0.0:8000"
    ))
}

/// `--otlp-endpoint`: an http(s) URL; a URL without a path gets `/v1/traces`.
fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    match rest.find('/') {
        None if !rest.is_empty() => Ok(format!("{s}/v1/traces")),
        None => Err(format!("`{s}` has no host")),
        Some(0) => Err(format!("`{s}` has no host")),
        Some(i) if rest[i..] == *"/" => Ok(format!("{s}v1/traces")),
        Some(_) => Ok(s.to_owned()),
    }
}

impl ServeArgs {
    /// The telemetry's config: the record buffers, and spans when an endpoint is given
    /// (`--otlp-endpoint` or the OTEL_* environment).
    pub fn telemetry_config(&self, instance: &Instance) -> TelemetryConfig {
        let spans =
            (self.otlp_endpoint.is_some() || spans::wanted_by_env()).then(|| SpanSettings {
                endpoint: self.otlp_endpoint.clone(),
                instance_id: Some(instance.id().to_owned()),
                ..SpanSettings::default()
            });
        TelemetryConfig {
            trace_buffer: self.trace_buffer,
            error_buffer: self.error_buffer,
            spans,
            metrics_detail: self.metrics_detail,
            timing_sample: self.metrics_timing_sample,
            ..TelemetryConfig::default()
        }
    }

    /// The sidecar's config, `None` with `--no-sidecar`; an error for an empty token.
    pub fn sidecar_config(&self) -> Result<Option<SidecarConfig>, String> {
        if self.no_sidecar {
            return Ok(None);
        }
        let token = match &self.token {
            Some(t) if t.trim().is_empty() => {
                return Err("the token (--token or TURNSTILE_TOKEN) is empty; unset it to leave writes open, or use --read-only".into())
            }
            Some(t) => Some(t.trim().to_owned()),
            None => None,
        };
        let web = match &self.web_config {
            Some(path) => Some(WebConfig::load(path).map_err(|e| format!("--web-config {e}"))?),
            None => None,
        };
        Ok(Some(SidecarConfig {
            listen: self.listen,
            strict_port: self.strict_port,
            token,
            read_only: self.read_only,
            web,
            health_needs_auth: self.health_needs_auth,
            ..SidecarConfig::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("0.0.0.0:8000").unwrap().to_string(),
            "0.0.0.0:8000"
        );
        assert_eq!(
            parse_listen("[::1]:9000").unwrap().to_string(),
            "[::1]:9000"
        );
        assert_eq!(parse_listen("8001").unwrap().to_string(), "127.0.0.1:8001");
        assert_eq!(
            parse_listen("localhost:0").unwrap().to_string(),
            "127.0.0.1:0"
        );
        for bad in ["", "host:80", "127.0.0.1", "127.0.0.1:99999", ":8000"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn otlp_endpoints() {
        assert_eq!(
            parse_otlp_endpoint("http://collector:4318").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            parse_otlp_endpoint("https://collector:4318/").unwrap(),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            parse_otlp_endpoint("http://c:4318/custom/traces").unwrap(),
            "http://c:4318/custom/traces"
        );
        for bad in ["collector:4318", "http://", "http:///v1/traces", "ftp://x"] {
            assert!(parse_otlp_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn breakpoint_kinds() {
        assert_eq!(parse_on("transition").unwrap(), On::Transition);
        let e = parse_on("later").unwrap_err();
        assert!(e.contains("one of enter, event, transition, error"), "{e}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
