//! Config diagnostics: what is wrong, where, and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

use super::yaml::Loc;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config still runs; `validate --strict` refuses it.
    Warning,
    /// The config cannot run.
    Error,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable short code, e.g. `unknown-state`, so tooling and tests can match on it.
    pub code: &'static str,
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// Line and column.
    pub loc: Loc,
    /// What is wrong.
    pub message: String,
    /// One line saying how to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.file {
            Some(p) => write!(f, "{}:{}: ", p.display(), self.loc)?,
            None => write!(f, "<config>:{}: ", self.loc)?,
        }
        write!(f, "{sev}[{}]: {}", self.code, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file.
#[derive(Debug, Default)]
pub struct Diagnostics {
    file: Option<PathBuf>,
    items: Vec<Diagnostic>,
    /// The config text, to point inside values ([`Diagnostics::locate`]).
    text: Option<std::sync::Arc<str>>,
}

impl Diagnostics {
    /// The file these diagnostics are about, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// An empty collection for `file`.
    pub fn new(file: Option<&Path>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            items: Vec::new(),
            text: None,
        }
    }

    /// Keeps the config text, so that [`Diagnostics::locate`] can point inside values.
    pub fn set_text(&mut self, text: &str) {
        self.text = Some(std::sync::Arc::from(text));
    }

    /// The position of the `nth` (0-based) occurrence of `needle` at or after `from` in
    /// the config text; `from` itself when the text is unknown or has no such occurrence.
    pub fn locate(&self, from: Loc, needle: &str, nth: usize) -> Loc {
        let Some(text) = self.text.as_deref() else {
            return from;
        };
        if needle.is_empty() || from.line == 0 {
            return from;
        }
        // Byte offset of `from` (1-based line and column, columns in characters).
        let mut line_start = 0;
        for _ in 1..from.line {
            match text[line_start..].find('\n') {
                Some(k) => line_start += k + 1,
                None => return from,
            }
        }
        let start = text[line_start..]
            .char_indices()
            .nth(from.column.saturating_sub(1) as usize)
            .map_or(text.len(), |(k, _)| line_start + k);
        let Some((found, _)) = text[start..].match_indices(needle).nth(nth) else {
            return from;
        };
        let at = start + found;
        let line = text[..at].matches('\n').count() + 1;
        let col_start = text[..at].rfind('\n').map_or(0, |k| k + 1);
        Loc {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(text[col_start..at].chars().count() + 1).unwrap_or(u32::MAX),
        }
    }

    /// Records an error.
    pub fn error(&mut self, code: &'static str, loc: Loc, message: String, hint: Option<String>) {
        self.push(Severity::Error, code, loc, message, hint);
    }

    /// Records a warning.
    pub fn warn(&mut self, code: &'static str, loc: Loc, message: String, hint: Option<String>) {
        self.push(Severity::Warning, code, loc, message, hint);
    }

    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        loc: Loc,
        message: String,
        hint: Option<String>,
    ) {
        self.items.push(Diagnostic {
            severity,
            code,
            file: self.file.clone(),
            loc,
            message,
            hint,
        });
    }

    /// True when at least one error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// All diagnostics, sorted by position.
    pub fn into_vec(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by_key(|d| (d.loc, std::cmp::Reverse(d.severity)));
        self.items
    }
}

/// The closest of `candidates` to `word`, when one is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(&str, f64)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        if score > best.map_or(0.0, |b| b.1) {
            best = Some((c, score));
        }
    }
    best.filter(|b| b.1 >= 0.8).map(|b| b.0)
}

/// A hint string: "did you mean `x`?" when there is a near match, else `fallback`.
pub fn suggest<'a, I>(word: &str, candidates: I, fallback: impl FnOnce() -> String) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match did_you_mean(word, candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => fallback(),
    }
}

/// A JSON value's kind in words, for error messages ("found a list").
pub fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_is_suggested() {
        assert_eq!(
            did_you_mean("transitons", ["states", "transitions", "actions"]),
            Some("transitions")
        );
        assert_eq!(did_you_mean("zzz", ["states", "transitions"]), None);
    }
}
