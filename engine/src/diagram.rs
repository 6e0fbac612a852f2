//! Mermaid `stateDiagram-v2` text for a machine, for docs and code review
//! (`turnstile diagram`), and of a running machine with its current state marked
//! (`GET /machines/{name}/diagram`).

use std::fmt::Write as _;

use crate::runtime::def::MachineDef;

/// Mermaid ids allow letters, digits and `_`; anything else is replaced, and the state's
/// real name is kept as its label.
fn id(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, 's');
    }
    s
}

/// Label text for an edge: Mermaid reads `:` and `;` specially, so they are escaped.
fn label(event: &str) -> String {
    event.replace(';', "#59;").replace(':', "#58;")
}

/// Renders `def` as Mermaid. `from: "*"` rules are drawn from every state they apply to
/// (skipping states where an earlier rule takes the event), so the picture is what runs.
pub fn mermaid(def: &MachineDef) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    if let Some(t) = &def.title {
        let _ = writeln!(out, "    %% {}", t.replace('\n', " "));
    }
    for s in &def.states {
        let sid = id(&s.name);
        if sid != *s.name {
            let _ = writeln!(out, "    state \"{}\" as {sid}", s.name.replace('"', "'"));
        }
    }
    let _ = writeln!(out, "    [*] --> {}", id(&def.states[def.initial].name));
    for (si, s) in def.states.iter().enumerate() {
        // Edges in rule order, as the engine picks them.
        let mut edges: Vec<(usize, &str)> = def.routes_from(si).map(|(r, e)| (r, &**e)).collect();
        edges.sort_unstable();
        // A machine stops in a final state: no edge leaves it.
        for (r, e) in edges.into_iter().filter(|_| !s.is_final) {
            let rule = &def.rules[r];
            let _ = writeln!(
                out,
                "    {} --> {} : {}",
                id(&s.name),
                id(&def.states[rule.to].name),
                label(e)
            );
        }
        if s.is_final {
            let _ = writeln!(out, "    {} --> [*]", id(&s.name));
        }
    }
    out
}

/// [`mermaid`] with state `current` marked (class `current`), and, when `paused`, shown
/// paused (class `paused` and a note).
pub fn mermaid_marked(def: &MachineDef, current: usize, paused: bool) -> String {
    let mut out = mermaid(def);
    let Some(s) = def.states.get(current) else {
        return out;
    };
    let sid = id(&s.name);
    out.push_str("    classDef current fill:#ffd54f,stroke:#e65100,stroke-width:3px\n");
    let _ = writeln!(out, "    class {sid} current");
    if paused {
        out.push_str(
            "    classDef paused fill:#ef9a9a,stroke:#b71c1c,stroke-width:3px,stroke-dasharray:4\n",
        );
        let _ = writeln!(out, "    class {sid} paused");
        let _ = writeln!(out, "    note right of {sid} : paused");
    }
    out
}
