//! What a compiled [`ShellTemplate`] gives when its action runs: the environment that
//! carries the rendered values (`TURNSTILE_ARG_n`, with the integer check of the values
//! in numeric places), and the values for error records.

use serde_json::Value as Json;

use super::{ShellTemplate, ARG_PREFIX};
use crate::runtime::template::{push_text, resolve_checked, Placeholder, Scope};

impl ShellTemplate {
    /// Renders each placeholder: `(variable name, value)` pairs for the child's environment.
    /// Fails when a filter fails (`int` on a value that is not an integer), when a
    /// placeholder ending in `|int` has no value, or when a placeholder in a numeric place
    /// is not an integer. Messages name the placeholder, never its value.
    pub fn env(&self, scope: &dyn Scope) -> Result<Vec<(String, String)>, String> {
        self.args
            .iter()
            .zip(&self.numeric)
            .enumerate()
            .map(|(n, (ph, &numeric))| {
                let mut v = String::new();
                match resolve_checked(ph, scope)? {
                    Some(j) => push_text(&mut v, &j),
                    None if ph.ends_with_int() => {
                        return Err(format!(
                            "`{}` has no value, and an integer is required",
                            ph.raw
                        ));
                    }
                    None => v.push_str(&ph.raw),
                }
                if numeric && !is_integer(&v) {
                    return Err(format!(
                        "`{}` is not an integer: a value in a numeric place of a shell command must be one (bash would evaluate anything else as code)",
                        ph.raw
                    ));
                }
                Ok((format!("{ARG_PREFIX}{n}"), v))
            })
            .collect()
    }

    /// The values of the placeholders, for error records: placeholder as written → value
    /// (placeholders that do not resolve are left out; a value a filter refused is shown
    /// unfiltered).
    pub fn values(&self, scope: &dyn Scope) -> serde_json::Map<String, Json> {
        let mut out = serde_json::Map::new();
        for ph in &self.args {
            if out.contains_key(&ph.raw) {
                continue;
            }
            let v = match resolve_checked(ph, scope) {
                Ok(v) => v.map(std::borrow::Cow::into_owned),
                Err(_) => {
                    let bare = Placeholder {
                        filters: Vec::new(),
                        ..ph.clone()
                    };
                    resolve_checked(&bare, scope)
                        .ok()
                        .flatten()
                        .map(std::borrow::Cow::into_owned)
                }
            };
            if let Some(v) = v {
                let mut text = String::new();
                push_text(&mut text, &v);
                out.insert(ph.raw.clone(), Json::String(text));
            }
        }
        out
    }
}

/// True for an integer as bash arithmetic reads it safely: optional sign, decimal digits.
pub(super) fn is_integer(v: &str) -> bool {
    let t = v.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}
