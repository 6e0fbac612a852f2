//! `turnstile diagram`: a machine as a Mermaid `stateDiagram-v2` on stdout.
//!
//! The drawing itself is the engine's (`turnstile_engine::diagram`); this file loads the
//! config and prints its diagnostics on stderr, so that stdout carries only the diagram.

use std::process::ExitCode;

use turnstile_engine::{config, ActionRegistry};

use crate::args::DiagramArgs;
use crate::validate::print_diagnostics;
use crate::EXIT_INVALID;

/// `turnstile diagram`: prints the diagram, or the config's errors and exits 2.
pub fn diagram(args: &DiagramArgs, registry: &ActionRegistry) -> ExitCode {
    let loaded = config::load_path(&args.config, registry);
    print_diagnostics(&loaded.diagnostics);
    match loaded.def {
        Some(def) => {
            print!("{}", turnstile_engine::diagram::mermaid(&def));
            ExitCode::SUCCESS
        }
        None => ExitCode::from(EXIT_INVALID),
    }
}
