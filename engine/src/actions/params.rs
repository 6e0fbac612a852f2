//! Reading an action's parameters with precise errors.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::config::diag::{did_you_mean, json_type_name};
use crate::config::model::ActionSpec;
use crate::config::yaml::Loc;
use crate::runtime::template::{JsonTemplate, Template};

/// A problem with one parameter.
#[derive(Debug, Clone)]
pub struct ParamIssue {
    /// True for errors, false for warnings.
    pub is_error: bool,
    /// Where.
    pub loc: Loc,
    /// What.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The diagnostic code, when not the usual one (`bad-parameter` / `parameter`).
    pub code: Option<&'static str>,
    /// Text to point at inside the parameter's value: its `n`-th occurrence (0-based)
    /// after where the value starts in the file.
    pub near: Option<(String, usize)>,
}

const PLACEHOLDER_HINT: &str =
    "placeholders look like `{name}`, `{a.b}` or `{name|default:0}`; filters: length, default, upper, lower, trim, json";

/// A compiled definition as an action holds it (an `Arc<MachineDef>`, typed as `Any`: the
/// actions cannot name `MachineDef` without an import cycle).
pub type Seed = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// How an action compiles a config file it names (`start_fsm`'s `yaml_path`): the
/// definition, or the file's errors as text. The config compiler provides it.
pub type Loader<'a> = &'a dyn Fn(&std::path::Path) -> Result<Seed, Vec<String>>;

/// Parameters accepted by every action and ignored (statemachine-engine compatibility).
pub(crate) const COMMON: &[&str] = &["repeatable", "run_policy"];

/// Typed access to an action's parameters; remembers which were read so that the rest
/// can be reported as unknown.
pub struct Params<'a> {
    spec: &'a ActionSpec,
    read: HashSet<&'static str>,
    /// Set by [`Params::take_all`]: no parameter is reported as unknown.
    all_read: bool,
    issues: Vec<ParamIssue>,
    written_events: Vec<(String, Loc)>,
    /// The config file the action is in, when known.
    config: Option<&'a std::path::Path>,
    /// How to compile a config file the action names.
    loader: Option<Loader<'a>>,
}

impl<'a> Params<'a> {
    /// Wraps a spec.
    pub fn new(spec: &'a ActionSpec) -> Self {
        Self {
            spec,
            read: HashSet::new(),
            all_read: false,
            issues: Vec::new(),
            written_events: Vec::new(),
            config: None,
            loader: None,
        }
    }

    /// Says which config file the action is in and how it compiles a file it names.
    #[must_use]
    pub fn in_config(mut self, config: Option<&'a std::path::Path>, loader: Loader<'a>) -> Self {
        self.config = config;
        self.loader = Some(loader);
        self
    }

    /// The config file the action is in, when known.
    pub fn config_file(&self) -> Option<&'a std::path::Path> {
        self.config
    }

    /// How to compile a config file the action names, when known.
    pub fn loader(&self) -> Option<Loader<'a>> {
        self.loader
    }

    /// The action type.
    pub fn kind(&self) -> &str {
        &self.spec.kind.value
    }

    /// The whole spec.
    pub fn spec(&self) -> &ActionSpec {
        self.spec
    }

    /// A raw parameter.
    pub fn raw(&mut self, key: &'static str) -> Option<&'a Json> {
        self.read.insert(key);
        self.spec.params.get(key)
    }

    /// Every parameter, for actions that pass them all on (plugins); none is then reported
    /// as unknown by [`Params::finish`].
    pub fn take_all(&mut self) -> &'a serde_json::Map<String, Json> {
        self.all_read = true;
        &self.spec.params
    }

    /// Records an error about `key`.
    pub fn error(&mut self, key: &str, message: String, hint: Option<String>) {
        self.issues.push(ParamIssue {
            is_error: true,
            loc: self.spec.loc_of(key),
            message: format!("`{}` action: {message}", self.spec.kind.value),
            hint,
            code: None,
            near: None,
        });
    }

    /// Records an error about `key` with its own diagnostic `code`, pointing at the
    /// `near.1`-th occurrence of the text `near.0` inside the value when given.
    pub fn error_at(
        &mut self,
        key: &str,
        code: &'static str,
        message: String,
        hint: Option<String>,
        near: Option<(String, usize)>,
    ) {
        self.issues.push(ParamIssue {
            is_error: true,
            loc: self.spec.loc_of(key),
            message: format!("`{}` action: {message}", self.spec.kind.value),
            hint,
            code: Some(code),
            near,
        });
    }

    /// Records a warning about `key`.
    pub fn warn(&mut self, key: &str, message: String, hint: Option<String>) {
        self.issues.push(ParamIssue {
            is_error: false,
            loc: self.spec.loc_of(key),
            message: format!("`{}` action: {message}", self.spec.kind.value),
            hint,
            code: None,
            near: None,
        });
    }

    /// A string parameter (numbers and booleans are accepted as their text).
    pub fn string(&mut self, key: &'static str) -> Option<String> {
        match self.raw(key)? {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(n.to_string()),
            Json::Bool(b) => Some(b.to_string()),
            Json::Null => None,
            other => {
                let t = json_type_name(other);
                self.error(
                    key,
                    format!("`{key}` must be a string, found {t}"),
                    Some(format!("write `{key}: \"...\"` (quote it)")),
                );
                None
            }
        }
    }

    /// A required string parameter.
    pub fn required_string(&mut self, key: &'static str, example: &str) -> Option<String> {
        let v = self.string(key);
        if v.is_none() && !self.spec.params.contains_key(key) {
            self.error(
                key,
                format!("missing parameter `{key}`"),
                Some(format!("add `{key}: {example}`")),
            );
        }
        v
    }

    /// A string template parameter (`{placeholders}` allowed).
    pub fn template(&mut self, key: &'static str) -> Option<Template> {
        let s = self.string(key)?;
        match Template::parse(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(key, e, Some(PLACEHOLDER_HINT.into()));
                None
            }
        }
    }

    /// Any JSON parameter, with placeholders in its strings.
    pub fn json_template(&mut self, key: &'static str) -> Option<JsonTemplate> {
        let v = self.raw(key)?;
        match JsonTemplate::compile(v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(key, e, Some(PLACEHOLDER_HINT.into()));
                None
            }
        }
    }

    /// An event name parameter, or `default`. Events written in the config are recorded
    /// so that validation can check that a transition accepts them.
    pub fn event(&mut self, key: &'static str, default: Option<&str>) -> Option<Arc<str>> {
        match self.string(key) {
            Some(s) if !s.is_empty() => {
                self.written_events.push((s.clone(), self.spec.loc_of(key)));
                Some(Arc::from(s))
            }
            _ => default.map(Arc::from),
        }
    }

    /// Records an event written in the config under some other parameter (e.g. a mapping).
    pub fn written_event(&mut self, key: &str, event: &str) {
        self.written_events
            .push((event.to_owned(), self.spec.loc_of(key)));
    }

    /// A duration in seconds (decimals allowed), or `default`.
    pub fn seconds(&mut self, key: &'static str, default: Option<f64>) -> Option<Duration> {
        let secs = match self.raw(key) {
            None | Some(Json::Null) => default?,
            Some(Json::Number(n)) => n.as_f64().unwrap_or(-1.0),
            Some(Json::String(s)) => match s.trim().parse::<f64>() {
                Ok(v) => v,
                Err(_) => {
                    self.error(
                        key,
                        format!("`{key}` must be a number of seconds, found `{s}`"),
                        Some(format!("write e.g. `{key}: 5` or `{key}: 0.5`")),
                    );
                    return None;
                }
            },
            Some(other) => {
                let t = json_type_name(other);
                self.error(
                    key,
                    format!("`{key}` must be a number of seconds, found {t}"),
                    Some(format!("write e.g. `{key}: 5` or `{key}: 0.5`")),
                );
                return None;
            }
        };
        if !secs.is_finite() || !(0.0..=31_536_000.0).contains(&secs) {
            self.error(
                key,
                format!("`{key}` must be between 0 and 31536000 seconds, found {secs}"),
                Some(format!("write e.g. `{key}: 5` or `{key}: 0.5`")),
            );
            return None;
        }
        Some(Duration::from_secs_f64(secs))
    }

    /// A boolean parameter (`true`, `"yes"`, `1`, ...), or `default`.
    pub fn flag(&mut self, key: &'static str, default: bool) -> bool {
        match self.raw(key) {
            None | Some(Json::Null) => default,
            Some(Json::Bool(b)) => *b,
            Some(Json::Number(n)) => n.as_i64() != Some(0),
            Some(Json::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
            }
            Some(_) => {
                self.error(
                    key,
                    format!("`{key}` must be true or false"),
                    Some(format!("write `{key}: true` or `{key}: false`")),
                );
                default
            }
        }
    }

    /// Ends reading: reports parameters no one asked for (warnings, with a suggestion), and
    /// returns the problems and the events written in the config.
    pub fn finish(mut self) -> (Vec<ParamIssue>, Vec<(String, Loc)>) {
        let mut unknown: Vec<&String> = self
            .spec
            .params
            .keys()
            .filter(|k| {
                !self.all_read && !self.read.contains(k.as_str()) && !COMMON.contains(&k.as_str())
            })
            .collect();
        unknown.sort();
        let known: Vec<&'static str> = self.read.iter().copied().collect();
        for k in unknown {
            let hint = match did_you_mean(k, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => {
                    let mut ks = known.clone();
                    ks.sort_unstable();
                    format!("`{}` accepts: {}", self.spec.kind.value, ks.join(", "))
                }
            };
            self.issues.push(ParamIssue {
                is_error: false,
                loc: self.spec.loc_of(k),
                message: format!(
                    "`{}` action: unknown parameter `{k}` is ignored",
                    self.spec.kind.value
                ),
                hint: Some(hint),
                code: None,
                near: None,
            });
        }
        (self.issues, self.written_events)
    }
}
