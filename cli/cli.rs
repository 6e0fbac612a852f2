//! The command line: `run`, `validate`, `diagram`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use turnstile_engine::config::{self, Diagnostic, Loaded, Severity};
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::reload::{self, WatchOptions, WatchedConfig};
use turnstile_engine::{ActionRegistry, Engine, MachineDef};
use turnstile_exporter::server::{self, SidecarConfig};
use turnstile_exporter::telemetry::spans::{self, SpanSettings};
use turnstile_exporter::telemetry::{Telemetry, TelemetryConfig};

use crate::logging::LogArgs;

/// Exit code for usage errors and invalid configs.
const EXIT_INVALID: u8 = 2;

/// Turnstile: event-driven state machines declared in YAML.
#[derive(Debug, Parser)]
#[command(name = "turnstile", version, about)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run machines until they reach a final state or SIGINT/SIGTERM arrives.
    Run {
        /// Machine config files (one machine each).
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Name of the machine (only with one config); default: `metadata.machine_name`.
        #[arg(long)]
        machine_name: Option<String>,
        /// Capacity of each machine's event queue.
        #[arg(long, default_value_t = turnstile_engine::runtime::engine::DEFAULT_QUEUE_CAPACITY)]
        queue_capacity: usize,
        /// Seconds to wait for machines to stop after SIGINT/SIGTERM.
        #[arg(long, default_value_t = 10.0)]
        stop_timeout: f64,
        /// A plugin library, or a directory of them (every *.so in it); repeatable.
        #[arg(long = "plugins", value_name = "PATH")]
        plugins: Vec<PathBuf>,
        /// Reload a config when its file changes: running machines keep their state when
        /// it still exists; an invalid file is refused and the old config keeps running.
        /// With --watch, `run` keeps going after every machine has stopped.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between re-hashes of every config, which back up missed
        /// file notifications.
        #[arg(long, default_value_t = 2.0, value_name = "SECS", requires = "watch")]
        watch_interval: f64,
        /// The HTTP sidecar and telemetry.
        #[command(flatten)]
        serve: ServeArgs,
        /// The job store.
        #[command(flatten)]
        store: crate::jobs_cli::RunStoreArgs,
    },
    /// Check configs: every problem with line, column and a hint. Exit 2 on errors.
    Validate {
        /// Machine config files.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// A plugin library, or a directory of them (every *.so in it); repeatable.
        #[arg(long = "plugins", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Print a machine as a Mermaid `stateDiagram-v2`.
    Diagram {
        /// A machine config file.
        config: PathBuf,
        /// A plugin library, or a directory of them (every *.so in it); repeatable.
        #[arg(long = "plugins", value_name = "PATH")]
        plugins: Vec<PathBuf>,
    },
    /// Add or list jobs in the job store.
    #[command(subcommand)]
    Jobs(crate::jobs_cli::JobsCommand),
    /// Show the machine states saved in the store.
    MachineState(crate::jobs_cli::MachineStateArgs),
    /// List events recorded in the store.
    #[command(subcommand)]
    Events(crate::jobs_cli::EventsCommand),
    /// Send an event to a machine of another `turnstile run --socket-dir` process.
    SendEvent(crate::jobs_cli::SendEventArgs),
}

/// `run` options for the HTTP sidecar, metrics and spans.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sidecar and telemetry")]
struct ServeArgs {
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
    /// Do not start the HTTP sidecar.
    #[arg(long, conflicts_with_all = ["strict_port", "token", "read_only", "keep_serving"])]
    no_sidecar: bool,
    /// Keep the sidecar serving after every machine has stopped, until SIGINT/SIGTERM (to
    /// read the final metrics, traces and errors).
    #[arg(long)]
    keep_serving: bool,
    /// Records of processed events kept per machine for /trace (0: none).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    trace_buffer: usize,
    /// Error records kept for /errors.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    error_buffer: usize,
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
    fn telemetry_config(&self) -> TelemetryConfig {
        let spans =
            (self.otlp_endpoint.is_some() || spans::wanted_by_env()).then(|| SpanSettings {
                endpoint: self.otlp_endpoint.clone(),
                ..SpanSettings::default()
            });
        TelemetryConfig {
            trace_buffer: self.trace_buffer,
            error_buffer: self.error_buffer,
            spans,
            ..TelemetryConfig::default()
        }
    }

    /// The sidecar's config, `None` with `--no-sidecar`; an error for an empty token.
    fn sidecar_config(&self) -> Result<Option<SidecarConfig>, String> {
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
        Ok(Some(SidecarConfig {
            listen: self.listen,
            strict_port: self.strict_port,
            token,
            read_only: self.read_only,
            ..SidecarConfig::default()
        }))
    }
}

/// What `run` needs besides the machines.
struct RunOptions {
    /// `--watch`: what to watch, the registry to check changes with, and how.
    watch: Option<(Vec<WatchedConfig>, ActionRegistry, WatchOptions)>,
    queue_capacity: usize,
    stop_timeout: Duration,
    sidecar: Option<SidecarConfig>,
    keep_serving: bool,
    /// `--persist`: machine states saved after each transition and restored at start.
    persist: Option<turnstile_engine::store::Persister>,
    /// `--socket-dir`: a Unix socket per machine there.
    sockets: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Runs the chosen command; the `ExitCode` is the process's.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut registry = ActionRegistry::with_builtins();
    let plugin_errors = load_plugins(&mut registry, cli.command.plugins());
    let plugins_failed = !plugin_errors.is_empty();
    match cli.command {
        Command::Jobs(cmd) => crate::jobs_cli::jobs(cmd),
        Command::MachineState(args) => crate::jobs_cli::machine_state(args),
        Command::Events(cmd) => crate::jobs_cli::events(cmd),
        Command::SendEvent(args) => crate::jobs_cli::send_event(args),
        Command::Validate {
            configs,
            strict,
            format,
            ..
        } => {
            let code = validate(&configs, strict, format, &registry);
            Ok(if plugins_failed {
                ExitCode::from(EXIT_INVALID)
            } else {
                code
            })
        }
        Command::Diagram { config, .. } => {
            let loaded = config::load_path(&config, &registry);
            print_diagnostics(&loaded.diagnostics);
            match loaded.def {
                Some(def) => {
                    print!("{}", turnstile_engine::diagram::mermaid(&def));
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(ExitCode::from(EXIT_INVALID)),
            }
        }
        Command::Run {
            configs,
            machine_name,
            queue_capacity,
            stop_timeout,
            serve,
            watch,
            watch_interval,
            store,
            ..
        } => {
            if machine_name.is_some() && configs.len() != 1 {
                eprintln!("error: --machine-name needs exactly one config");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            let Some(defs) = load_all(&configs, machine_name.as_deref(), &registry) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let job_store = crate::jobs_cli::open_for_run(&store, &registry)?;
            let stop_timeout = Duration::try_from_secs_f64(stop_timeout)
                .context("--stop-timeout must be a number of seconds")?;
            let watch = if watch {
                let rescan = Duration::try_from_secs_f64(watch_interval)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .context("--watch-interval must be a positive number of seconds")?;
                let watched = configs
                    .iter()
                    .zip(&defs)
                    .map(|(path, def)| WatchedConfig {
                        path: path.clone(),
                        rename: machine_name.clone(),
                        def: def.clone(),
                    })
                    .collect();
                let options = WatchOptions {
                    rescan,
                    ..WatchOptions::default()
                };
                Some((watched, registry.clone(), options))
            } else {
                None
            };
            let sidecar = match serve.sidecar_config() {
                Ok(s) => s.map(|mut s| {
                    s.jobs = job_store.clone().map(|j| j as _);
                    s
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            // Built outside the async runtime: the span exporter has a blocking HTTP client.
            let telemetry = match Telemetry::new(serve.telemetry_config()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot set up span export: {e}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            let plugins: Vec<(String, String)> = registry
                .plugins()
                .into_iter()
                .map(|p| (p.name, p.version))
                .collect();
            telemetry.set_plugins(&plugins);
            for e in &plugin_errors {
                telemetry.report_error(ErrorKind::Plugin, None, e);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            if let Some(s) = &job_store {
                rt.spawn(crate::jobs_cli::job_metrics(s.clone(), telemetry.clone()));
            }
            let opts = RunOptions {
                watch,
                queue_capacity,
                stop_timeout,
                keep_serving: serve.keep_serving && sidecar.is_some(),
                sidecar,
                persist: crate::jobs_cli::persister(&store, job_store.as_ref()),
                sockets: store.socket_dir.clone(),
            };
            let code = rt.block_on(run(defs, opts, &telemetry, &registry));
            if let Some(s) = &job_store {
                // How well group commit shared transactions (`--log-level turnstile::store=debug`).
                let (writes, transactions) = turnstile_engine::store::Store::write_counts(&**s);
                tracing::debug!(target: "turnstile::store", writes, transactions, "job store writes");
            }
            // Machines have stopped and the sidecar is closed: flush the spans.
            telemetry.shutdown();
            // A plugin call stuck past its timeout keeps its blocking thread; do not wait
            // for it for ever on exit (dropping the runtime would).
            rt.shutdown_timeout(Duration::from_secs(1));
            code
        }
    }
}

impl Command {
    /// The `--plugins` paths of the command.
    fn plugins(&self) -> &[PathBuf] {
        match self {
            Command::Run { plugins, .. }
            | Command::Validate { plugins, .. }
            | Command::Diagram { plugins, .. } => plugins,
            Command::Jobs(_)
            | Command::MachineState(_)
            | Command::Events(_)
            | Command::SendEvent(_) => &[],
        }
    }
}

/// Loads the `--plugins` libraries into the registry, printing each failure (the others
/// still load; a config that needs a failed plugin then fails validation). Returns the
/// failures.
fn load_plugins(registry: &mut ActionRegistry, paths: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for path in paths {
        // A loaded plugin is logged by the host; failures are printed here.
        for e in registry
            .load_plugins(path)
            .into_iter()
            .filter_map(Result::err)
        {
            eprintln!("error: {e}");
            failed.push(e.to_string());
        }
    }
    failed
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

fn load_all(
    configs: &[PathBuf],
    machine_name: Option<&str>,
    registry: &ActionRegistry,
) -> Option<Vec<Arc<MachineDef>>> {
    let mut defs = Vec::new();
    let mut failed = false;
    for path in configs {
        let loaded = config::load_path(path, registry);
        print_diagnostics(&loaded.diagnostics);
        match loaded.def {
            Some(def) => defs.push(match machine_name {
                Some(n) => Arc::new(def.renamed(n)),
                None => def,
            }),
            None => {
                eprintln!("error: {} cannot run: fix the errors above", path.display());
                failed = true;
            }
        }
    }
    (!failed).then_some(defs)
}

async fn run(
    defs: Vec<Arc<MachineDef>>,
    opts: RunOptions,
    telemetry: &Arc<Telemetry>,
    plugins: &ActionRegistry,
) -> anyhow::Result<ExitCode> {
    let mut builder = Engine::builder().queue_capacity(opts.queue_capacity);
    if let Some(p) = &opts.persist {
        builder = builder.persist(p.clone());
    }
    let engine = telemetry.install(builder, plugins);
    // The sidecar binds before any machine runs (a taken port stops us before a machine
    // has done anything) and serves once every machine is registered (no request sees a
    // configured machine missing; early connections wait in the backlog).
    let bound = match opts.sidecar {
        Some(config) => match server::Bound::bind(config).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        },
        None => None,
    };
    let names: Vec<Arc<str>> = defs.iter().map(|d| d.name.clone()).collect();
    if let Err(e) = engine.spawn_all(defs) {
        eprintln!("error: cannot start the machines: {e}");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let sidecar = bound.map(|b| b.serve(engine.clone(), telemetry.clone()));
    let sockets = match &opts.sockets {
        Some(dir) => {
            // The engine's observer (the telemetry `install` attached).
            let observer = engine.observer().cloned();
            match turnstile_engine::sockets::SocketServer::start(&engine, dir, &names, observer) {
                Ok((s, _failed)) => Some(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    engine.shutdown();
                    engine.join().await;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        None => None,
    };
    let code = supervise(&engine, opts.watch, opts.stop_timeout, opts.keep_serving).await;
    if let Some(s) = sidecar {
        s.shutdown().await;
    }
    if let Some(s) = sockets {
        s.shutdown();
    }
    if let Some(p) = &opts.persist {
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5))).await;
    }
    code
}

/// Runs the machines until they all stop by themselves or a signal arrives.
async fn supervise(
    engine: &Engine,
    watch: Option<(Vec<WatchedConfig>, ActionRegistry, WatchOptions)>,
    stop_timeout: Duration,
    keep_serving: bool,
) -> anyhow::Result<ExitCode> {
    // Dropped on the way out: watching stops.
    let watcher = match watch {
        Some((configs, registry, options)) => {
            match reload::watch(engine.clone(), registry, configs, options) {
                Ok(w) => Some(w),
                Err(e) => {
                    eprintln!("error: --watch: {e}");
                    engine.shutdown();
                    engine.join().await;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        None => None,
    };
    let watching = watcher.is_some();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    // Wait for every machine to stop by itself, or for a signal; then the same wait goes
    // on, bounded by --stop-timeout, while the machines shut down.
    let all_done = engine.join();
    tokio::pin!(all_done);
    tokio::select! {
        () = &mut all_done, if !watching => {
            tracing::info!(target: "turnstile", "every machine reached a final state");
            if keep_serving {
                tracing::info!(
                    target: "turnstile",
                    "--keep-serving: the sidecar stays up until SIGINT/SIGTERM"
                );
                tokio::select! {
                    r = tokio::signal::ctrl_c() => {
                        r.context("cannot listen for SIGINT")?;
                        tracing::info!(target: "turnstile", "SIGINT: stopping");
                    }
                    _ = sigterm.recv() => tracing::info!(target: "turnstile", "SIGTERM: stopping"),
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        r = tokio::signal::ctrl_c() => {
            r.context("cannot listen for SIGINT")?;
            tracing::info!(target: "turnstile", "SIGINT: stopping");
        }
        _ = sigterm.recv() => tracing::info!(target: "turnstile", "SIGTERM: stopping"),
    }
    engine.shutdown();
    if tokio::time::timeout(stop_timeout, all_done).await.is_err() {
        eprintln!("error: machines did not stop within {stop_timeout:?}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(
    configs: &[PathBuf],
    strict: bool,
    format: Format,
    registry: &ActionRegistry,
) -> ExitCode {
    let results: Vec<(&Path, Loaded)> = configs
        .iter()
        .map(|p| (p.as_path(), config::load_path(p, registry)))
        .collect();
    let errors: usize = results.iter().map(|(_, l)| l.errors().count()).sum();
    let warnings: usize = results.iter().map(|(_, l)| l.warnings().count()).sum();
    match format {
        Format::Text => {
            for (path, l) in &results {
                for d in &l.diagnostics {
                    println!("{d}");
                }
                if l.diagnostics.is_empty() {
                    println!("{}: ok", path.display());
                }
            }
            println!(
                "{} file(s), {errors} error(s), {warnings} warning(s)",
                results.len()
            );
        }
        Format::Json => {
            let files: Vec<serde_json::Value> = results
                .iter()
                .map(|(path, l)| {
                    serde_json::json!({
                        "file": path.display().to_string(),
                        "machine": l.def.as_ref().map(|d| d.name.to_string()),
                        "diagnostics": l.diagnostics.iter().map(|d| serde_json::json!({
                            "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                            "code": d.code,
                            "line": d.loc.line,
                            "column": d.loc.column,
                            "message": d.message,
                            "hint": d.hint,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"files": files, "errors": errors, "warnings": warnings})
            );
        }
    }
    if errors > 0 || (strict && warnings > 0) {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
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
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
