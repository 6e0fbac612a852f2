//! Redaction of secrets wherever Turnstile shows data.
//!
//! A [`Redactor`] holds a list of names (lowercase). A field whose name contains one of
//! them, case-insensitively, is sensitive: `db_password` and `Access_Token` match
//! `password` and `token`. Where Turnstile shows data (the sidecar's `/machines/{name}`,
//! `jobs list`, `machine-state --format json`, ...), [`Redactor::redact_json`] replaces the
//! value of every sensitive field, at any depth and of any type, with `"[redacted]"`; a
//! message or command line whose placeholders read a sensitive field
//! (`{payload.api_token}`) is recorded with `[redacted]` in their place
//! (`Template::render_shown` in `runtime/template.rs`).
//!
//! Only what is shown is redacted: the machine's context, the events it receives and the
//! store keep the real values (the machine needs them, also after a restart).
//!
//! One list serves the whole process ([`global`]): the default names
//! ([`DEFAULT_NAMES`]), extended by `--redact` and by the `redact:` key of every config
//! the process loads ([`extend_global`]); names are added, never removed while the
//! process runs. Redacting is cheap when nothing matches: no allocation, no copy.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value as Json};

/// What a sensitive value is shown as.
pub const REDACTED: &str = "[redacted]";

/// The names redacted by default.
pub const DEFAULT_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "private_key",
];

/// Which field names are sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redactor {
    /// Lowercase, sorted, without duplicates or empty names.
    names: Vec<String>,
}

impl Default for Redactor {
    /// The default names.
    fn default() -> Self {
        Self::new(DEFAULT_NAMES.iter().copied())
    }
}

/// Why a name cannot be added to the list (`--redact`, `redact:`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("an empty name would redact every field".into());
    }
    if name.trim() != name {
        return Err(format!(
            "`{name}` starts or ends with white space; field names are matched as written"
        ));
    }
    Ok(())
}

/// True when `hay` contains `needle` (lowercase), ignoring case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    if needle.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.as_bytes());
        return n.len() <= h.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    }
    hay.to_lowercase().contains(needle)
}

impl Redactor {
    /// A redactor of these names (lowercased; empty ones ignored).
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut r = Redactor { names: Vec::new() };
        r.add(names);
        r
    }

    /// The default names and these.
    pub fn with_defaults<S: AsRef<str>>(extra: impl IntoIterator<Item = S>) -> Self {
        let mut r = Self::default();
        r.add(extra);
        r
    }

    /// Adds names; returns true when one was new.
    pub fn add<S: AsRef<str>>(&mut self, names: impl IntoIterator<Item = S>) -> bool {
        let before = self.names.len();
        for n in names {
            let n = n.as_ref().trim().to_lowercase();
            if !n.is_empty() {
                self.names.push(n);
            }
        }
        self.names.sort();
        self.names.dedup();
        self.names.len() != before
    }

    /// The names, lowercase and sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// True when a field of this name is redacted.
    pub fn is_sensitive(&self, key: &str) -> bool {
        self.names.iter().any(|n| contains_ci(key, n))
    }

    /// True when `v` holds a sensitive field at any depth.
    fn finds(&self, v: &Json) -> bool {
        match v {
            Json::Object(m) => m.iter().any(|(k, v)| self.is_sensitive(k) || self.finds(v)),
            Json::Array(a) => a.iter().any(|v| self.finds(v)),
            _ => false,
        }
    }

    fn redact_in_place(&self, v: &mut Json) {
        match v {
            Json::Object(m) => self.redact_map_in_place(m),
            Json::Array(a) => a.iter_mut().for_each(|v| self.redact_in_place(v)),
            _ => {}
        }
    }

    fn redact_map_in_place(&self, m: &mut Map<String, Json>) {
        for (k, v) in m.iter_mut() {
            if self.is_sensitive(k) {
                *v = Json::String(REDACTED.to_owned());
            } else {
                self.redact_in_place(v);
            }
        }
    }

    /// `v` with the value of every sensitive field, at any depth, replaced by
    /// `"[redacted]"`; borrowed (no copy) when there is none.
    pub fn redact_json<'a>(&self, v: &'a Json) -> Cow<'a, Json> {
        if !self.finds(v) {
            return Cow::Borrowed(v);
        }
        let mut v = v.clone();
        self.redact_in_place(&mut v);
        Cow::Owned(v)
    }

    /// [`Redactor::redact_json`] of a mapping (a machine's context).
    pub fn redact_map<'a>(&self, m: &'a Map<String, Json>) -> Cow<'a, Map<String, Json>> {
        if !m.iter().any(|(k, v)| self.is_sensitive(k) || self.finds(v)) {
            return Cow::Borrowed(m);
        }
        let mut m = m.clone();
        self.redact_map_in_place(&mut m);
        Cow::Owned(m)
    }

    /// Redacts `v` where it is (for a value about to be shown and owned already).
    pub fn redact_owned(&self, v: &mut Json) {
        if self.finds(v) {
            self.redact_in_place(v);
        }
    }

    /// True when a dotted path (a placeholder's) goes through a sensitive field.
    pub fn path_is_sensitive<S: AsRef<str>>(&self, path: &[S]) -> bool {
        path.iter().any(|seg| self.is_sensitive(seg.as_ref()))
    }
}

static GLOBAL: RwLock<Option<Arc<Redactor>>> = RwLock::new(None);

/// The process's redactor: the default names and those added by [`extend_global`].
pub fn global() -> Arc<Redactor> {
    let g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    match &*g {
        Some(r) => r.clone(),
        None => {
            drop(g);
            let mut w = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
            w.get_or_insert_with(|| Arc::new(Redactor::default()))
                .clone()
        }
    }
}

/// Adds names to the process's redactor (`--redact`, a config's `redact:`).
pub fn extend_global<S: AsRef<str>>(names: impl IntoIterator<Item = S>) {
    let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
    if names.is_empty() {
        return;
    }
    let mut w = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    let mut r = w.as_deref().cloned().unwrap_or_default();
    if r.add(&names) {
        *w = Some(Arc::new(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_match_as_case_insensitive_substrings() {
        let r = Redactor::default();
        for k in [
            "password",
            "db_password",
            "DB_PASSWORD",
            "access_token",
            "X-Api_Key",
            "apikey",
            "Authorization",
            "set-cookie",
            "ssh_private_key",
            "client_secret",
            "passwd",
        ] {
            assert!(r.is_sensitive(k), "{k}");
        }
        for k in ["user", "job_id", "pass", "key", "api", "tok", "", "données"] {
            assert!(!r.is_sensitive(k), "{k}");
        }
        let r = Redactor::new(["Schlüssel"]);
        assert_eq!(r.names(), ["schlüssel"]);
        assert!(r.is_sensitive("mein_SCHLÜSSEL"));
        assert!(!r.is_sensitive("schluessel"));
    }

    #[test]
    fn values_are_replaced_at_any_depth_whatever_their_type() {
        let r = Redactor::default();
        let v = json!({
            "user": "ann",
            "db_password": "S3CRET",
            "n_tokens": 42,
            "auth": {"api_key": {"id": 1, "value": "k"}, "cookies": ["a", "b"], "ok": true},
            "list": [{"secret": null}, {"plain": "x"}, ["Token", {"Token": false}]],
        });
        let out = r.redact_json(&v);
        assert!(matches!(out, Cow::Owned(_)));
        assert_eq!(
            out.into_owned(),
            json!({
                "user": "ann",
                "db_password": "[redacted]",
                "n_tokens": "[redacted]",
                "auth": {"api_key": "[redacted]", "cookies": "[redacted]", "ok": true},
                "list": [{"secret": "[redacted]"}, {"plain": "x"}, ["Token", {"Token": "[redacted]"}]],
            })
        );
        // Scalars and strings that merely contain a name are not fields.
        assert_eq!(
            r.redact_json(&json!("password")),
            Cow::Borrowed(&json!("password"))
        );
    }

    #[test]
    fn nothing_sensitive_is_not_copied() {
        let r = Redactor::default();
        let v = json!({"a": {"b": [1, {"c": "password"}]}, "user": "x"});
        assert!(matches!(r.redact_json(&v), Cow::Borrowed(b) if std::ptr::eq(b, &v)));
        let m = v.as_object().cloned().unwrap_or_default();
        assert!(matches!(r.redact_map(&m), Cow::Borrowed(b) if std::ptr::eq(b, &m)));
        let mut owned = v.clone();
        r.redact_owned(&mut owned);
        assert_eq!(owned, v);
    }

    #[test]
    fn the_list_extends_and_paths_are_checked_segment_by_segment() {
        let mut r = Redactor::with_defaults(["IBAN", "iban", " "]);
        assert!(r.names().contains(&"iban".to_owned()));
        assert!(!r.names().iter().any(String::is_empty));
        assert!(r.is_sensitive("customer_Iban"));
        assert!(!r.add(["token"]), "already there");
        assert!(r.path_is_sensitive(&["payload", "db_password"]));
        assert!(r.path_is_sensitive(&["Authorization"]));
        assert!(!r.path_is_sensitive(&["payload", "user", "0"]));
        let m = json!({"payload": {"iban": "DE00"}});
        assert_eq!(
            r.redact_map(m.as_object().unwrap_or(&Map::new()))
                .get("payload"),
            Some(&json!({"iban": "[redacted]"}))
        );
        assert!(check_name("").is_err());
        assert!(check_name(" x").is_err());
        assert!(check_name("iban").is_ok());
    }

    #[test]
    fn the_process_list_only_grows() {
        extend_global(["zz_unit_test_name"]);
        let g = global();
        assert!(g.is_sensitive("my_ZZ_unit_test_name"));
        assert!(g.is_sensitive("password"));
        extend_global(Vec::<String>::new());
        assert!(global().is_sensitive("zz_unit_test_name"));
    }
}
