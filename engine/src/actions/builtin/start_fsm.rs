//! `start_fsm`: starts an instance of another definition in this engine, with
//! statemachine-engine's parameters (there, it spawned a process per machine):
//!
//! - `yaml_path`: the definition's config file, relative to the working directory (as
//!   statemachine-engine), else to the folder of the config that names it. It is loaded
//!   and compiled once, with that config (a file that does not load or does not validate
//!   is a diagnostic of that config), and becomes the engine's definition of its name
//!   when the engine runs that config (unless it has one: a config machine's own, which
//!   then runs, with its reloads; see [`Action::starts`]).
//! - `machine_name`: the instance's name, with placeholders (`patient_{current_job.id}`);
//!   a generated one (`DEFINITION-N`) when absent.
//! - `context_vars`: entries `a.b.c as name` (the value at that path of the context, else
//!   of `payload`, copied to `name` of the instance's context) or a plain `name`; a value
//!   that is absent at run time is left out (and logged).
//! - `success`, `error`: the events returned (none by default on success; `error` by
//!   default): a refused start (name taken, the engine stopping) is the error event, with
//!   the reason in `last_error`.
//! - `store_pid`: accepted and ignored: an instance is a task of this process, not a
//!   process of its own.
//!
//! Why the definition is compiled with the config rather than at the first start: a file
//! that does not load is then found by `turnstile validate`, with its line and column,
//! before anything runs, and a start costs no file I/O on the machine's task.

use std::any::Any;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::actions::params::Seed;
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};
use crate::runtime::template::{lookup_path, Scope, Template};

struct StartFsm {
    /// The compiled definition (an `Arc<MachineDef>`, handed to the engine as it is).
    seed: Seed,
    machine_name: Option<Template>,
    /// (path in the scope, name in the instance's context).
    vars: Vec<(Vec<String>, String)>,
    success: Option<Arc<str>>,
    error: Arc<str>,
}

thread_local! {
    /// The files being compiled through `start_fsm` on this thread (to refuse a cycle:
    /// a definition that starts itself, directly or not).
    static LOADING: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let def = definition(p);
    let machine_name = p.template("machine_name");
    let vars = context_vars(p);
    // Accepted for statemachine-engine's configs; an instance has no process id.
    let _ = p.flag("store_pid", false);
    let success = p.event("success", None);
    let error = p.event("error", Some("error"))?;
    let def = def?;
    Some(Built {
        emits: success
            .iter()
            .map(|s| s.to_string())
            .chain([error.to_string()])
            .collect(),
        action: Arc::new(StartFsm {
            seed: def,
            machine_name,
            vars: vars?,
            success,
            error,
        }),
        waits: false,
    })
}

/// Finds, loads and compiles `yaml_path`.
fn definition(p: &mut Params<'_>) -> Option<Seed> {
    let written = p.required_string("yaml_path", "\"config/worker.yaml\"")?;
    if written.contains('{') {
        p.error(
            "yaml_path",
            format!("`yaml_path` `{written}` holds a placeholder"),
            Some(
                "the file is loaded with this config, before any context exists: name one file"
                    .into(),
            ),
        );
        return None;
    }
    let Some(path) = resolve(&written, p.config_file()) else {
        let beside = p
            .config_file()
            .and_then(Path::parent)
            .map(|d| format!(" nor in {}", d.display()))
            .unwrap_or_default();
        p.error(
            "yaml_path",
            format!("no file `{written}` in the working directory{beside}"),
            Some(
                "`yaml_path` is relative to the working directory, then to this config's folder"
                    .into(),
            ),
        );
        return None;
    };
    let Some(loader) = p.loader() else {
        p.error(
            "yaml_path",
            "`yaml_path` cannot be loaded here (no config compiler)".into(),
            None,
        );
        return None;
    };
    let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let cycle = LOADING.with(|l| l.borrow().contains(&key))
        || p.config_file()
            .and_then(|c| std::fs::canonicalize(c).ok())
            .is_some_and(|c| c == key);
    if cycle {
        p.error(
            "yaml_path",
            format!(
                "`{written}` starts itself through `start_fsm` (directly or through the files it starts)"
            ),
            Some("a definition cannot start instances of itself here: start them from a controller config".into()),
        );
        return None;
    }
    LOADING.with(|l| l.borrow_mut().push(key));
    let loaded = loader(&path);
    LOADING.with(|l| {
        l.borrow_mut().pop();
    });
    match loaded {
        Ok(def) => Some(def),
        Err(errors) => {
            let first = errors.first().cloned().unwrap_or_default();
            p.error(
                "yaml_path",
                format!(
                    "`{}` does not validate ({} error{}); the first: {first}",
                    path.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ),
                Some(format!("run `turnstile validate {}`", path.display())),
            );
            None
        }
    }
}

/// `written` as it is (the working directory), else beside the config.
fn resolve(written: &str, config: Option<&Path>) -> Option<PathBuf> {
    let p = Path::new(written);
    if p.is_file() {
        return Some(p.to_path_buf());
    }
    if p.is_absolute() {
        return None;
    }
    let beside = config?.parent()?.join(p);
    beside.is_file().then_some(beside)
}

/// `context_vars`: a list of `a.b as c` or `name` entries.
fn context_vars(p: &mut Params<'_>) -> Option<Vec<(Vec<String>, String)>> {
    let hint = "write entries such as `- current_job.data.report_id as report_id` or `- name`";
    let Some(raw) = p.raw("context_vars") else {
        return Some(Vec::new());
    };
    let Json::Array(items) = raw else {
        p.error(
            "context_vars",
            "`context_vars` must be a list".into(),
            Some(hint.into()),
        );
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match item.as_str().map(parse_var) {
            Some(Ok(v)) => out.push(v),
            Some(Err(why)) => {
                let text = item.as_str().unwrap_or_default().to_owned();
                p.error_at(
                    "context_vars",
                    "bad-parameter",
                    format!("`context_vars` entry `{text}`: {why}"),
                    Some(hint.into()),
                    Some((text, 0)),
                );
                ok = false;
            }
            None => {
                p.error(
                    "context_vars",
                    format!("`context_vars` entries are strings, found `{item}`"),
                    Some(hint.into()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `a.b.c as name` → (["a","b","c"], "name"); `name` → (["name"], "name").
fn parse_var(s: &str) -> Result<(Vec<String>, String), String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let (path, name) = match words.as_slice() {
        [path] => (*path, path.rsplit('.').next().unwrap_or(path)),
        [path, "as", name] => (*path, *name),
        _ => return Err("expected `path as name` or `name`".into()),
    };
    let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segs.iter().any(String::is_empty) {
        return Err(format!("`{path}` has an empty segment"));
    }
    if name.is_empty() || name.contains('.') {
        return Err(format!("`{name}` is not a context key (no dots)"));
    }
    Ok((segs, name.to_owned()))
}

impl Action for StartFsm {
    fn starts(&self) -> Option<&(dyn Any + Send + Sync)> {
        Some(&*self.seed)
    }

    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let name = self
            .machine_name
            .as_ref()
            .map(|t| t.render_string(&scope).into_owned());
        let mut context = Map::new();
        for (path, key) in &self.vars {
            let value = scope
                .root(&path[0])
                .and_then(|root| lookup_path(root, &path[1..]));
            match value {
                Some(v) => {
                    context.insert(key.clone(), v.clone());
                }
                None => tracing::warn!(
                    target: "turnstile::action",
                    machine = cx.machine,
                    "start_fsm: `{}` is not in the context: `{key}` is left out",
                    path.join(".")
                ),
            }
        }
        let Some(starter) = cx.router.starter() else {
            return Step::Done(Outcome::error(
                "start_fsm",
                "this engine cannot start instances".into(),
                Some(self.error.clone()),
            ));
        };
        match starter.start(&*self.seed, name.as_deref(), context) {
            Ok(started) => {
                let mut out = Outcome::ok(self.success.clone());
                out.output = Some(format!("started machine `{started}`"));
                Step::Done(out)
            }
            Err(e) => Step::Done(Outcome::error(
                "start_fsm",
                format!("cannot start machine: {e}"),
                Some(self.error.clone()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_var;

    #[test]
    fn context_vars_entries_parse() {
        let v = |p: &[&str], n: &str| -> (Vec<String>, String) {
            (p.iter().map(|s| (*s).to_owned()).collect(), n.to_owned())
        };
        assert_eq!(
            parse_var("current_job.data.report_id as report_id"),
            Ok(v(&["current_job", "data", "report_id"], "report_id"))
        );
        assert_eq!(parse_var("  name "), Ok(v(&["name"], "name")));
        assert_eq!(parse_var("a.b"), Ok(v(&["a", "b"], "b")));
        for bad in ["", "a as", "a as b c", "a..b as c", "a is b", "a as b.c"] {
            assert!(parse_var(bad).is_err(), "{bad:?} accepted");
        }
    }
}
