//! `turnstile`: run, validate and draw state machines declared in YAML.
//!
//! This file parses the command line, loads the `--plugins` libraries that `run`,
//! `validate` and `diagram` share, and hands each command to the file that carries it
//! out: `args.rs` is the command line's shape, `run.rs`, `validate.rs`, `diagram.rs` and
//! `jobs_cli.rs` the commands (`jobs_admin.rs`: `jobs list|show|retry|cancel`, on a
//! store or, with `sidecar_client.rs`, through a sidecar; `tail.rs` and `ctl.rs`: a
//! sidecar's stream and its live operations; `bridge.rs`: events across processes), `logging.rs` the log setup. What every command may need
//! from here is the exit status of a usage error ([`UsageError`], [`EXIT_INVALID`]).

mod args;
mod bridge;
mod ctl;
mod db;
mod diagram;
mod jobs_admin;
mod jobs_cli;
mod logging;
mod run;
mod sidecar_client;
mod singleton;
mod tail;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use turnstile_engine::instance::Instance;
use turnstile_engine::ActionRegistry;

use crate::args::{Cli, Command};

/// Exit code for usage errors and invalid configs.
pub const EXIT_INVALID: u8 = 2;

/// A command line that cannot work, found after clap parsed it (the process exits 2, as
/// for clap's own usage errors). Used where clap's message would echo a secret.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let args = Cli::parse();
    // `run` names its instance on its log lines, so it is known before logging starts.
    let instance = match &args.command {
        Command::Run(run) => match Instance::new(run.instance_id.as_deref()) {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!("error: --instance-id: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        },
        _ => None,
    };
    for name in &args.redact {
        if let Err(why) = turnstile_engine::redact::check_name(name) {
            eprintln!("error: --redact (or TURNSTILE_REDACT): {why}; give field names, e.g. `--redact iban,pin`");
            return ExitCode::from(EXIT_INVALID);
        }
    }
    turnstile_engine::redact::extend_global(&args.redact);
    logging::init(&args.log, instance.as_ref().map(Instance::id));
    match dispatch(args, instance) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A command line that cannot work exits 2, like clap's own usage errors.
            match e.downcast_ref::<UsageError>() {
                Some(_) => ExitCode::from(EXIT_INVALID),
                None => ExitCode::from(1),
            }
        }
    }
}

/// Runs the chosen command; the `ExitCode` is the process's.
fn dispatch(cli: Cli, instance: Option<Instance>) -> anyhow::Result<ExitCode> {
    let mut registry = ActionRegistry::with_builtins();
    let plugin_errors = load_plugins(&mut registry, cli.command.plugins());
    match cli.command {
        Command::Run(args) => {
            let instance = match instance {
                Some(i) => i,
                None => Instance::new(args.instance_id.as_deref()).map_err(UsageError)?,
            };
            run::run(args, instance, &registry, &plugin_errors)
        }
        Command::Validate(args) => Ok(validate::validate(
            &args,
            &registry,
            !plugin_errors.is_empty(),
        )),
        Command::Diagram(args) => Ok(diagram::diagram(&args, &registry)),
        Command::Jobs(cmd) => jobs_cli::jobs(cmd),
        Command::MachineState(args) => jobs_cli::machine_state(args),
        Command::Events(cmd) => jobs_cli::events(cmd),
        Command::SendEvent(mut args) => match args.db.take() {
            Some(db) => bridge::send_through_store(args, db),
            None => jobs_cli::send_event(args),
        },
        Command::Tail(args) => tail::tail(args),
        Command::Ctl(args) => ctl::ctl(args),
        Command::HashPassword(args) => hash_password(&args),
    }
}

/// `hash-password`: the first line of stdin, hashed.
fn hash_password(args: &args::HashPasswordArgs) -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| UsageError(format!("cannot read the password from stdin: {e}")))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(
            UsageError("no password on stdin (an empty password is refused)".into()).into(),
        );
    }
    let hash = turnstile_exporter::server::web::hash_password(password, args.cost)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
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
