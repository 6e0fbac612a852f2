//! Write Turnstile plugin actions in Rust.
//!
//! A plugin is a `cdylib` crate that implements [`Plugin`] and calls [`export_plugin!`]
//! once. The macro generates the four C functions Turnstile looks for
//! (`turnstile_plugin_abi_version`, `turnstile_plugin_manifest`, `turnstile_plugin_invoke`,
//! `turnstile_plugin_free`); every call is wrapped in `catch_unwind`, so a panic in your
//! code becomes an error result (type `panic`), never an abort of the engine.
//!
//! ```
//! use turnstile_plugin::{export_plugin, Call, Manifest, Plugin, PluginError, Reply};
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn manifest(&self) -> Manifest {
//!         Manifest::new("hello", "0.1.0").action("hello")
//!     }
//!
//!     fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
//!         match action {
//!             "hello" => {
//!                 let name = call.payload_str("name").unwrap_or("World");
//!                 Ok(Reply::event(call.success())
//!                     .set("greeting", format!("Hello, {name}!"))
//!                     .log(format!("said hello to {name}")))
//!             }
//!             other => Err(PluginError::new("unknown_action", format!("no action `{other}`"))),
//!         }
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! The wire format and the rules for C authors are in `include/turnstile_plugin.h`; the
//! guide is `docs/plugins.md` in the Turnstile repository.

// The generated exports and the helpers below cross the C boundary.
#![allow(unsafe_code)]

use std::any::Any;
use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{Map, Value as Json};

/// The `serde_json` this crate uses, so plugins build values of the same version.
pub use serde_json;

/// The ABI version this crate implements; Turnstile refuses a library with another one.
pub const ABI_VERSION: u32 = 1;

/// A plugin: its manifest and how it runs its actions.
///
/// One instance serves every call, possibly from several threads at once; use interior
/// mutability (a `Mutex`, atomics) for any state you keep.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, version and action types. Called once, when Turnstile loads it.
    fn manifest(&self) -> Manifest;

    /// Runs `action` (one of the types in the manifest) with its parameters and the
    /// machine's context. A returned error is logged and counted by Turnstile, which then
    /// gives the machine the error's event (or the action's `error:` parameter).
    fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError>;
}

/// What a plugin says about itself: name, version and action types.
#[derive(Debug, Clone)]
pub struct Manifest {
    name: String,
    version: String,
    actions: Vec<(String, Option<Vec<String>>)>,
}

impl Manifest {
    /// A manifest with no actions yet. Tip: `Manifest::new(env!("CARGO_PKG_NAME"),
    /// env!("CARGO_PKG_VERSION"))`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            actions: Vec::new(),
        }
    }

    /// Adds an action type that accepts any parameter.
    #[must_use]
    pub fn action(mut self, name: impl Into<String>) -> Self {
        self.actions.push((name.into(), None));
        self
    }

    /// Adds an action type with the parameters it accepts; `turnstile validate` warns
    /// about any other (the host's `timeout`, `success`, `error` and `timeout_event` are
    /// always accepted).
    #[must_use]
    pub fn action_with_params(mut self, name: impl Into<String>, params: &[&str]) -> Self {
        let params = params.iter().map(|p| (*p).to_owned()).collect();
        self.actions.push((name.into(), Some(params)));
        self
    }

    /// The manifest as the JSON Turnstile reads.
    pub fn to_json(&self) -> Json {
        let actions: Vec<Json> = self
            .actions
            .iter()
            .map(|(name, params)| match params {
                None => Json::String(name.clone()),
                Some(p) => serde_json::json!({"name": name, "params": p}),
            })
            .collect();
        serde_json::json!({"name": self.name, "version": self.version, "actions": actions})
    }
}

/// One call of an action: its parameters and the machine's context.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// The action's parameters, `{placeholders}` already resolved.
    pub params: Map<String, Json>,
    /// The machine's context.
    pub context: Map<String, Json>,
}

impl Call {
    /// A parameter (`None` when absent or null).
    pub fn param(&self, key: &str) -> Option<&Json> {
        self.params.get(key).filter(|v| !v.is_null())
    }

    /// A string parameter.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.param(key).and_then(Json::as_str)
    }

    /// A number parameter; numeric strings (`"2.5"`) are accepted too.
    pub fn param_f64(&self, key: &str) -> Option<f64> {
        self.param(key).and_then(number)
    }

    /// An event name from parameter `key`, or `default`.
    pub fn event(&self, key: &str, default: &str) -> String {
        match self.param(key) {
            Some(Json::String(s)) if !s.is_empty() => s.clone(),
            _ => default.to_owned(),
        }
    }

    /// The event to return on success: parameter `success`, default `success` (the
    /// convention of statemachine-engine's custom actions).
    pub fn success(&self) -> String {
        self.event("success", "success")
    }

    /// The payload of the last event that came from outside (`event_data.payload` in the
    /// context), when it is a mapping.
    pub fn payload(&self) -> Option<&Map<String, Json>> {
        self.context
            .get("event_data")
            .and_then(|e| e.get("payload"))
            .and_then(Json::as_object)
    }

    /// One field of the payload (`None` when absent or null).
    pub fn payload_value(&self, key: &str) -> Option<&Json> {
        self.payload()?.get(key).filter(|v| !v.is_null())
    }

    /// A string field of the payload.
    pub fn payload_str(&self, key: &str) -> Option<&str> {
        self.payload_value(key).and_then(Json::as_str)
    }
}

/// A number from a JSON number or a numeric string.
pub fn number(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A successful result: the event to process next, context updates and a log line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    event: Option<String>,
    context: Map<String, Json>,
    log: Option<String>,
}

impl Reply {
    /// Returns `event` to the machine.
    pub fn event(event: impl Into<String>) -> Self {
        Self {
            event: Some(event.into()),
            ..Self::default()
        }
    }

    /// Returns no event: the machine goes on with the state's next action.
    pub fn no_event() -> Self {
        Self::default()
    }

    /// Sets `key` in the machine's context.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// A line for Turnstile's log (and the action's trace record).
    #[must_use]
    pub fn log(mut self, line: impl Into<String>) -> Self {
        self.log = Some(line.into());
        self
    }

    /// The reply as the JSON Turnstile reads.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert(
            "event".into(),
            self.event.clone().map_or(Json::Null, Json::String),
        );
        if !self.context.is_empty() {
            m.insert("context".into(), Json::Object(self.context.clone()));
        }
        if let Some(l) = &self.log {
            m.insert("log".into(), Json::String(l.clone()));
        }
        Json::Object(m)
    }
}

/// A failed call: a short type (`not_found`, `bad_input`, ...), a message, and optionally
/// the event to return instead of the action's `error:` event and context updates.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginError(Box<ErrorInner>);

#[derive(Debug, Clone, PartialEq)]
struct ErrorInner {
    kind: String,
    message: String,
    event: Option<String>,
    context: Map<String, Json>,
}

impl PluginError {
    /// An error of type `kind` (a short snake_case word) with a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorInner {
            kind: kind.into(),
            message: message.into(),
            event: None,
            context: Map::new(),
        }))
    }

    /// Returns `event` to the machine instead of the action's `error:` event.
    #[must_use]
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.0.event = Some(event.into());
        self
    }

    /// Sets `key` in the machine's context as well.
    #[must_use]
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Json>) -> Self {
        self.0.context.insert(key.into(), value.into());
        self
    }

    /// The error type.
    pub fn kind(&self) -> &str {
        &self.0.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The error as the JSON Turnstile reads.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert(
            "error".into(),
            serde_json::json!({"type": self.0.kind, "message": self.0.message}),
        );
        if let Some(e) = &self.0.event {
            m.insert("event".into(), Json::String(e.clone()));
        }
        if !self.0.context.is_empty() {
            m.insert("context".into(), Json::Object(self.0.context.clone()));
        }
        Json::Object(m)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.kind, self.0.message)
    }
}

impl std::error::Error for PluginError {}

/// Implementation of the exports generated by [`export_plugin!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::ffi::{c_char, CString};
    use std::sync::OnceLock;

    use super::{catch_unwind, AssertUnwindSafe, Plugin};

    /// `turnstile_plugin_manifest`: the manifest JSON, built once; null if building it
    /// panicked.
    pub fn manifest<P: Plugin>(
        cell: &'static OnceLock<CString>,
        instance: fn() -> &'static P,
    ) -> *const c_char {
        let built = catch_unwind(AssertUnwindSafe(|| {
            cell.get_or_init(|| {
                let text = instance().manifest().to_json().to_string();
                // JSON text never holds a raw NUL (serde_json escapes it).
                CString::new(text).unwrap_or_default()
            })
            .as_ptr()
        }));
        built.unwrap_or(std::ptr::null())
    }

    /// `turnstile_plugin_invoke`.
    ///
    /// # Safety
    ///
    /// Each pointer is null or a NUL-terminated string valid for the duration of the call.
    pub unsafe fn invoke<P: Plugin>(
        instance: fn() -> &'static P,
        action: *const c_char,
        params: *const c_char,
        context: *const c_char,
    ) -> *mut c_char {
        // SAFETY: forwarded from this function's contract.
        unsafe { super::invoke_impl(instance, action, params, context) }
    }

    /// `turnstile_plugin_free`.
    ///
    /// # Safety
    ///
    /// `s` is null or a pointer returned by [`invoke`] and not freed yet.
    pub unsafe fn free(s: *mut c_char) {
        if !s.is_null() {
            // SAFETY: `s` came from `CString::into_raw` in `invoke` (contract above) and is
            // freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    }
}

/// Reads a C string argument as UTF-8.
///
/// # Safety
///
/// `p` is null or a NUL-terminated string valid for the duration of the call.
unsafe fn arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, PluginError> {
    if p.is_null() {
        return Err(PluginError::new(
            "bad_input",
            format!("{what} is a null pointer"),
        ));
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| PluginError::new("bad_input", format!("{what} is not UTF-8: {e}")))
}

fn object(text: &str, what: &str) -> Result<Map<String, Json>, PluginError> {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(Json::Null) => Ok(Map::new()),
        Ok(_) => Err(PluginError::new(
            "bad_input",
            format!("{what} is not a JSON object"),
        )),
        Err(e) => Err(PluginError::new(
            "bad_input",
            format!("{what} is not valid JSON: {e}"),
        )),
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

/// # Safety
///
/// Each pointer is null or a NUL-terminated string valid for the duration of the call.
unsafe fn invoke_impl<P: Plugin>(
    instance: fn() -> &'static P,
    action: *const c_char,
    params: *const c_char,
    context: *const c_char,
) -> *mut c_char {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Reply, PluginError> {
        // SAFETY: the pointers are valid per this function's contract.
        let action = unsafe { arg(action, "the action name") }?;
        // SAFETY: as above.
        let params = object(unsafe { arg(params, "params_json") }?, "params_json")?;
        // SAFETY: as above.
        let context = object(unsafe { arg(context, "context_json") }?, "context_json")?;
        instance().invoke(action, &Call { params, context })
    }));
    let json = match result {
        Ok(Ok(reply)) => reply.to_json(),
        Ok(Err(e)) => e.to_json(),
        Err(payload) => {
            let msg = format!("the plugin panicked: {}", panic_message(payload.as_ref()));
            // Dropping a panic payload can itself panic; never let that unwind into C.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            PluginError::new("panic", msg).to_json()
        }
    };
    // JSON text never holds a raw NUL (serde_json escapes it).
    CString::new(json.to_string())
        .unwrap_or_default()
        .into_raw()
}

/// Generates the four C functions of a Turnstile plugin for a type implementing
/// [`Plugin`].
///
/// `export_plugin!(MyPlugin)` builds the instance with `Default`;
/// `export_plugin!(MyPlugin, MyPlugin::new())` with an expression (evaluated once, at the
/// first call). Use it once per library, in a crate with `crate-type = ["cdylib"]`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!($plugin, <$plugin as ::core::default::Default>::default());
    };
    ($plugin:ty, $init:expr) => {
        #[doc(hidden)]
        fn __turnstile_plugin_instance() -> &'static $plugin {
            static INSTANCE: ::std::sync::OnceLock<$plugin> = ::std::sync::OnceLock::new();
            INSTANCE.get_or_init(|| $init)
        }

        /// Turnstile plugin ABI: the ABI version this library implements.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn turnstile_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// Turnstile plugin ABI: the manifest JSON, owned by the library.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn turnstile_plugin_manifest() -> *const ::std::ffi::c_char {
            static MANIFEST: ::std::sync::OnceLock<::std::ffi::CString> =
                ::std::sync::OnceLock::new();
            $crate::__private::manifest(&MANIFEST, __turnstile_plugin_instance)
        }

        /// Turnstile plugin ABI: runs one action; the result is freed with
        /// `turnstile_plugin_free`.
        ///
        /// # Safety
        ///
        /// Each pointer is null or a NUL-terminated string valid during the call.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn turnstile_plugin_invoke(
            action: *const ::std::ffi::c_char,
            params_json: *const ::std::ffi::c_char,
            context_json: *const ::std::ffi::c_char,
        ) -> *mut ::std::ffi::c_char {
            // SAFETY: the caller (the Turnstile host) upholds this function's contract.
            unsafe {
                $crate::__private::invoke(
                    __turnstile_plugin_instance,
                    action,
                    params_json,
                    context_json,
                )
            }
        }

        /// Turnstile plugin ABI: frees a string returned by `turnstile_plugin_invoke`.
        ///
        /// # Safety
        ///
        /// `s` is null or a string returned by `turnstile_plugin_invoke`, freed once.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn turnstile_plugin_free(s: *mut ::std::ffi::c_char) {
            // SAFETY: the caller (the Turnstile host) upholds this function's contract.
            unsafe { $crate::__private::free(s) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Echo;

    impl Plugin for Echo {
        fn manifest(&self) -> Manifest {
            Manifest::new("echo", "1.0.0")
                .action("echo")
                .action_with_params("boom", &["x"])
        }
        fn invoke(&self, action: &str, call: &Call) -> Result<Reply, PluginError> {
            match action {
                "echo" => Ok(Reply::event(call.success())
                    .set("params", Json::Object(call.params.clone()))
                    .set("name", call.payload_str("name").unwrap_or("none"))),
                "boom" => panic!("boom"),
                _ => Err(PluginError::new("unknown_action", action).with_event("nope")),
            }
        }
    }

    export_plugin!(Echo);

    fn call(action: &str, params: &str, context: &str) -> Json {
        let (a, p, c) = (
            CString::new(action).unwrap(),
            CString::new(params).unwrap(),
            CString::new(context).unwrap(),
        );
        // SAFETY: valid C strings that outlive the call.
        let out = unsafe { turnstile_plugin_invoke(a.as_ptr(), p.as_ptr(), c.as_ptr()) };
        assert!(!out.is_null());
        // SAFETY: `out` is a valid C string returned by invoke.
        let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_owned();
        // SAFETY: returned by invoke, freed once.
        unsafe { turnstile_plugin_free(out) };
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn abi_and_manifest() {
        assert_eq!(turnstile_plugin_abi_version(), ABI_VERSION);
        let p = turnstile_plugin_manifest();
        // SAFETY: the manifest is a static C string.
        let text = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        let m: Json = serde_json::from_str(text).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"name": "echo", "version": "1.0.0",
                "actions": ["echo", {"name": "boom", "params": ["x"]}]})
        );
        assert_eq!(turnstile_plugin_manifest(), p, "built once");
    }

    #[test]
    fn invoke_reply_error_and_panic() {
        let ok = call(
            "echo",
            r#"{"success": "done", "n": 1}"#,
            r#"{"event_data": {"payload": {"name": "Ann"}}}"#,
        );
        assert_eq!(ok["event"], "done");
        assert_eq!(ok["context"]["name"], "Ann");
        assert_eq!(ok["context"]["params"]["n"], 1);

        let err = call("other", "{}", "{}");
        assert_eq!(err["error"]["type"], "unknown_action");
        assert_eq!(err["event"], "nope");

        let panicked = call("boom", "{}", "{}");
        assert_eq!(panicked["error"]["type"], "panic");
        assert!(panicked["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom"));

        let bad = call("echo", "not json", "{}");
        assert_eq!(bad["error"]["type"], "bad_input");
    }

    #[test]
    fn null_arguments_are_errors_and_free_accepts_null() {
        // SAFETY: null pointers are allowed by the contract.
        let out = unsafe {
            turnstile_plugin_invoke(std::ptr::null(), std::ptr::null(), std::ptr::null())
        };
        // SAFETY: returned by invoke.
        let text = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_owned();
        // SAFETY: returned by invoke, freed once; null is a no-op.
        unsafe {
            turnstile_plugin_free(out);
            turnstile_plugin_free(std::ptr::null_mut());
        }
        assert!(text.contains("bad_input"), "{text}");
    }
}
