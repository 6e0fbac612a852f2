//! Log setup: human-readable lines by default, JSON lines with `--log-format json`.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    /// One readable line per record.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags shared by every command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `turnstile::transition=warn,info`, ...); RUST_LOG wins.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
}

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
