//! Machine configs: YAML in, a runnable [`MachineDef`] or a list of precise problems out.
//!
//! Loading never panics and reports every problem of a file at once, each with its line,
//! column and a one-line hint.

pub mod compile;
pub mod diag;
pub mod model;
pub mod yaml;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use diag::{Diagnostic, Severity};

use crate::actions::ActionRegistry;
use crate::runtime::def::MachineDef;
use diag::Diagnostics;
use yaml::Loc;

/// The result of loading one config: the machine (when there is no error) and every
/// diagnostic, errors and warnings, sorted by position.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled machine; `None` when any error was found.
    pub def: Option<Arc<MachineDef>>,
    /// Everything found, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

/// A stable hash of a config's text, to tell whether a file really changed.
pub fn content_hash(text: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    text.hash(&mut h);
    h.finish()
}

/// Why a config file could not be read: a diagnostic (`unreadable` or `too-large`).
#[derive(Debug)]
pub struct ReadError {
    /// What the read failed with (`NotFound` for a missing file; `InvalidData` for a file
    /// over the limit or one that is not a regular file).
    pub kind: std::io::ErrorKind,
    /// The diagnostic code.
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// The hint.
    pub hint: &'static str,
}

impl ReadError {
    /// The error as the single diagnostic of a [`Loaded`].
    pub fn into_loaded(self, path: &Path) -> Loaded {
        single_error(path, self.code, self.message, self.hint)
    }
}

/// Reads a config file: a regular file (symbolic links are followed, so a Kubernetes
/// ConfigMap's links work) of at most [`yaml::MAX_CONFIG_BYTES`]. Never reads more than
/// one byte past the limit, whatever the file is, and never blocks on a FIFO.
pub fn read_config(path: &Path) -> Result<Vec<u8>, ReadError> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| ReadError {
        kind: e.kind(),
        code: "unreadable",
        message: format!("cannot read the file: {e}"),
        hint: "check the path and its permissions",
    };
    let not_a_file = |what: &str| ReadError {
        kind: std::io::ErrorKind::InvalidData,
        code: "unreadable",
        message: format!("not a regular file: it is {what}"),
        hint: "a machine config is a YAML file: is this the right path?",
    };
    let too_large = |size: String| ReadError {
        kind: std::io::ErrorKind::InvalidData,
        code: "too-large",
        message: format!(
            "file is {size} bytes; the limit for a machine config is {} bytes",
            yaml::MAX_CONFIG_BYTES
        ),
        hint: "a machine config is a few kilobytes: is this the right file?",
    };
    let kind_of = |m: &std::fs::Metadata| {
        let t = m.file_type();
        if t.is_dir() {
            return "a directory";
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt as _;
            if t.is_fifo() {
                return "a FIFO";
            }
            if t.is_char_device() || t.is_block_device() {
                return "a device";
            }
            if t.is_socket() {
                return "a socket";
            }
        }
        "not a regular file"
    };
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_a_file(kind_of(&meta)));
    }
    let limit = yaml::MAX_CONFIG_BYTES as u64;
    if meta.len() > limit {
        return Err(too_large(meta.len().to_string()));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        // Replaced by a FIFO since the check: do not wait for a writer.
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.custom_flags(nix::libc::O_NONBLOCK);
    }
    let file = opts.open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_a_file(kind_of(&meta)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        // Grew while it was read.
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(bytes)
}

/// Loads and compiles a config file.
pub fn load_path(path: &Path, registry: &ActionRegistry) -> Loaded {
    match read_config(path) {
        Ok(bytes) => load_bytes(bytes, path, registry),
        Err(e) => e.into_loaded(path),
    }
}

/// Compiles a config file's bytes, read once by the caller (the hot-reload watcher hashes
/// the same bytes it compiles). `path` is used for messages and the default name.
pub fn load_bytes(bytes: Vec<u8>, path: &Path, registry: &ActionRegistry) -> Loaded {
    if bytes.len() > yaml::MAX_CONFIG_BYTES {
        return single_error(
            path,
            "too-large",
            format!(
                "file is {} bytes; the limit for a machine config is {} bytes",
                bytes.len(),
                yaml::MAX_CONFIG_BYTES
            ),
            "a machine config is a few kilobytes: is this the right file?",
        );
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
            let col = upto.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            let mut d = Diagnostics::new(Some(path));
            d.error(
                "not-utf8",
                Loc {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    column: u32::try_from(col).unwrap_or(u32::MAX),
                },
                "the file is not valid UTF-8".into(),
                Some("save the file as UTF-8".into()),
            );
            return Loaded {
                def: None,
                diagnostics: d.into_vec(),
            };
        }
    };
    load_str(&text, Some(path), registry)
}

fn single_error(path: &Path, code: &'static str, message: String, hint: &str) -> Loaded {
    let mut d = Diagnostics::new(Some(path));
    d.error(code, Loc { line: 1, column: 1 }, message, Some(hint.into()));
    Loaded {
        def: None,
        diagnostics: d.into_vec(),
    }
}

/// Loads and compiles config text; `path` is used for messages and the default name.
pub fn load_str(text: &str, path: Option<&Path>, registry: &ActionRegistry) -> Loaded {
    let mut d = Diagnostics::new(path);
    d.set_text(text);
    let root = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            d.error(e.code, e.loc, e.message, Some(e.hint));
            return Loaded {
                def: None,
                diagnostics: d.into_vec(),
            };
        }
    };
    let spec = model::read_machine(&mut d, &root, path);
    // Plugins the config names are loaded before it is compiled, so that their action
    // types validate; they are available to this config only.
    let with_plugins;
    let registry = if spec.plugins.is_empty() {
        registry
    } else {
        with_plugins = registry.with_config_plugins(&spec.plugins, path, &mut d);
        &with_plugins
    };
    let def = compile::compile(&spec, registry, &mut d, content_hash(text)).map(|mut def| {
        def.source = path.map(PathBuf::from);
        Arc::new(def)
    });
    let def = if d.has_errors() { None } else { def };
    Loaded {
        def,
        diagnostics: d.into_vec(),
    }
}
