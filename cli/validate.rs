//! `turnstile validate`, and the printing of a config's diagnostics that `run` and
//! `diagram` share.
//!
//! `validate` reports every problem of every config (as text or JSON, on stdout) and its
//! exit code says whether they may run; the commands that go on to use a config print its
//! diagnostics on stderr instead, through [`print_diagnostics`], so that their stdout stays
//! their own output.

use std::path::Path;
use std::process::ExitCode;

use turnstile_engine::config::{self, Diagnostic, Loaded, Severity};
use turnstile_engine::ActionRegistry;

use crate::args::{Format, ValidateArgs};
use crate::EXIT_INVALID;

/// `turnstile validate`: exits 2 on errors (on warnings too with `--strict`), and when a
/// `--plugins` library failed to load (`plugins_failed`), whatever the configs say.
pub fn validate(args: &ValidateArgs, registry: &ActionRegistry, plugins_failed: bool) -> ExitCode {
    let results: Vec<(&Path, Loaded)> = args
        .configs
        .iter()
        .map(|p| (p.as_path(), config::load_path(p, registry)))
        .collect();
    let errors: usize = results.iter().map(|(_, l)| l.errors().count()).sum();
    let warnings: usize = results.iter().map(|(_, l)| l.warnings().count()).sum();
    match args.format {
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
    if plugins_failed || errors > 0 || (args.strict && warnings > 0) {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints a config's diagnostics on stderr, one per line.
pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}
