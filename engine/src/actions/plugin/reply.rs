//! The reply of one call: the JSON a plugin returns, read into a [`PluginReply`].
//!
//! Parsing is apart from the calls themselves so that a reply is checked the same way
//! whichever path made the call (an action on a blocking thread, or
//! [`PluginHost::call`](super::PluginHost::call)).

use serde_json::{Map, Value as Json};

use super::CallError;

/// A parsed, well-formed result of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginReply {
    /// The event to process next.
    pub event: Option<String>,
    /// Context updates.
    pub context: Map<String, Json>,
    /// A log line from the plugin.
    pub log: Option<String>,
    /// The error the plugin reported: `(type, message)`.
    pub error: Option<(String, String)>,
}

/// The first characters of a text, for messages.
pub(super) fn preview(text: &str) -> String {
    text.chars().take(60).collect()
}

/// Reads the text a plugin's `invoke` returned (the bytes before its NUL) as JSON.
pub(super) fn reply_json(bytes: &[u8]) -> Result<Json, CallError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<Json>(text)
            .map_err(|e| CallError::NotJson(format!("{e}; it starts with {:?}", preview(text)))),
        Err(e) => Err(CallError::NotUtf8(e.to_string())),
    }
}

impl PluginReply {
    /// Reads the bytes a plugin's `invoke` returned, as a call does: UTF-8 JSON, then
    /// [`PluginReply::from_json`]. (Calls go through the two steps apart; this is the
    /// whole path in one, for tests and fuzzing.)
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CallError> {
        Self::from_json(reply_json(bytes)?)
    }

    /// Reads `{"event", "context", "log"}` or `{"error": {"type", "message"}, ...}`.
    pub fn from_json(v: Json) -> Result<Self, CallError> {
        let Json::Object(mut m) = v else {
            return Err(CallError::BadShape(
                "expected a JSON object {\"event\", \"context\"} or {\"error\"}".into(),
            ));
        };
        let event = match m.remove("event") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) if s.is_empty() => None,
            Some(Json::String(s)) => Some(s),
            Some(other) => {
                return Err(CallError::BadShape(format!(
                    "`event` must be a string or null, found {other}"
                )))
            }
        };
        let context = match m.remove("context") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(c)) => c,
            Some(_) => return Err(CallError::BadShape("`context` must be an object".into())),
        };
        let log = match m.remove("log") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s),
            Some(_) => return Err(CallError::BadShape("`log` must be a string".into())),
        };
        let error = match m.remove("error") {
            None | Some(Json::Null) => None,
            Some(Json::Object(e)) => {
                let kind = match e.get("type") {
                    Some(Json::String(s)) if !s.is_empty() => s.clone(),
                    _ => "error".to_owned(),
                };
                let message = match e.get("message") {
                    Some(Json::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                Some((kind, message))
            }
            Some(Json::String(s)) => Some(("error".to_owned(), s)),
            Some(_) => {
                return Err(CallError::BadShape(
                    "`error` must be an object {\"type\", \"message\"}".into(),
                ))
            }
        };
        Ok(Self {
            event,
            context,
            log,
            error,
        })
    }
}
