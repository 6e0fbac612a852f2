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
pub fn metric_series(states: &[StateDef], rules: &[Rule], n_events: usize) -> usize {
    let mut wildcard = vec![false; rules.len()];
    let mut transitions = 0;
    for s in states {
        for &ri in s.routes.values() {
            match rules.get(ri) {
                Some(r) if r.from.is_none() => wildcard[ri] = true,
                Some(_) => transitions += 1,
                None => {}
            }
        }
    }
    transitions += wildcard.iter().filter(|w| **w).count();
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
    let n = names.len();
    let mut routes: Vec<FxHashMap<Arc<str>, usize>> = vec![FxHashMap::default(); n];
    for (ri, r) in rules.iter().enumerate() {
        let sources: Vec<usize> = match &r.from {
            None => (0..n).collect(),
            Some(list) => list.clone(),
        };
        let mut used = false;
        let mut shadowed_by = None;
        for s in sources {
            match routes[s].get(&r.event) {
                Some(&prev) => shadowed_by = shadowed_by.or(Some(prev)),
                None => {
                    routes[s].insert(r.event.clone(), ri);
                    used = true;
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
    let accepts = |s: usize, e: &str| routes[s].contains_key(e);
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
                .find(|e| routes[i].get(e.as_str()).is_some_and(|&r| rules[r].to == i));
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
        while let Some(s) = queue.pop_front() {
            for &r in routes[s].values() {
                let t = rules[r].to;
                if !seen[t] {
                    seen[t] = true;
                    queue.push_back(t);
                }
            }
        }
        let declared_at: HashMap<&str, Loc> = spec
            .states
            .iter()
            .map(|s| (s.value.as_str(), s.loc))
            .chain(
                spec.entry_actions
                    .iter()
                    .map(|(s, _)| (s.value.as_str(), s.loc)),
            )
            .collect();
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
    for (r, list) in rules.iter_mut().zip(rule_actions) {
        r.actions = to_defs(list);
    }
    let states: Vec<StateDef> = names
        .iter()
        .zip(entry)
        .zip(routes)
        .enumerate()
        .map(|(i, ((name, list), routes))| {
            let mut timers: Vec<(std::time::Duration, Arc<str>)> = routes
                .keys()
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
    let series = metric_series(&states, &rules, events.len());
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
        events,
        initial,
        context: spec.context.clone(),
        context_maps,
        plugins: spec.plugins.iter().map(|p| p.value.clone()).collect(),
        content_hash,
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
    let built: Option<Built> = registry.build(a, &mut issues, &mut written);
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
        },
        emits: built.emits,
        written,
        waits: built.waits,
    })
}
