//! From a [`MachineSpec`] as written to a runnable [`MachineDef`], with every lint.
//!
//! Errors (the config cannot run): unknown states, unknown action types, bad action
//! parameters, bad `timeout(N)` events. Warnings (it runs, `validate --strict` refuses
//! it): rules shadowed by earlier ones, unreachable states, events an action returns
//! that no transition accepts, and states whose own entry actions re-enter them with
//! nothing waiting in between (a livelock).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::diag::{suggest, Diagnostics};
use super::model::{ActionSpec, FromStates, Located, MachineSpec};
use super::yaml::Loc;
use crate::actions::{ActionRegistry, Built};
use crate::runtime::def::{parse_timeout, ActionDef, ContextMap, MachineDef, Rule, StateDef};

/// An action as built, with what the lints need.
struct BuiltAction {
    def: ActionDef,
    emits: Vec<String>,
    written: Vec<(String, Loc)>,
    waits: bool,
}

/// A machine creating more metric series than this is refused (`metric-series` error).
pub const MAX_METRIC_SERIES: usize = 100_000;
/// A machine creating more metric series than this gets a `metric-series` warning.
pub const WARN_METRIC_SERIES: usize = 10_000;
const SERIES_HINT: &str = "each (from state, event) a rule with a `from:` list applies in is a series of turnstile_transitions_total (a `from: \"*\"` rule is one): use `from: \"*\"` or fewer states and events";

/// The labelled series the exporter creates for a machine (see docs/metrics.md): a
/// transition series per (state, event) a rule applies in, or one per `from: "*"` rule;
/// three outcomes per event (and `_other`); a state duration histogram per state; four
/// outcomes per action type; the event duration histogram; one error counter per kind.
pub fn metric_series(
    states: &[StateDef],
    rules: &[Rule],
    wildcard: &FxHashMap<Arc<str>, usize>,
    n_events: usize,
) -> usize {
    // A state's own rules: a series each; a wildcard rule: one, when some state takes it.
    let own: usize = states.iter().map(|s| s.routes.len()).sum();
    let wild = wildcard
        .iter()
        .filter(|(e, &r)| {
            rules.get(r).is_some() && states.iter().any(|s| !s.routes.contains_key(*e))
        })
        .count();
    let transitions = own + wild;
    let mut kinds: Vec<&str> = states
        .iter()
        .flat_map(|s| s.entry.iter())
        .chain(rules.iter().flat_map(|r| r.actions.iter()))
        .map(|a| &*a.kind)
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    transitions
        + 3 * (n_events + 1)
        + states.len()
        + 4 * kinds.len()
        + 1
        + crate::observe::ErrorKind::ALL.len()
}

/// Compiles a spec. Returns `None` when an error was recorded.
pub fn compile(
    spec: &MachineSpec,
    registry: &ActionRegistry,
    d: &mut Diagnostics,
    content_hash: u64,
) -> Option<MachineDef> {
    // --- states ---------------------------------------------------------------------
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |names: &mut Vec<Arc<str>>, n: &str| {
        if !index.contains_key(n) {
            index.insert(n.to_owned(), names.len());
            names.push(Arc::from(n));
        }
    };
    if spec.states_declared {
        let mut seen: HashMap<&str, Loc> = HashMap::new();
        for s in &spec.states {
            if let Some(first) = seen.get(s.value.as_str()) {
                d.warn(
                    "duplicate-state",
                    s.loc,
                    format!(
                        "state `{}` is listed twice (first at line {})",
                        s.value, first.line
                    ),
                    Some("remove the second entry".into()),
                );
            }
            seen.insert(&s.value, s.loc);
            add(&mut names, &s.value);
        }
    } else {
        add(&mut names, &spec.initial_state.value);
        for t in &spec.transitions {
            if let FromStates::States(list) = &t.from {
                for s in list {
                    add(&mut names, &s.value);
                }
            }
            add(&mut names, &t.to.value);
        }
        for (s, _) in &spec.entry_actions {
            add(&mut names, &s.value);
        }
        for s in spec.final_states.iter().flatten() {
            add(&mut names, &s.value);
        }
    }
    let lookup = |d: &mut Diagnostics, s: &Located<String>, what: &str| -> Option<usize> {
        match names.iter().position(|n| **n == *s.value) {
            Some(i) => Some(i),
            None => {
                let hint = suggest(&s.value, names.iter().map(|n| &**n), || {
                    format!(
                        "add `{}` to `states:` or use one of the declared states",
                        s.value
                    )
                });
                d.error(
                    "unknown-state",
                    s.loc,
                    format!("{what} `{}` is not a declared state", s.value),
                    Some(hint),
                );
                None
            }
        }
    };
    let initial = lookup(d, &spec.initial_state, "initial state");

    // --- events ---------------------------------------------------------------------
    let mut events: Vec<Arc<str>> = Vec::new();
    let mut event_ix: HashMap<String, usize> = HashMap::new();
    let mut intern = |events: &mut Vec<Arc<str>>, e: &str| -> usize {
        if let Some(i) = event_ix.get(e) {
            return *i;
        }
        event_ix.insert(e.to_owned(), events.len());
        events.push(Arc::from(e));
        events.len() - 1
    };
    let mut context_maps: FxHashMap<Arc<str>, ContextMap> = FxHashMap::default();
    for e in &spec.events {
        let i = intern(&mut events, &e.name.value);
        if !e.context_map.is_empty() {
            let entries = e
                .context_map
                .iter()
                .map(|(k, path)| (k.clone(), path.split('.').map(str::to_owned).collect()))
                .collect();
            context_maps.insert(events[i].clone(), ContextMap { entries });
        }
    }

    // --- actions --------------------------------------------------------------------
    let build_list = |d: &mut Diagnostics, list: &[ActionSpec]| -> Vec<BuiltAction> {
        list.iter()
            .filter_map(|a| build_action(d, registry, a))
            .collect()
    };

    // --- rules ----------------------------------------------------------------------
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_actions: Vec<Vec<BuiltAction>> = Vec::new();
    let mut rule_locs: Vec<Loc> = Vec::new();
    for t in &spec.transitions {
        let from = match &t.from {
            FromStates::Any => Some(None),
            FromStates::States(list) => {
                let ids: Vec<Option<usize>> =
                    list.iter().map(|s| lookup(d, s, "`from` state")).collect();
                if ids.iter().all(Option::is_some) {
                    Some(Some(ids.into_iter().flatten().collect()))
                } else {
                    None
                }
            }
        };
        let to = lookup(d, &t.to, "`to` state");
        if t.event.value.is_empty() {
            d.error(
                "empty-event",
                t.event.loc,
                "transition event is empty".into(),
                Some("name the event, e.g. `event: done`".into()),
            );
        }
        if let Some(Err(e)) = parse_timeout(&t.event.value) {
            d.error(
                "bad-timeout",
                t.event.loc,
                format!("`{}`: {e}", t.event.value),
                Some("write `timeout(5)` or `timeout(0.5)` (seconds)".into()),
            );
        }
        let actions = build_list(d, &t.actions);
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        let event_id = intern(&mut events, &t.event.value);
        rules.push(Rule {
            from,
            to,
            event: events[event_id].clone(),
            event_id,
            actions: Arc::from(Vec::new()),
            line: t.loc.line,
        });
        rule_actions.push(actions);
        rule_locs.push(t.loc);
    }

    // Entry actions per state.
    let mut entry: Vec<Vec<BuiltAction>> = (0..names.len()).map(|_| Vec::new()).collect();
    let mut entry_seen: HashMap<usize, Loc> = HashMap::new();
    for (state, list) in &spec.entry_actions {
        let built = build_list(d, list);
        let Some(i) = lookup(d, state, "`actions:` entry for state") else {
            continue;
        };
        if entry_seen.contains_key(&i) {
            // Reported already as a duplicate key of `actions:` by the model.
            continue;
        }
        entry_seen.insert(i, state.loc);
        entry[i] = built;
    }

    // --- routes (first matching rule wins) and shadowing --------------------------------
    // A state's own table holds the first rule naming it for an event, unless a `from: "*"`
    // rule for that event came first; the wildcard rules are one table for all states, looked
    // at after the state's own. Nothing is copied per state and wildcard rule.
    let n = names.len();
    let mut routes: Vec<FxHashMap<Arc<str>, usize>> = vec![FxHashMap::default(); n];
    let mut wildcard: FxHashMap<Arc<str>, usize> = FxHashMap::default();
    // Event -> how many states have an own rule for it (all of them shadow a later wildcard).
    let mut own_count: FxHashMap<Arc<str>, usize> = FxHashMap::default();
    for (ri, r) in rules.iter().enumerate() {
        let mut used = false;
        let mut shadowed_by = None;
        match &r.from {
            None => {
                if let Some(&prev) = wildcard.get(&r.event) {
                    // Every state takes the event already: state 0's rule is named, its own
                    // (which came first, or it would not be in its table) or the wildcard.
                    shadowed_by = Some(
                        routes
                            .first()
                            .and_then(|t| t.get(&r.event))
                            .copied()
                            .unwrap_or(prev),
                    );
                } else {
                    let owned = own_count.get(&r.event).copied().unwrap_or(0);
                    if owned < n {
                        used = true;
                    } else {
                        shadowed_by = routes.first().and_then(|t| t.get(&r.event)).copied();
                    }
                    wildcard.insert(r.event.clone(), ri);
                }
            }
            Some(list) => {
                for &s in list {
                    let prev = routes[s].get(&r.event).or_else(|| wildcard.get(&r.event));
                    match prev {
                        Some(&prev) => shadowed_by = shadowed_by.or(Some(prev)),
                        None => {
                            routes[s].insert(r.event.clone(), ri);
                            *own_count.entry(r.event.clone()).or_insert(0) += 1;
                            used = true;
                        }
                    }
                }
            }
        }
        if !used {
            let prev_line = shadowed_by.map_or(0, |p| rules[p].line);
            d.warn(
                "shadowed-rule",
                rule_locs[ri],
                format!(
                    "this rule for `{}` never applies: the rule at line {prev_line} matches first",
                    r.event
                ),
                Some("the first matching rule in file order wins: remove or reorder one".into()),
            );
        }
    }

    // --- final states -------------------------------------------------------------------
    let mut is_final = vec![false; n];
    match &spec.final_states {
        Some(list) => {
            for s in list {
                if let Some(i) = lookup(d, s, "final state") {
                    is_final[i] = true;
                }
            }
        }
        None => {
            // Without `final_states:`, a state that only `from: "*"` rules lead out of (or
            // none at all) is final: the machine stops there. Names mean nothing.
            for (i, f) in is_final.iter_mut().enumerate() {
                *f = !rules
                    .iter()
                    .any(|r| r.from.as_ref().is_some_and(|l| l.contains(&i)));
            }
        }
    }

    // --- lints on actions ------------------------------------------------------------------
    let route = |s: usize, e: &str| routes[s].get(e).or_else(|| wildcard.get(e)).copied();
    let accepts = |s: usize, e: &str| route(s, e).is_some();
    for (i, list) in entry.iter().enumerate() {
        for a in list {
            for (e, loc) in &a.written {
                if !accepts(i, e) && !is_final[i] {
                    d.warn(
                        "unhandled-event",
                        *loc,
                        format!(
                            "`{}` returns `{e}` but no transition from `{}` accepts it, so it is ignored",
                            a.def.kind, names[i]
                        ),
                        Some(format!("add a transition `from: {}` with `event: {e}`, or change the event", names[i])),
                    );
                }
            }
        }
        // Livelock: an entry action returns an event that re-enters this state, and no
        // action before it (or it) waits for anything.
        if is_final[i] {
            continue;
        }
        for a in list {
            if a.waits {
                break;
            }
            let looping = a
                .emits
                .iter()
                .find(|e| route(i, e.as_str()).is_some_and(|r| rules[r].to == i));
            if let Some(e) = looping {
                d.warn(
                    "livelock",
                    spec.entry_actions
                        .iter()
                        .find(|(s, _)| *s.value == *names[i])
                        .map_or(Loc::default(), |(s, _)| s.loc),
                    format!(
                        "state `{}` re-enters itself through `{e}` returned by its own `{}` action, with nothing waiting in between: it loops as fast as it can",
                        names[i], a.def.kind
                    ),
                    Some("wait first (`sleep`, a `timeout(N)` transition, or an event from outside)".into()),
                );
                break;
            }
        }
    }
    for (ri, list) in rule_actions.iter().enumerate() {
        let to = rules[ri].to;
        for a in list {
            for (e, loc) in &a.written {
                if !accepts(to, e) && !is_final[to] {
                    d.warn(
                        "unhandled-event",
                        *loc,
                        format!(
                            "transition action `{}` returns `{e}` but no transition from `{}` accepts it",
                            a.def.kind, names[to]
                        ),
                        Some(format!("add a transition `from: {}` with `event: {e}`", names[to])),
                    );
                }
            }
        }
    }

    // --- reachability ------------------------------------------------------------------------
    if let Some(init) = initial {
        let mut seen = vec![false; n];
        let mut queue = VecDeque::from([init]);
        seen[init] = true;
        // Wildcard rules not yet followed: each is followed once, from the first state
        // reached where no own rule overrides it.
        let mut wild: Vec<(&Arc<str>, usize)> = wildcard.iter().map(|(e, &r)| (e, r)).collect();
        while let Some(s) = queue.pop_front() {
            let mut targets: Vec<usize> = routes[s].values().map(|&r| rules[r].to).collect();
            wild.retain(|&(e, r)| {
                if routes[s].contains_key(e) {
                    return true;
                }
                targets.push(rules[r].to);
                false
            });
            for t in targets {
                if !seen[t] {
                    seen[t] = true;
                    queue.push_back(t);
                }
            }
        }
        // Where a state is named: its `actions:` entry, else `states:`, else the first
        // transition that names it (a state known only from `from:` or `to:`), else
        // `final_states:`. Found by the config property test: a state named only in a
        // `from:` was reported at line 0, column 0.
        let mut declared_at: HashMap<&str, Loc> = HashMap::new();
        let named = spec
            .entry_actions
            .iter()
            .map(|(s, _)| s)
            .chain(spec.states.iter())
            .chain(spec.transitions.iter().flat_map(|t| {
                let from: &[Located<String>] = match &t.from {
                    FromStates::States(v) => v,
                    FromStates::Any => &[],
                };
                from.iter().chain(std::iter::once(&t.to))
            }))
            .chain(spec.final_states.iter().flatten());
        for s in named {
            declared_at.entry(s.value.as_str()).or_insert(s.loc);
        }
        for (i, ok) in seen.iter().enumerate() {
            if !ok {
                d.warn(
                    "unreachable-state",
                    declared_at.get(&*names[i]).copied().unwrap_or_default(),
                    format!(
                        "state `{}` cannot be reached from `{}`",
                        names[i], names[init]
                    ),
                    Some(format!(
                        "add a transition with `to: {}`, or remove the state",
                        names[i]
                    )),
                );
            }
        }
    }

    if d.has_errors() {
        return None;
    }
    let initial = initial?;

    // Register events returned by actions, so the event table is complete.
    for list in entry.iter().chain(rule_actions.iter()) {
        for a in list {
            for e in &a.emits {
                intern(&mut events, e);
            }
        }
    }
    let to_defs = |list: Vec<BuiltAction>| -> Arc<[ActionDef]> {
        list.into_iter().map(|a| a.def).collect::<Vec<_>>().into()
    };
    lint_unfinished_jobs(entry.iter().chain(rule_actions.iter()).flatten(), d);
    for (r, list) in rules.iter_mut().zip(rule_actions) {
        r.actions = to_defs(list);
    }
    let states: Vec<StateDef> = names
        .iter()
        .zip(entry)
        .zip(routes)
        .enumerate()
        .map(|(i, ((name, list), routes))| {
            // `timeout(N)` rules of the state and the wildcard ones it does not override.
            let mut timers: Vec<(std::time::Duration, Arc<str>)> = routes
                .keys()
                .chain(wildcard.keys().filter(|e| !routes.contains_key(*e)))
                .filter_map(|e| Some((parse_timeout(e)?.ok()?, e.clone())))
                .collect();
            timers.sort();
            StateDef {
                name: name.clone(),
                entry: to_defs(list),
                is_final: is_final[i],
                timers,
                routes,
            }
        })
        .collect();
    let series = metric_series(&states, &rules, &wildcard, events.len());
    if series > MAX_METRIC_SERIES {
        d.error(
            "metric-series",
            Loc { line: 1, column: 1 },
            format!(
                "this machine would create {series} metric series, more than the limit of {MAX_METRIC_SERIES}"
            ),
            Some(SERIES_HINT.into()),
        );
        return None;
    }
    if series > WARN_METRIC_SERIES {
        d.warn(
            "metric-series",
            Loc { line: 1, column: 1 },
            format!(
                "this machine creates {series} metric series (more than {WARN_METRIC_SERIES}; the limit is {MAX_METRIC_SERIES})"
            ),
            Some(SERIES_HINT.into()),
        );
    }
    Some(MachineDef {
        name: Arc::from(spec.name.value.as_str()),
        title: spec.title.clone(),
        description: spec.description.clone(),
        source: None,
        states,
        rules,
        wildcard,
        events,
        initial,
        context: spec.context.clone(),
        context_maps,
        plugins: spec.plugins.iter().map(|p| p.value.clone()).collect(),
        content_hash,
        singleton: spec.singleton,
        redact: spec.redact.iter().map(|n| n.value.clone()).collect(),
        metrics_detail: spec.metrics_detail,
    })
}

fn build_action(
    d: &mut Diagnostics,
    registry: &ActionRegistry,
    a: &ActionSpec,
) -> Option<BuiltAction> {
    let kind = &a.kind.value;
    if registry.get(kind).is_none() {
        let hint = match registry.unavailable_hint(kind) {
            Some(h) => format!("`{kind}`: {h}"),
            None => suggest(kind, registry.kinds(), || {
                format!(
                    "no built-in action or loaded plugin provides it; known types: {}",
                    registry.kinds().join(", ")
                )
            }),
        };
        d.error(
            "unknown-action",
            a.kind.loc,
            format!("unknown action type `{kind}`"),
            Some(hint),
        );
        return None;
    }
    let mut issues = Vec::new();
    let mut written = Vec::new();
    // How an action loads a config it names (`start_fsm`'s `yaml_path`): the actions
    // cannot import this module (it imports them).
    let loader = |path: &std::path::Path| -> Result<crate::actions::params::Seed, Vec<String>> {
        let loaded = super::load_path(path, registry);
        match loaded.def {
            Some(def) => Ok(Arc::new(def)),
            None => Err(loaded.errors().map(ToString::to_string).collect()),
        }
    };
    let built: Option<Built> = registry.build(a, d.file(), &loader, &mut issues, &mut written);
    for i in issues {
        let loc = match &i.near {
            Some((text, nth)) => d.locate(i.loc, text, *nth),
            None => i.loc,
        };
        if i.is_error {
            d.error(i.code.unwrap_or("bad-parameter"), loc, i.message, i.hint);
        } else {
            d.warn(i.code.unwrap_or("parameter"), loc, i.message, i.hint);
        }
    }
    let built = built?;
    Some(BuiltAction {
        def: ActionDef {
            kind: Arc::from(kind.as_str()),
            action: built.action,
            description: a.description.clone(),
            line: a.loc.line,
            error_event: Arc::from(
                a.params
                    .get("error")
                    .and_then(serde_json::Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("error"),
            ),
        },
        emits: built.emits,
        written,
        waits: built.waits,
    })
}

/// A machine that takes jobs from the queue but never completes or fails one abandons each
/// job when it takes the next: the job then ends `failed` (docs/jobs.md, leases).
fn lint_unfinished_jobs<'a>(actions: impl Iterator<Item = &'a BuiltAction>, d: &mut Diagnostics) {
    let mut claims = None;
    for a in actions {
        match &*a.def.kind {
            "check_database_queue" => claims = claims.or(Some(a.def.line)),
            "complete_job" | "fail_job" => return,
            _ => {}
        }
    }
    if let Some(line) = claims {
        d.warn(
            "job-never-finished",
            Loc { line, column: 1 },
            "this machine takes jobs with `check_database_queue` but never runs `complete_job` or `fail_job`: each job it takes is abandoned, and marked failed, when it takes the next".into(),
            Some("add a `complete_job` action where a job's work is done (and `fail_job` where it fails)".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::actions::ActionRegistry;

    /// `states` states and one rule per event e0.. from `from` (a YAML value), each to s(i
    /// mod states).
    fn many_rules(states: usize, rules: usize, from: &str) -> String {
        let mut y = String::from("initial_state: s0\nstates: [");
        y.push_str(
            &(0..states)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        y.push_str("]\ntransitions:\n");
        for i in 0..rules {
            y.push_str(&format!(
                "  - {{from: {from}, to: s{}, event: e{i}}}\n",
                i % states
            ));
        }
        y
    }

    #[test]
    fn wildcard_routes_are_stored_once_not_per_state() {
        let registry = ActionRegistry::with_builtins();
        let l = crate::config::load_str(&many_rules(1000, 1000, "\"*\""), None, &registry);
        let def = l.def.expect("the config compiles");
        // One entry per wildcard rule (a million, one per state and rule, before).
        assert!(
            def.route_entries() <= 2 * 1000,
            "{} route entries for 1,000 states x 1,000 wildcard rules",
            def.route_entries()
        );
        // Every state still takes every event.
        for s in [0, 1, 500, 999] {
            for e in [0, 1, 500, 999] {
                let rule = def.route(s, &format!("e{e}")).expect("a route");
                assert_eq!(def.states[rule.to].name.as_ref(), format!("s{e}"));
            }
        }
        assert!(def.route(0, "e1000").is_none());
    }

    #[test]
    fn the_first_rule_in_file_order_wins_between_own_and_wildcard_rules() {
        let registry = ActionRegistry::with_builtins();
        let y = "initial_state: a\nstates: [a, b, c]\ntransitions:\n\
                 - {from: \"*\", to: b, event: w}\n\
                 - {from: a, to: c, event: w}\n\
                 - {from: a, to: c, event: o}\n\
                 - {from: \"*\", to: b, event: o}\n\
                 - {from: b, to: a, event: back}\n";
        let l = crate::config::load_str(y, None, &registry);
        let def = l.def.expect("the config compiles");
        let to = |s: usize, e: &str| def.route(s, e).map(|r| &*def.states[r.to].name);
        // The wildcard rule came first: it wins in `a` too.
        assert_eq!(to(0, "w"), Some("b"));
        assert_eq!(to(2, "w"), Some("b"));
        // `a`'s own rule came first: it wins in `a`, the wildcard elsewhere.
        assert_eq!(to(0, "o"), Some("c"));
        assert_eq!(to(1, "o"), Some("b"));
        assert_eq!(to(1, "back"), Some("a"));
        assert_eq!(to(0, "back"), None);
        assert!(l
            .diagnostics
            .iter()
            .any(|d| d.code == "shadowed-rule" && d.message.contains("line 4")));
    }
}
