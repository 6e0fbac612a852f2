//! `turnstile`: run, validate and draw state machines declared in YAML.

mod cli;
mod jobs_cli;
mod logging;

use std::process::ExitCode;

use clap::Parser;

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
    let args = cli::Cli::parse();
    logging::init(&args.log);
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A command line that cannot work exits 2, like clap's own usage errors.
            match e.downcast_ref::<UsageError>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::from(1),
            }
        }
    }
}
