//! [`MetricsDetail`], which of a machine's metric breakdowns an exporter shows beyond its
//! default set (the `metrics: {detail: ...}` key of a config, and the process-wide
//! `--metrics-detail` flag of `turnstile run`).
//!
//! The engine exposes no metrics itself; it carries the choice in the definition so that
//! an observer can read it with the rest of the config. Its own file, depending on nothing
//! else of the crate, so that the config loader and the CLI can name the levels without
//! pulling in the runtime (as [`crate::error_kind`]).

/// Opt-in breakdowns whose series grow with the size of a config. Each is off by default,
/// when a machine exposes a fixed number of series whatever its states and rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MetricsDetail {
    /// `states`: state durations by state, and a state gauge for every declared state.
    pub states: bool,
    /// `transitions`: transitions by rule (from, to, event), and events by event name.
    pub transitions: bool,
    /// `actions`: action durations by action type and outcome.
    pub actions: bool,
}

impl MetricsDetail {
    /// Nothing beyond the default set.
    pub const NONE: MetricsDetail = MetricsDetail {
        states: false,
        transitions: false,
        actions: false,
    };
    /// Every breakdown.
    pub const ALL: MetricsDetail = MetricsDetail {
        states: true,
        transitions: true,
        actions: true,
    };
    /// The names [`MetricsDetail::item`] accepts.
    pub const NAMES: [&'static str; 5] = ["states", "transitions", "actions", "all", "none"];

    /// One name: `states`, `transitions`, `actions`, `all` or `none`.
    pub fn item(name: &str) -> Option<MetricsDetail> {
        let mut d = MetricsDetail::NONE;
        match name {
            "states" => d.states = true,
            "transitions" => d.transitions = true,
            "actions" => d.actions = true,
            "all" => d = MetricsDetail::ALL,
            "none" => {}
            _ => return None,
        }
        Some(d)
    }

    /// A comma-separated list of names (the command line's form), e.g. `states,actions`.
    pub fn parse_list(list: &str) -> Result<MetricsDetail, String> {
        let mut d = MetricsDetail::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match MetricsDetail::item(name) {
                Some(x) => d = d.union(x),
                None => {
                    return Err(format!(
                        "unknown metrics detail `{name}` (known: {})",
                        MetricsDetail::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(d)
    }

    /// What either shows.
    #[must_use]
    pub fn union(self, other: MetricsDetail) -> MetricsDetail {
        MetricsDetail {
            states: self.states || other.states,
            transitions: self.transitions || other.transitions,
            actions: self.actions || other.actions,
        }
    }

    /// The names of what is on, comma-separated (`none` when nothing is).
    pub fn names(self) -> String {
        let on: Vec<&str> = [
            (self.states, "states"),
            (self.transitions, "transitions"),
            (self.actions, "actions"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        if on.is_empty() {
            "none".to_owned()
        } else {
            on.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_unite() {
        assert_eq!(MetricsDetail::parse_list(""), Ok(MetricsDetail::NONE));
        assert_eq!(MetricsDetail::parse_list("all"), Ok(MetricsDetail::ALL));
        let d = MetricsDetail::parse_list("states, actions").unwrap_or_default();
        assert!(d.states && d.actions && !d.transitions);
        assert_eq!(d.names(), "states,actions");
        assert_eq!(MetricsDetail::NONE.names(), "none");
        let err = MetricsDetail::parse_list("states,rules").unwrap_err();
        assert!(
            err.contains("`rules`") && err.contains("transitions"),
            "{err}"
        );
        assert_eq!(
            MetricsDetail::item("transitions").map(|t| t.union(d)),
            Some(MetricsDetail::ALL)
        );
    }
}
