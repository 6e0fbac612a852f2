//! One loaded copy of a plugin library: the FFI boundary, and the only unsafe code of the
//! host.
//!
//! A library is opened with `RTLD_NOW | RTLD_LOCAL` (unresolved symbols fail the load, not
//! a later call), its ABI version is checked before anything else of it is called, its
//! manifest is read and validated, and it is never unloaded (the `Library` handle is
//! leaked), so the function pointers kept here stay valid for the life of the process.

#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::reply::{preview, reply_json};
use super::{CallError, LoadError};

/// The plugin ABI version this host speaks.
pub const ABI_VERSION: u32 = 1;

type AbiFn = unsafe extern "C" fn() -> u32;
type ManifestFn = unsafe extern "C" fn() -> *const c_char;
type InvokeFn = unsafe extern "C" fn(*const c_char, *const c_char, *const c_char) -> *mut c_char;
type FreeFn = unsafe extern "C" fn(*mut c_char);

/// One action type a manifest declares.
#[derive(Debug, Clone)]
pub(crate) struct ActionDecl {
    pub name: String,
    /// The parameters it accepts, when the manifest says.
    pub params: Option<Vec<String>>,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub name: String,
    pub version: String,
    pub actions: Vec<ActionDecl>,
}

/// A loaded library: its manifest and the two functions calls need.
pub(crate) struct Library {
    pub manifest: Manifest,
    /// The copy the library was loaded from.
    pub copy: PathBuf,
    invoke: InvokeFn,
    free: FreeFn,
}

fn open(copy: &Path) -> Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading a library runs its initialisers. Plugins are code the operator
        // chose to run (named by `--plugins` or a config); that trust is the premise of a
        // plugin system. RTLD_LOCAL keeps its symbols out of the global namespace.
        unsafe { Library::open(Some(copy), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above: plugins are code the operator chose to run.
        unsafe { libloading::Library::new(copy) }
    }
}

/// Reads symbol `name` as a function pointer of type `T`.
///
/// # Safety
///
/// `T` must be the function type the plugin ABI gives the symbol.
unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    name: &str,
    original: &Path,
) -> Result<T, LoadError> {
    // SAFETY: the caller guarantees `T` is the symbol's type.
    match unsafe { lib.get::<T>(name) } {
        Ok(sym) => Ok(*sym),
        Err(e) => Err(LoadError::MissingSymbol {
            path: original.to_path_buf(),
            symbol: name.to_owned(),
            message: e.to_string(),
        }),
    }
}

impl Library {
    /// Loads the library at `copy` (a private copy of `original`, which is named in
    /// errors), checks its ABI version, then reads its manifest.
    pub fn load(original: &Path, copy: &Path) -> Result<Self, LoadError> {
        let lib = open(copy).map_err(|e| LoadError::NotALibrary {
            path: original.to_path_buf(),
            message: e
                .to_string()
                .replace(&copy.display().to_string(), "the file"),
        })?;
        // The library is never unloaded: function pointers into it stay valid for ever,
        // and a plugin's thread-locals or background threads never outlive their code.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));

        // SAFETY: the ABI gives `turnstile_plugin_abi_version` the type `AbiFn`.
        let abi: AbiFn = unsafe { symbol(lib, "turnstile_plugin_abi_version", original) }?;
        // SAFETY: a function of the checked signature taking no arguments; the ABI version
        // function must be callable before anything else.
        let found = unsafe { abi() };
        if found != ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                path: original.to_path_buf(),
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: ABI version 1 gives these symbols these types.
        let manifest_fn: ManifestFn =
            unsafe { symbol(lib, "turnstile_plugin_manifest", original) }?;
        // SAFETY: as above.
        let invoke: InvokeFn = unsafe { symbol(lib, "turnstile_plugin_invoke", original) }?;
        // SAFETY: as above.
        let free: FreeFn = unsafe { symbol(lib, "turnstile_plugin_free", original) }?;

        let bad = |message: String| LoadError::BadManifest {
            path: original.to_path_buf(),
            message,
        };
        // SAFETY: ABI version 1: no arguments, returns a static NUL-terminated string or null.
        let ptr = unsafe { manifest_fn() };
        if ptr.is_null() {
            return Err(bad(
                "turnstile_plugin_manifest() returned a null pointer".into()
            ));
        }
        // SAFETY: non-null, and the ABI says it is a NUL-terminated string the library owns
        // for ever; it is copied at once.
        let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes().to_vec();
        let manifest = parse_manifest(&bytes).map_err(bad)?;
        Ok(Self {
            manifest,
            copy: copy.to_path_buf(),
            invoke,
            free,
        })
    }

    /// Calls `turnstile_plugin_invoke` and parses what it returns (freeing it at once).
    pub fn call(&self, action: &CStr, params: &CStr, context: &CStr) -> Result<Json, CallError> {
        // SAFETY: `invoke` has the ABI's signature (version checked at load); the three
        // arguments are NUL-terminated strings that outlive the call.
        let ptr = unsafe { (self.invoke)(action.as_ptr(), params.as_ptr(), context.as_ptr()) };
        if ptr.is_null() {
            return Err(CallError::Null);
        }
        let parsed = {
            // SAFETY: non-null, and the ABI says it is a NUL-terminated string owned by the
            // library until it is passed to `free`, which happens below, after this use.
            let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
            reply_json(bytes)
        };
        // SAFETY: `ptr` was returned by this library's `invoke` and is freed exactly once.
        unsafe { (self.free)(ptr) };
        parsed
    }
}

/// Validates a manifest: `{name, version, actions: [name | {name, params}]}`.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("it is not UTF-8: {e}"))?;
    let v: Json = serde_json::from_str(text)
        .map_err(|e| format!("it is not JSON ({e}): {:?}", preview(text)))?;
    let Json::Object(m) = v else {
        return Err("it must be a JSON object {\"name\", \"version\", \"actions\"}".into());
    };
    let name = match m.get("name") {
        Some(Json::String(s)) if valid_name(s) => s.clone(),
        Some(Json::String(s)) => {
            return Err(format!(
                "`name` {s:?} must be 1-100 letters, digits, `_`, `-` or `.`"
            ))
        }
        _ => return Err("`name` is missing or not a string".into()),
    };
    let version = match m.get("version") {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("`version` is missing or not a string".into()),
    };
    let Some(Json::Array(list)) = m.get("actions") else {
        return Err("`actions` is missing or not a list".into());
    };
    let mut actions: Vec<ActionDecl> = Vec::new();
    for item in list {
        let decl = match item {
            Json::String(s) => ActionDecl {
                name: s.clone(),
                params: None,
            },
            Json::Object(o) => {
                let Some(Json::String(n)) = o.get("name") else {
                    return Err("an entry of `actions` has no `name`".into());
                };
                let params = match o.get("params") {
                    None | Some(Json::Null) => None,
                    Some(Json::Array(ps)) => Some(
                        ps.iter()
                            .map(|p| p.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                            .ok_or(format!("`params` of action `{n}` must be a list of names"))?,
                    ),
                    Some(_) => return Err(format!("`params` of action `{n}` must be a list")),
                };
                ActionDecl {
                    name: n.clone(),
                    params,
                }
            }
            _ => return Err("`actions` entries must be names or {\"name\", \"params\"}".into()),
        };
        if !valid_name(&decl.name) {
            return Err(format!(
                "action type {:?} must be 1-100 letters, digits, `_`, `-` or `.`",
                decl.name
            ));
        }
        if actions.iter().any(|a| a.name == decl.name) {
            return Err(format!("action type `{}` is listed twice", decl.name));
        }
        actions.push(decl);
    }
    if actions.is_empty() {
        return Err("`actions` is empty: the plugin provides no action type".into());
    }
    Ok(Manifest {
        name,
        version,
        actions,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::parse_manifest;

    #[test]
    fn manifests() {
        let m = parse_manifest(
            br#"{"name":"x","version":"1","actions":["a",{"name":"b","params":["p"]}]}"#,
        )
        .unwrap();
        assert_eq!(m.actions.len(), 2);
        assert_eq!(m.actions[1].params.as_deref(), Some(&["p".to_owned()][..]));
        for bad in [
            &b"nope"[..],
            br#"[]"#,
            br#"{"version":"1","actions":["a"]}"#,
            br#"{"name":"x","actions":["a"]}"#,
            br#"{"name":"x","version":"1","actions":[]}"#,
            br#"{"name":"x","version":"1","actions":["a","a"]}"#,
            br#"{"name":"x","version":"1","actions":["has space"]}"#,
            br#"{"name":"x","version":"1","actions":[{"name":"a","params":"p"}]}"#,
        ] {
            assert!(
                parse_manifest(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
