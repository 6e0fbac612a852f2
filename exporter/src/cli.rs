//! The command line: `run`, `validate`, `diagram`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use turnstile_engine::config::{self, Diagnostic, Loaded, Severity};
use turnstile_engine::{ActionRegistry, Engine, MachineDef};

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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Runs the chosen command; the `ExitCode` is the process's.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut registry = ActionRegistry::with_builtins();
    let plugins_failed = load_plugins(&mut registry, cli.command.plugins());
    match cli.command {
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
            ..
        } => {
            if machine_name.is_some() && configs.len() != 1 {
                eprintln!("error: --machine-name needs exactly one config");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            let Some(defs) = load_all(&configs, machine_name.as_deref(), &registry) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let stop_timeout = Duration::try_from_secs_f64(stop_timeout)
                .context("--stop-timeout must be a number of seconds")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let code = rt.block_on(run(defs, queue_capacity, stop_timeout));
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
        }
    }
}

/// Loads the `--plugins` libraries into the registry, printing each failure (the others
/// still load; a config that needs a failed plugin then fails validation). True when
/// something failed.
fn load_plugins(registry: &mut ActionRegistry, paths: &[PathBuf]) -> bool {
    let mut failed = false;
    for path in paths {
        // A loaded plugin is logged by the host; failures are printed here.
        for e in registry
            .load_plugins(path)
            .into_iter()
            .filter_map(Result::err)
        {
            eprintln!("error: {e}");
            failed = true;
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
    queue_capacity: usize,
    stop_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let engine = Engine::builder().queue_capacity(queue_capacity).build();
    if let Err(e) = engine.spawn_all(defs) {
        eprintln!("error: cannot start the machines: {e}");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    // Wait for every machine to stop by itself, or for a signal; then the same wait goes
    // on, bounded by --stop-timeout, while the machines shut down.
    let all_done = engine.join();
    tokio::pin!(all_done);
    tokio::select! {
        () = &mut all_done => {
            tracing::info!(target: "turnstile", "every machine reached a final state");
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
