//! The action factory of a plugin action type ([`PluginFactory`]) and the action it builds
//! from a config ([`PluginAction`]).
//!
//! Building reads the host's own parameters (`timeout`, `success`, `error`,
//! `timeout_event`), warns about parameters the manifest does not declare, and compiles
//! the rest into the template passed to the plugin. Running the action is `call.rs`.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::actions::{ActionFactory, Built, Params};
use crate::runtime::template::JsonTemplate;

use super::slot::Slot;
use super::{DEFAULT_TIMEOUT, HOST_PARAMS};

/// Builds actions of one plugin action type.
pub(crate) struct PluginFactory {
    pub slot: Arc<Slot>,
    pub kind: String,
    /// Parameters the manifest declares, if it does.
    pub params: Option<Vec<String>>,
}

impl ActionFactory for PluginFactory {
    fn build(&self, p: &mut Params<'_>) -> Option<Built> {
        let timeout = p.seconds("timeout", Some(DEFAULT_TIMEOUT.as_secs_f64()));
        let success = p.event("success", None);
        let error = p.event("error", Some("error"))?;
        let timeout_event = p
            .event("timeout_event", None)
            .unwrap_or_else(|| error.clone());
        let all = p.take_all();
        if let Some(known) = &self.params {
            let mut unknown: Vec<&String> = all
                .keys()
                .filter(|k| {
                    !known.contains(k)
                        && !HOST_PARAMS.contains(&k.as_str())
                        && !crate::actions::params::COMMON.contains(&k.as_str())
                })
                .collect();
            unknown.sort();
            for k in unknown {
                let candidates = known
                    .iter()
                    .map(String::as_str)
                    .chain(HOST_PARAMS.iter().copied());
                let hint = match crate::config::diag::did_you_mean(k, candidates) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => {
                        let mut all: Vec<&str> = known.iter().map(String::as_str).collect();
                        all.extend(HOST_PARAMS);
                        format!("`{}` accepts: {}", self.kind, all.join(", "))
                    }
                };
                p.warn(k, format!("unknown parameter `{k}` is ignored"), Some(hint));
            }
        }
        let template = match JsonTemplate::compile(&Json::Object(all.clone())) {
            Ok(t) => t,
            Err(e) => {
                p.error("params", e, None);
                return None;
            }
        };
        let timeout = timeout?;
        let kind_c = match CString::new(self.kind.clone()) {
            Ok(c) => c,
            Err(e) => {
                p.error("type", e.to_string(), None);
                return None;
            }
        };
        let mut emits = vec![
            success.as_deref().unwrap_or("success").to_owned(),
            error.to_string(),
            timeout_event.to_string(),
        ];
        emits.sort();
        emits.dedup();
        Some(Built {
            emits,
            action: Arc::new(PluginAction {
                slot: self.slot.clone(),
                kind: self.kind.clone().into(),
                kind_c: Arc::new(kind_c),
                params: template,
                timeout,
                error,
                timeout_event,
            }),
            waits: false,
        })
    }
}

/// One plugin action of a config.
pub(super) struct PluginAction {
    pub(super) slot: Arc<Slot>,
    pub(super) kind: Arc<str>,
    pub(super) kind_c: Arc<CString>,
    pub(super) params: JsonTemplate,
    pub(super) timeout: Duration,
    pub(super) error: Arc<str>,
    pub(super) timeout_event: Arc<str>,
}
