//! `bash`: runs a shell command with a time limit and captured output.
//!
//! Exit 0 returns `success` (default `job_done`, as statemachine-engine); a non-zero exit
//! returns the event that `error_mappings` gives for the exit code, else `error`; running
//! past `timeout` (default 30 s) kills the command's whole process group and returns
//! `timeout_event`, else `error`. Placeholders are passed safely (see
//! [`crate::actions::shell`]).
//!
//! Error messages and `last_error_command` show the command as written in the config
//! (placeholders unexpanded); the interpolated values go to the context separately, as
//! `last_error_values` (placeholder as written → value), so that they can be redacted or
//! left out where messages travel (logs, `/errors`, `/trace`, spans).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::actions::shell::ShellTemplate;
use crate::actions::{Action, ActionCx, Built, Outcome, Params, Status, Step};
use crate::error_kind::ErrorKind;

/// Output kept per stream; the rest is read and dropped so the command never blocks.
const CAPTURE_LIMIT: usize = 64 * 1024;
/// Output kept in the outcome for logs and traces.
const OUTPUT_LIMIT: usize = 4096;

struct Bash {
    command: ShellTemplate,
    timeout: Duration,
    success: Arc<str>,
    error: Arc<str>,
    timeout_event: Arc<str>,
    error_mappings: HashMap<i32, Arc<str>>,
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let command = p.required_string("command", "\"echo hello\"");
    let timeout = p.seconds("timeout", Some(30.0));
    let success = p.event("success", Some("job_done"))?;
    let error = p.event("error", Some("error"))?;
    let timeout_event = p
        .event("timeout_event", None)
        .unwrap_or_else(|| error.clone());
    let mut error_mappings: HashMap<i32, Arc<str>> = HashMap::new();
    match p.raw("error_mappings") {
        None | Some(Json::Null) => {}
        Some(Json::Object(m)) => {
            for (k, v) in m {
                match (k.trim().parse::<i32>(), v.as_str()) {
                    (Ok(code), Some(ev)) => {
                        error_mappings.insert(code, Arc::from(ev));
                        p.written_event("error_mappings", ev);
                    }
                    (Err(_), _) => p.error(
                        "error_mappings",
                        format!("`error_mappings` key `{k}` is not an exit code"),
                        Some("use exit codes as keys, e.g. `\"2\": not_found`".into()),
                    ),
                    (_, None) => p.error(
                        "error_mappings",
                        format!("`error_mappings.{k}` must be an event name"),
                        Some(format!("write e.g. `\"{k}\": not_found`")),
                    ),
                }
            }
        }
        Some(_) => p.error(
            "error_mappings",
            "`error_mappings` must be a mapping of exit code to event".into(),
            Some("write e.g. `error_mappings: {\"2\": not_found}`".into()),
        ),
    }
    let command = match ShellTemplate::compile(&command?) {
        Ok(c) => c,
        Err(issues) => {
            for i in issues {
                p.error_at("command", i.code, i.message, Some(i.hint), i.placeholder);
            }
            return None;
        }
    };
    let mut emits: Vec<String> = vec![success.to_string(), error.to_string()];
    emits.push(timeout_event.to_string());
    emits.extend(error_mappings.values().map(|e| e.to_string()));
    emits.sort();
    emits.dedup();
    Some(Built {
        emits,
        action: Arc::new(Bash {
            command,
            timeout: timeout?,
            success,
            error,
            timeout_event,
            error_mappings,
        }),
        waits: false,
    })
}

/// Kills the command's process group when dropped (timeout or interruption).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(mut r: R) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated, {} bytes in all]", &s[..end], s.len())
}

impl Action for Bash {
    fn run(&self, cx: &mut ActionCx<'_>) -> Step {
        let scope = cx.scope();
        let values = Json::Object(self.command.values(&scope));
        let shown = self.command.source().to_owned();
        let env = match self.command.env(&scope) {
            Ok(env) => env,
            Err(msg) => {
                let mut o = Outcome::error(
                    "bash",
                    format!("{msg}\nCommand: {shown}"),
                    Some(self.error.clone()),
                );
                o.context
                    .push(("last_error_command".into(), Json::String(shown)));
                o.context.push(("last_error_values".into(), values));
                return Step::Done(o);
            }
        };
        let script = self.command.script().to_owned();
        let timeout = self.timeout;
        let (success, error, timeout_event) = (
            self.success.clone(),
            self.error.clone(),
            self.timeout_event.clone(),
        );
        let mappings = self.error_mappings.clone();
        let machine = cx.machine.to_owned();
        Step::Wait(Box::pin(async move {
            let mut cmd = tokio::process::Command::new("bash");
            cmd.arg("-c")
                .arg(&script)
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .process_group(0);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::error("bash", format!("cannot start bash: {e}"), Some(error));
                }
            };
            let mut guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let run = async {
                let out = async {
                    match stdout {
                        Some(s) => read_capped(s).await,
                        None => (Vec::new(), false),
                    }
                };
                let err = async {
                    match stderr {
                        Some(s) => read_capped(s).await,
                        None => (Vec::new(), false),
                    }
                };
                let ((o, _), (e, _), status) = tokio::join!(out, err, child.wait());
                (o, e, status)
            };
            let (out, err, status) = match tokio::time::timeout(timeout, run).await {
                Ok(r) => r,
                Err(_) => {
                    drop(guard);
                    let msg = format!(
                        "Command timed out after {} seconds\nCommand: {shown}",
                        timeout.as_secs_f64()
                    );
                    tracing::warn!(target: "turnstile::bash", machine = %machine, "{msg}");
                    let mut o = Outcome::error("bash", msg.clone(), Some(timeout_event))
                        .with_kind(ErrorKind::ActionTimeout);
                    o.status = Status::Timeout(msg);
                    o.context
                        .push(("last_error_command".into(), Json::String(shown)));
                    o.context.push(("last_error_values".into(), values));
                    return o;
                }
            };
            guard.0 = None;
            let out_s = String::from_utf8_lossy(&out);
            let err_s = String::from_utf8_lossy(&err);
            for line in out_s.lines().take(50) {
                tracing::info!(target: "turnstile::bash", machine = %machine, "{line}");
            }
            let mut captured = out_s.trim_end().to_owned();
            if !err_s.trim().is_empty() {
                if !captured.is_empty() {
                    captured.push('\n');
                }
                captured.push_str(err_s.trim_end());
            }
            let output = Some(truncate(&captured, OUTPUT_LIMIT));
            match status {
                Ok(st) if st.success() => {
                    let mut o = Outcome::ok(Some(success));
                    o.output = output;
                    o
                }
                Ok(st) => {
                    let code = st.code();
                    let detail = if err_s.trim().is_empty() {
                        "No error output".to_owned()
                    } else {
                        truncate(err_s.trim(), OUTPUT_LIMIT)
                    };
                    let msg = match code {
                        Some(c) => format!("Command failed (exit {c}): {detail}\nCommand: {shown}"),
                        None => format!("Command killed by a signal: {detail}\nCommand: {shown}"),
                    };
                    let event = code
                        .and_then(|c| mappings.get(&c).cloned())
                        .unwrap_or(error);
                    let mut o = Outcome::error("bash", msg, Some(event));
                    o.context
                        .push(("last_error_command".into(), Json::String(shown)));
                    o.context.push(("last_error_values".into(), values));
                    if let Some(c) = code {
                        o.context
                            .push(("last_error_exit_code".into(), Json::from(c)));
                    }
                    o.output = output;
                    o
                }
                Err(e) => {
                    Outcome::error("bash", format!("waiting for bash failed: {e}"), Some(error))
                }
            }
        }))
    }
}
