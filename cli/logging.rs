//! Log setup: human-readable lines by default, JSON lines with `--log-format json`.
//!
//! In human lines, control characters in messages and field values (newline, carriage
//! return, NUL, ESC and the other C0/C1 controls, U+2028/U+2029) are written escaped
//! (`\n`, `\r`, `\0`, `\u{1b}`), so that a value interpolated into a message (a `log`
//! action, a command's output) cannot forge a log line or send terminal escapes; tabs are
//! kept. JSON lines are escaped by the JSON encoding.
//!
//! `turnstile run` names its instance (`--instance-id`) on every JSON line (`"instance"`),
//! so that the lines of many replicas shipped to one place can be told apart.

use std::fmt;

use clap::{Args, ValueEnum};
use tracing::field::Field;
use tracing_subscriber::field::MakeExt as _;

use tracing_subscriber::fmt::format::{debug_fn, Writer};
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
/// `instance`: the id JSON lines carry (`turnstile run`).
pub fn init(args: &LogArgs, instance: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Human => builder
            .fmt_fields(debug_fn(write_field).delimited(" "))
            .init(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format().json().flatten_event(true);
            builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(WithInstance {
                    inner: json,
                    field: instance
                        .map(|id| format!("\"instance\":{},", serde_json::Value::from(id))),
                })
                .init()
        }
    }
}

/// A JSON line format with `"instance":ID` first in every object.
struct WithInstance<F> {
    inner: F,
    /// `"instance":"ID",` (`None`: lines as the inner format writes them).
    field: Option<String>,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithInstance<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some(field) = &self.field else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{field}{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// Writes one field of a human log line (`message` bare, others as `name=value`), with
/// control characters escaped.
fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    if field.name() != "message" {
        write!(w, "{}=", field.name())?;
    }
    fmt::write(&mut Escaping(w), format_args!("{value:?}"))
}

/// A writer that escapes control characters (tab excepted) on their way through.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if c == '\t' || !(c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
                continue;
            }
            self.0.write_str(&s[plain..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\0' => self.0.write_str("\\0")?,
                other => write!(self.0, "\\u{{{:x}}}", u32::from(other))?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        fmt::write(
            &mut Escaping(&mut out),
            format_args!("a\nb\r\0c\u{1b}[31m\td\u{85}\u{2028}é"),
        )
        .unwrap();
        assert_eq!(out, "a\\nb\\r\\0c\\u{1b}[31m\td\\u{85}\\u{2028}é");
    }
}
