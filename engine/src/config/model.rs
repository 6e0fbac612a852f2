//! The config model: a machine definition as written, with locations, before compiling.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value as Json};

use super::diag::{json_type_name, suggest, Diagnostics};
use super::yaml::{Loc, Node, Value};

/// A string with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub loc: Loc,
}

impl<T> Located<T> {
    fn new(value: T, loc: Loc) -> Self {
        Self { value, loc }
    }
}

/// Which states a transition applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromStates {
    /// `"*"`: every state.
    Any,
    /// One state or a list of states.
    States(Vec<Located<String>>),
}

/// One `transitions:` entry.
#[derive(Debug, Clone)]
pub struct TransitionSpec {
    /// `from:`.
    pub from: FromStates,
    /// `to:`.
    pub to: Located<String>,
    /// `event:`.
    pub event: Located<String>,
    /// `actions:` run during the transition, before the target's entry actions.
    pub actions: Vec<ActionSpec>,
    /// Where the entry starts.
    pub loc: Loc,
}

/// One action as written: its type and its parameters (top-level keys and `params:` merged).
#[derive(Debug, Clone)]
pub struct ActionSpec {
    /// `type:`.
    pub kind: Located<String>,
    /// All parameters; keys under `params:` override top-level ones.
    pub params: Map<String, Json>,
    /// Where each parameter was written.
    pub param_locs: HashMap<String, Loc>,
    /// `description:`, informational.
    pub description: Option<String>,
    /// Where the action starts.
    pub loc: Loc,
}

impl ActionSpec {
    /// Location of a parameter, or of the action itself.
    pub fn loc_of(&self, param: &str) -> Loc {
        self.param_locs.get(param).copied().unwrap_or(self.loc)
    }
}

/// One declared event; `context_map` copies payload fields into the context on arrival.
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// The event name.
    pub name: Located<String>,
    /// context key -> dotted path in the payload (e.g. `payload.job.id` or `job.id`).
    pub context_map: Vec<(String, String)>,
}

/// A machine config as written.
#[derive(Debug, Clone, Default)]
pub struct MachineSpec {
    /// Machine name: `metadata.machine_name`, else the file stem.
    pub name: Located<String>,
    /// `name:` (informational title).
    pub title: Option<String>,
    /// `description:`.
    pub description: Option<String>,
    /// `initial_state:` (default `waiting`, as statemachine-engine).
    pub initial_state: Located<String>,
    /// `states:` as declared (may be empty: then states come from the transitions).
    pub states: Vec<Located<String>>,
    /// True when a `states:` key was present.
    pub states_declared: bool,
    /// `events:`.
    pub events: Vec<EventSpec>,
    /// True when an `events:` key was present.
    pub events_declared: bool,
    /// `transitions:` in file order.
    pub transitions: Vec<TransitionSpec>,
    /// `actions:`: state -> entry actions, in file order.
    pub entry_actions: Vec<(Located<String>, Vec<ActionSpec>)>,
    /// `final_states:`, when declared.
    pub final_states: Option<Vec<Located<String>>>,
    /// `context:`: the initial context.
    pub context: Map<String, Json>,
    /// `metadata:` as JSON (informational).
    pub metadata: Map<String, Json>,
    /// `plugins:`: plugin files or directories named by the config.
    pub plugins: Vec<Located<String>>,
    /// `metadata.singleton` (a boolean; default false).
    pub singleton: bool,
    /// `redact:`: field names added to the process's list of sensitive names
    /// ([`crate::redact`]).
    pub redact: Vec<Located<String>>,
    /// `metrics: {detail: ...}` ([`crate::MetricsDetail`]; default: none).
    pub metrics_detail: crate::MetricsDetail,
}

impl Default for Located<String> {
    fn default() -> Self {
        Located::new(String::new(), Loc::default())
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "initial_state",
    "metadata",
    "states",
    "events",
    "transitions",
    "actions",
    "final_states",
    "context",
    "plugins",
    "redact",
    "metrics",
    "template",
    "version",
];

const TRANSITION_KEYS: &[&str] = &["from", "to", "event", "actions", "description"];

fn expect_str(d: &mut Diagnostics, node: &Node, what: &str) -> Option<Located<String>> {
    match node.scalar_text() {
        Some(s) if !matches!(node.value, Value::Null) => Some(Located::new(s, node.loc)),
        _ => {
            d.error(
                "wrong-type",
                node.loc,
                format!("{what} must be a string, found {}", node.value.type_name()),
                Some(format!("write {what} as a plain name, e.g. `waiting`")),
            );
            None
        }
    }
}

/// Reports duplicate keys of a mapping and returns its pairs.
fn map_pairs<'a>(d: &mut Diagnostics, node: &'a Node, what: &str) -> Option<&'a [(Node, Node)]> {
    match &node.value {
        Value::Map(pairs) => {
            let mut seen: HashMap<String, Loc> = HashMap::new();
            for (k, _) in pairs {
                let key = k.scalar_text().unwrap_or_default();
                if let Some(first) = seen.get(&key) {
                    d.error(
                        "duplicate-key",
                        k.loc,
                        format!(
                            "duplicate key `{key}` in {what} (first at line {})",
                            first.line
                        ),
                        Some(
                            "YAML keys must be unique: merge the two entries or rename one".into(),
                        ),
                    );
                } else {
                    seen.insert(key, k.loc);
                }
            }
            Some(pairs)
        }
        Value::Null => Some(&[]),
        _ => {
            d.error(
                "wrong-type",
                node.loc,
                format!("{what} must be a mapping, found {}", node.value.type_name()),
                Some(format!("write {what} as `key: value` lines")),
            );
            None
        }
    }
}

fn seq_items<'a>(d: &mut Diagnostics, node: &'a Node, what: &str) -> Option<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        Value::Null => Some(&[]),
        _ => {
            d.error(
                "wrong-type",
                node.loc,
                format!("{what} must be a list, found {}", node.value.type_name()),
                Some(format!("write {what} as a YAML list (`- item` lines)")),
            );
            None
        }
    }
}

/// `metrics:`: a mapping whose one key, `detail`, is a detail name or a list of them
/// (`states`, `transitions`, `actions`, `all`, `none`).
fn read_metrics(d: &mut Diagnostics, node: &Node) -> crate::MetricsDetail {
    use crate::MetricsDetail;
    let mut detail = MetricsDetail::NONE;
    let Some(pairs) = map_pairs(d, node, "`metrics`") else {
        return detail;
    };
    for (k, v) in pairs {
        let key = k.scalar_text().unwrap_or_default();
        if key != "detail" {
            d.error(
                "unknown-key",
                k.loc,
                format!("unknown key `{key}` in `metrics`"),
                Some("`metrics` has one key, `detail` (e.g. `metrics: {detail: [states]}`)".into()),
            );
            continue;
        }
        let items: Vec<&Node> = match &v.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            _ => vec![v],
        };
        for it in items {
            let Some(name) = expect_str(d, it, "a metrics detail") else {
                continue;
            };
            match MetricsDetail::item(&name.value) {
                Some(x) => detail = detail.union(x),
                None => {
                    let hint = suggest(&name.value, MetricsDetail::NAMES.iter().copied(), || {
                        format!("known details: {}", MetricsDetail::NAMES.join(", "))
                    });
                    d.error(
                        "bad-metrics-detail",
                        name.loc,
                        format!("unknown metrics detail `{}`", name.value),
                        Some(hint),
                    );
                }
            }
        }
    }
    detail
}

/// Reads a machine spec out of a parsed YAML tree, recording every problem in `d`.
pub fn read_machine(d: &mut Diagnostics, root: &Node, path: Option<&Path>) -> MachineSpec {
    let mut spec = MachineSpec {
        initial_state: Located::new("waiting".into(), Loc { line: 1, column: 1 }),
        ..Default::default()
    };
    let Value::Map(_) = &root.value else {
        let found = match root.value {
            Value::Null => "the file is empty".to_owned(),
            _ => format!("found {}", root.value.type_name()),
        };
        d.error(
            "wrong-type",
            root.loc,
            format!("a machine config must be a mapping: {found}"),
            Some("start the file with keys such as `initial_state:` and `transitions:`".into()),
        );
        return spec;
    };
    let Some(pairs) = map_pairs(d, root, "the machine config") else {
        return spec;
    };
    let mut name_from_meta = None;
    for (k, v) in pairs {
        let key = k.scalar_text().unwrap_or_default();
        match key.as_str() {
            "name" => spec.title = v.scalar_text(),
            "description" => spec.description = v.scalar_text(),
            "template" | "version" => {}
            "initial_state" => {
                if let Some(s) = expect_str(d, v, "`initial_state`") {
                    spec.initial_state = s;
                }
            }
            "metadata" => {
                if let Some(mp) = map_pairs(d, v, "`metadata`") {
                    for (mk, mv) in mp {
                        let mkey = mk.scalar_text().unwrap_or_default();
                        if mkey == "machine_name" {
                            name_from_meta = expect_str(d, mv, "`metadata.machine_name`");
                        }
                        if mkey == "singleton" {
                            match mv.value {
                                Value::Bool(b) => spec.singleton = b,
                                _ => d.error(
                                    "wrong-type",
                                    mv.loc,
                                    format!(
                                        "`metadata.singleton` must be a boolean, found {}",
                                        mv.value.type_name()
                                    ),
                                    Some("write `singleton: true` or `singleton: false`".into()),
                                ),
                            }
                        }
                        spec.metadata.insert(mkey, mv.to_json());
                    }
                }
            }
            "states" => {
                // A `states:` of the wrong type counts as absent (states then come from the
                // transitions), so that its one error does not cascade into "unknown state".
                spec.states_declared = matches!(v.value, Value::Seq(_) | Value::Null);
                if let Some(items) = seq_items(d, v, "`states`") {
                    for it in items {
                        if let Some(s) = expect_str(d, it, "a state") {
                            spec.states.push(s);
                        }
                    }
                }
            }
            "final_states" => {
                let mut list = Vec::new();
                if let Some(items) = seq_items(d, v, "`final_states`") {
                    for it in items {
                        if let Some(s) = expect_str(d, it, "a final state") {
                            list.push(s);
                        }
                    }
                }
                spec.final_states = Some(list);
            }
            "events" => {
                spec.events_declared = true;
                read_events(d, v, &mut spec.events);
            }
            "transitions" => {
                if let Some(items) = seq_items(d, v, "`transitions`") {
                    for it in items {
                        if let Some(t) = read_transition(d, it) {
                            spec.transitions.push(t);
                        }
                    }
                }
            }
            "actions" => {
                if let Some(ap) = map_pairs(d, v, "`actions`") {
                    for (sk, sv) in ap {
                        let Some(state) = expect_str(d, sk, "a state name") else {
                            continue;
                        };
                        let list =
                            read_action_list(d, sv, &format!("actions of `{}`", state.value));
                        spec.entry_actions.push((state, list));
                    }
                }
            }
            "context" => match v.to_json() {
                Json::Object(m) => spec.context = m,
                Json::Null => {}
                other => d.error(
                    "wrong-type",
                    v.loc,
                    format!(
                        "`context` must be a mapping, found {}",
                        json_type_name(&other)
                    ),
                    Some("write the initial context as `key: value` pairs".into()),
                ),
            },
            "plugins" => {
                if let Some(items) = seq_items(d, v, "`plugins`") {
                    for it in items {
                        if let Some(s) = expect_str(d, it, "a plugin path") {
                            spec.plugins.push(s);
                        }
                    }
                }
            }
            "redact" => {
                if let Some(items) = seq_items(d, v, "`redact`") {
                    for it in items {
                        let Some(s) = expect_str(d, it, "a field name in `redact`") else {
                            continue;
                        };
                        match crate::redact::check_name(&s.value) {
                            Ok(()) => spec.redact.push(s),
                            Err(why) => d.error(
                                "bad-redact-name",
                                s.loc,
                                format!("`redact`: {why}"),
                                Some("list field names (or parts of them) such as `iban`".into()),
                            ),
                        }
                    }
                }
            }
            "metrics" => spec.metrics_detail = read_metrics(d, v),
            _ => {
                let hint = suggest(&key, TOP_KEYS.iter().copied(), || {
                    format!("known keys: {}", TOP_KEYS.join(", "))
                });
                d.error(
                    "unknown-key",
                    k.loc,
                    format!("unknown key `{key}` in the machine config"),
                    Some(hint),
                );
            }
        }
    }
    spec.name = match name_from_meta {
        Some(n) => n,
        None => {
            let stem = path
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "machine".to_owned());
            Located::new(stem, Loc { line: 1, column: 1 })
        }
    };
    spec
}

fn read_events(d: &mut Diagnostics, v: &Node, out: &mut Vec<EventSpec>) {
    match &v.value {
        Value::Seq(items) => {
            for it in items {
                if let Some(s) = expect_str(d, it, "an event") {
                    out.push(EventSpec {
                        name: s,
                        context_map: Vec::new(),
                    });
                }
            }
        }
        Value::Map(_) => {
            let Some(pairs) = map_pairs(d, v, "`events`") else {
                return;
            };
            for (ek, ev) in pairs {
                let Some(name) = expect_str(d, ek, "an event name") else {
                    continue;
                };
                let mut context_map = Vec::new();
                if let Some(body) = map_pairs(d, ev, &format!("event `{}`", name.value)) {
                    for (bk, bv) in body {
                        let bkey = bk.scalar_text().unwrap_or_default();
                        if bkey != "context_map" && bkey != "description" {
                            d.error(
                                "unknown-key",
                                bk.loc,
                                format!("unknown key `{bkey}` in event `{}`", name.value),
                                Some(suggest(&bkey, ["context_map", "description"], || {
                                    "an event accepts `context_map:` and `description:`".into()
                                })),
                            );
                            continue;
                        }
                        if bkey == "description" {
                            continue;
                        }
                        if let Some(cm) = map_pairs(d, bv, "`context_map`") {
                            for (ck, cv) in cm {
                                let (Some(ck), Some(cv)) = (
                                    expect_str(d, ck, "a context key"),
                                    expect_str(d, cv, "a payload path"),
                                ) else {
                                    continue;
                                };
                                context_map.push((ck.value, cv.value));
                            }
                        }
                    }
                }
                out.push(EventSpec { name, context_map });
            }
        }
        Value::Null => {}
        _ => d.error(
            "wrong-type",
            v.loc,
            format!(
                "`events` must be a list or a mapping, found {}",
                v.value.type_name()
            ),
            Some(
                "write `events:` as a list of names, or as `name: {context_map: ...}` lines".into(),
            ),
        ),
    }
}

fn read_transition(d: &mut Diagnostics, node: &Node) -> Option<TransitionSpec> {
    let pairs = match &node.value {
        Value::Map(_) => map_pairs(d, node, "a transition")?,
        _ => {
            d.error(
                "wrong-type",
                node.loc,
                format!(
                    "a transition must be a mapping, found {}",
                    node.value.type_name()
                ),
                Some("write `- from: a` / `to: b` / `event: e`".into()),
            );
            return None;
        }
    };
    let (mut from, mut to, mut event, mut actions) = (None, None, None, Vec::new());
    for (k, v) in pairs {
        let key = k.scalar_text().unwrap_or_default();
        match key.as_str() {
            "from" => {
                from = match &v.value {
                    Value::Str(s) if s == "*" => Some(FromStates::Any),
                    Value::Seq(items) => {
                        let mut list = Vec::new();
                        for it in items {
                            if let Some(s) = expect_str(d, it, "a `from` state") {
                                list.push(s);
                            }
                        }
                        Some(FromStates::States(list))
                    }
                    _ => expect_str(d, v, "`from`").map(|s| FromStates::States(vec![s])),
                }
            }
            "to" => to = expect_str(d, v, "`to`"),
            "event" => event = expect_str(d, v, "`event`"),
            "actions" => actions = read_action_list(d, v, "transition actions"),
            "description" => {}
            _ => d.error(
                "unknown-key",
                k.loc,
                format!("unknown key `{key}` in a transition"),
                Some(suggest(&key, TRANSITION_KEYS.iter().copied(), || {
                    format!("a transition accepts: {}", TRANSITION_KEYS.join(", "))
                })),
            ),
        }
    }
    let mut missing = |what: &str| {
        d.error(
            "missing-key",
            node.loc,
            format!("transition has no `{what}`"),
            Some("every transition needs `from`, `to` and `event`".into()),
        )
    };
    // A key that is present but unusable was reported already: it is not also "missing".
    let present = |key: &str| pairs.iter().any(|(k, _)| k.as_str() == Some(key));
    if from.is_none() && !present("from") {
        missing("from");
    }
    if to.is_none() && !present("to") {
        missing("to");
    }
    if event.is_none() && !present("event") {
        missing("event");
    }
    Some(TransitionSpec {
        from: from?,
        to: to?,
        event: event?,
        actions,
        loc: node.loc,
    })
}

fn read_action_list(d: &mut Diagnostics, node: &Node, what: &str) -> Vec<ActionSpec> {
    let mut out = Vec::new();
    if let Some(items) = seq_items(d, node, &format!("the {what}")) {
        for it in items {
            if let Some(a) = read_action(d, it) {
                out.push(a);
            }
        }
    }
    out
}

fn read_action(d: &mut Diagnostics, node: &Node) -> Option<ActionSpec> {
    let pairs = match &node.value {
        Value::Map(_) => map_pairs(d, node, "an action")?,
        _ => {
            d.error(
                "wrong-type",
                node.loc,
                format!(
                    "an action must be a mapping, found {}",
                    node.value.type_name()
                ),
                Some("write `- type: log` followed by its parameters".into()),
            );
            return None;
        }
    };
    let mut kind = None;
    let mut description = None;
    let mut params = Map::new();
    let mut param_locs = HashMap::new();
    let mut nested: Option<&Node> = None;
    for (k, v) in pairs {
        let key = k.scalar_text().unwrap_or_default();
        match key.as_str() {
            "type" => kind = expect_str(d, v, "the action `type`"),
            "description" => description = v.scalar_text(),
            "params" => nested = Some(v),
            _ => {
                param_locs.insert(key.clone(), v.loc);
                params.insert(key, v.to_json());
            }
        }
    }
    if let Some(n) = nested {
        if let Some(np) = map_pairs(d, n, "`params`") {
            for (k, v) in np {
                let key = k.scalar_text().unwrap_or_default();
                param_locs.insert(key.clone(), v.loc);
                params.insert(key, v.to_json());
            }
        }
    }
    let Some(kind) = kind else {
        d.error(
            "missing-key",
            node.loc,
            "action has no `type`".into(),
            Some("add `type: log` (or another action type) to the action".into()),
        );
        return None;
    };
    Some(ActionSpec {
        kind,
        params,
        param_locs,
        description,
        loc: node.loc,
    })
}
