//! A compiled machine definition: states, rules and built actions, ready to run.
//!
//! Names are resolved to indexes once, when a config is compiled, so the runtime's hot
//! path is an index lookup plus one hash of the event name.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde_json::{Map, Value as Json};

use crate::actions::Action;

/// One action of a state's entry list or of a transition, built from its YAML entry.
#[derive(Clone)]
pub struct ActionDef {
    /// The action type, e.g. `bash` (a metric label and span name).
    pub kind: Arc<str>,
    /// The runnable action.
    pub action: Arc<dyn Action>,
    /// `description:` as written, for logs.
    pub description: Option<String>,
    /// Line of the action in its file (for error messages).
    pub line: u32,
    /// The event the machine returns for the action when it cancels it with an error (a
    /// lost job claim): its `error:` parameter as written, else `error`.
    pub error_event: Arc<str>,
}

impl std::fmt::Debug for ActionDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionDef")
            .field("kind", &self.kind)
            .field("line", &self.line)
            .finish()
    }
}

/// A state of a compiled machine.
#[derive(Debug, Clone)]
pub struct StateDef {
    /// The state's name.
    pub name: Arc<str>,
    /// Actions run, in order, each time the state is entered.
    pub entry: Arc<[ActionDef]>,
    /// Entering it stops the machine (after its entry actions ran).
    pub is_final: bool,
    /// `timeout(N)` rules that apply here: (delay, event name), shortest first.
    pub timers: Vec<(Duration, Arc<str>)>,
    /// Event name -> index into [`MachineDef::rules`] of the first rule naming this state
    /// in its `from:` list, kept only when it comes before any `from: "*"` rule for the
    /// event (a later one never applies). [`MachineDef::route`] looks here first, then in
    /// [`MachineDef::wildcard`]: together, the first matching rule in file order.
    pub(crate) routes: FxHashMap<Arc<str>, usize>,
}

/// A transition rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The source state, or `None` for `from: "*"`.
    pub from: Option<Vec<usize>>,
    /// The target state.
    pub to: usize,
    /// The event name.
    pub event: Arc<str>,
    /// Index of the event in [`MachineDef::events`].
    pub event_id: usize,
    /// Actions run during the transition, before the target's entry actions.
    pub actions: Arc<[ActionDef]>,
    /// Line of the rule in its file.
    pub line: u32,
}

/// `events: {name: {context_map: {key: path}}}`: payload fields copied into the context.
#[derive(Debug, Clone, Default)]
pub struct ContextMap {
    /// (context key, dotted path inside the message `{type, payload, job_id}`).
    pub entries: Vec<(String, Vec<String>)>,
}

/// A compiled machine definition. Shared by the machine's task and whoever inspects it.
#[derive(Debug, Clone)]
pub struct MachineDef {
    /// The machine's name (`metadata.machine_name`, the file stem, or `--machine-name`).
    pub name: Arc<str>,
    /// `name:` of the config (a title).
    pub title: Option<String>,
    /// `description:` of the config.
    pub description: Option<String>,
    /// The file it came from.
    pub source: Option<PathBuf>,
    /// States, in declaration order.
    pub states: Vec<StateDef>,
    /// Rules, in file order.
    pub rules: Vec<Rule>,
    /// Every event name the config mentions (declared, in rules, or returned by actions);
    /// a bounded set, so exporters can use it for metric labels.
    pub events: Vec<Arc<str>>,
    /// Event name -> index into [`MachineDef::rules`] of the first `from: "*"` rule for it.
    /// One table for the machine, not a copy per state: 1,000 states and 1,000 wildcard
    /// rules are 1,000 entries, not a million.
    pub(crate) wildcard: FxHashMap<Arc<str>, usize>,
    /// Index of the initial state.
    pub initial: usize,
    /// The initial context.
    pub context: Map<String, Json>,
    /// Event name -> payload fields to copy into the context when it triggers a transition.
    pub context_maps: FxHashMap<Arc<str>, ContextMap>,
    /// Plugin paths the config names (`plugins:`).
    pub plugins: Vec<String>,
    /// Hash of the source text (for reload decisions and `/stats`).
    pub content_hash: u64,
    /// `metadata.singleton: true`: one process of those sharing a store runs it
    /// ([`crate::runtime::singleton`]).
    pub singleton: bool,
    /// `redact:`: field names the process adds to its list of sensitive names when it runs
    /// this definition ([`crate::redact::extend_global`]).
    pub redact: Vec<String>,
    /// `metrics: {detail: ...}`: the breakdowns an exporter shows for this machine beyond
    /// its default series (added to the process's `--metrics-detail`).
    pub metrics_detail: crate::MetricsDetail,
}

impl MachineDef {
    /// The rule for `event` in state `state`, if any.
    #[inline]
    pub fn route(&self, state: usize, event: &str) -> Option<&Rule> {
        self.rules.get(self.route_index(state, event)?)
    }

    /// Index into [`MachineDef::rules`] of the rule for `event` in state `state`: the
    /// state's own rule, else the machine's `from: "*"` rule (a state's own rule that a
    /// wildcard rule precedes in the file is not in its table, see [`StateDef`]).
    #[inline]
    pub(crate) fn route_index(&self, state: usize, event: &str) -> Option<usize> {
        let own = &self.states.get(state)?.routes;
        match own.get(event) {
            Some(&r) => Some(r),
            None => self.wildcard_route(event),
        }
    }

    /// The `from: "*"` rule for `event`. Out of line: it keeps the state's own lookup,
    /// the hot one, small enough to be inlined into the machine's event handling.
    #[cold]
    #[inline(never)]
    fn wildcard_route(&self, event: &str) -> Option<usize> {
        self.wildcard.get_key_value(event).map(|(_, &r)| r)
    }

    /// The rules that apply in state `state`, as (rule index, event name), in no
    /// particular order: its own and the wildcard rules its own do not override.
    pub(crate) fn routes_from(&self, state: usize) -> impl Iterator<Item = (usize, &Arc<str>)> {
        let own = self.states.get(state).map(|s| &s.routes);
        own.into_iter()
            .flat_map(|o| o.iter().map(|(e, &r)| (r, e)))
            .chain(
                self.wildcard
                    .iter()
                    .filter(move |(e, _)| own.is_some_and(|o| !o.contains_key(*e)))
                    .map(|(e, &r)| (r, e)),
            )
    }
    /// Index of a state by name.
    pub fn state_index(&self, name: &str) -> Option<usize> {
        self.states.iter().position(|s| &*s.name == name)
    }

    /// Index of an event name in [`MachineDef::events`].
    pub fn event_index(&self, name: &str) -> Option<usize> {
        self.events.iter().position(|e| &**e == name)
    }

    /// A copy under another name (`--machine-name`, or several instances of one config).
    #[must_use]
    pub fn renamed(&self, name: &str) -> Self {
        let mut d = self.clone();
        d.name = Arc::from(name);
        d
    }

    /// Entries of the route tables, all states together (their size, for tests).
    #[cfg(test)]
    pub(crate) fn route_entries(&self) -> usize {
        self.states.iter().map(|s| s.routes.len()).sum::<usize>() + self.wildcard.len()
    }

    /// The state names, in order.
    pub fn state_names(&self) -> impl Iterator<Item = &str> {
        self.states.iter().map(|s| &*s.name)
    }
}

/// Parses `timeout(N)`: N seconds, decimals allowed. `None` when `event` is not of that form.
pub fn parse_timeout(event: &str) -> Option<Result<Duration, String>> {
    let inner = event.strip_prefix("timeout(")?.strip_suffix(')')?;
    Some(match inner.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=31_536_000.0).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        Ok(s) => Err(format!(
            "timeout of {s} seconds is out of range (0 to 31536000)"
        )),
        Err(_) => Err(format!("`{inner}` is not a number of seconds")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_events_parse() {
        assert_eq!(
            parse_timeout("timeout(5)"),
            Some(Ok(Duration::from_secs(5)))
        );
        assert_eq!(
            parse_timeout("timeout(0.25)"),
            Some(Ok(Duration::from_millis(250)))
        );
        assert!(matches!(parse_timeout("timeout(x)"), Some(Err(_))));
        assert!(matches!(parse_timeout("timeout(-1)"), Some(Err(_))));
        assert_eq!(parse_timeout("timeout"), None);
        assert_eq!(parse_timeout("go"), None);
    }
}
