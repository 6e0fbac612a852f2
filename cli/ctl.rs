//! `turnstile ctl ...`: a running sidecar's live operations from the terminal, one
//! request each through [`Sidecar`] (the client `jobs --url` and `tail` use): `start`
//! (`POST /machines`), `pause`, `resume`, `step`, `stop`, `restart`
//! (`POST /machines/{name}/...`), `context` (`GET /machines/{name}`, or with a patch
//! `PATCH /machines/{name}/context`), `break add|list|rm` (`.../breakpoints`) and
//! `diagram` (`GET .../diagram`).
//!
//! The sidecar decides; this file only asks and prints. `--format text` prints a short
//! reading of the answer, `--format json` the sidecar's JSON as it came. A refusal or an
//! unreachable sidecar is one line on stderr naming the operation, the status and the
//! sidecar's message (`turnstile: ctl step worker: 409 machine `worker` has no event to
//! step: none is held or queued`), exit 1; a command line that cannot work (a bad
//! `--url`, a patch that is not JSON) exits 2 through [`UsageError`].

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;

use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value as Json};

use crate::args::{BreakCommand, CtlArgs, CtlCommand, Format};
use crate::sidecar_client::{segment, Refused, Sidecar, Unreachable};
use crate::UsageError;

/// `println!` that ignores a closed stdout (`turnstile ctl diagram m | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `turnstile ctl`.
pub fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let sidecar = Sidecar::new(&args.url, args.token.clone())?;
    let json = args.format == Format::Json;
    let what = label(&args.command);
    match run(&sidecar, args.command, json) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is::<UsageError>() => Err(e),
        Err(e) => {
            eprintln!("turnstile: {what}: {}", explain(&e, &sidecar));
            Ok(ExitCode::from(1))
        }
    }
}

/// `ctl step worker`, `ctl break rm worker 3`: the operation, for messages.
fn label(c: &CtlCommand) -> String {
    match c {
        CtlCommand::Start { definition, .. } => format!("ctl start {definition}"),
        CtlCommand::Pause { machine } => format!("ctl pause {machine}"),
        CtlCommand::Resume { machine } => format!("ctl resume {machine}"),
        CtlCommand::Step { machine } => format!("ctl step {machine}"),
        CtlCommand::Stop { machine } => format!("ctl stop {machine}"),
        CtlCommand::Restart { machine } => format!("ctl restart {machine}"),
        CtlCommand::Context { machine, .. } => format!("ctl context {machine}"),
        CtlCommand::Diagram { machine } => format!("ctl diagram {machine}"),
        CtlCommand::Break(BreakCommand::Add { machine, .. }) => format!("ctl break add {machine}"),
        CtlCommand::Break(BreakCommand::List { machine }) => format!("ctl break list {machine}"),
        CtlCommand::Break(BreakCommand::Rm { machine, id }) => {
            format!("ctl break rm {machine} {id}")
        }
    }
}

/// An error as the line after `turnstile: ctl ...: `: `STATUS message` for a refusal.
fn explain(e: &anyhow::Error, sidecar: &Sidecar) -> String {
    if let Some(r) = e.downcast_ref::<Refused>() {
        return format!("{} {}", r.status.as_u16(), r.message);
    }
    if let Some(u) = e.downcast_ref::<Unreachable>() {
        return format!("cannot reach the sidecar at {}: {}", sidecar.shown(), u.why);
    }
    format!("{e:#}")
}

/// `/machines/{name}` and what follows.
fn machine_path(name: &str, rest: &str) -> String {
    format!("/machines/{}{rest}", segment(name))
}

fn run(sidecar: &Sidecar, command: CtlCommand, json: bool) -> anyhow::Result<()> {
    let control = |name: &str, op: &str| -> anyhow::Result<()> {
        let v = sidecar.write(Method::POST, &machine_path(name, &format!("/{op}")))?;
        print_answer(&v, json, summary);
        Ok(())
    };
    match command {
        CtlCommand::Start {
            definition,
            name,
            context,
        } => start(sidecar, &definition, name, context.as_deref(), json),
        CtlCommand::Pause { machine } => control(&machine, "pause"),
        CtlCommand::Resume { machine } => control(&machine, "resume"),
        CtlCommand::Step { machine } => control(&machine, "step"),
        CtlCommand::Stop { machine } => control(&machine, "stop"),
        CtlCommand::Restart { machine } => control(&machine, "restart"),
        CtlCommand::Context { machine, set, file } => {
            let patch = match (set, file) {
                (Some(text), _) => Some(parse_json(&text, "--set")?),
                (None, Some(f)) => Some(parse_json(&read_file(&f)?, &f.display().to_string())?),
                (None, None) => None,
            };
            let v = match patch {
                Some(p) => {
                    sidecar.write_json(Method::PATCH, &machine_path(&machine, "/context"), &p)?
                }
                None => {
                    let v = sidecar.get(&machine_path(&machine, ""))?;
                    if let Some(why) = v.get("context_error").and_then(Json::as_str) {
                        anyhow::bail!("the context could not be read: {why}");
                    }
                    v
                }
            };
            print_answer(&v, json, |v| pretty(&v["context"]));
            Ok(())
        }
        CtlCommand::Break(BreakCommand::Add {
            machine,
            on,
            state,
            event,
            when,
        }) => {
            let mut body = Map::new();
            body.insert("on".into(), json!(on.as_str()));
            for (k, v) in [("state", state), ("event", event), ("when", when)] {
                if let Some(v) = v {
                    body.insert(k.into(), Json::String(v));
                }
            }
            let v = sidecar.write_json(
                Method::POST,
                &machine_path(&machine, "/breakpoints"),
                &Json::Object(body),
            )?;
            print_answer(&v, json, |b| format!("breakpoint {}", breakpoint_line(b)));
            Ok(())
        }
        CtlCommand::Break(BreakCommand::List { machine }) => {
            let v = sidecar.get(&machine_path(&machine, "/breakpoints"))?;
            print_answer(&v, json, breakpoint_table);
            Ok(())
        }
        CtlCommand::Break(BreakCommand::Rm { machine, id }) => {
            let v = sidecar.write(
                Method::DELETE,
                &machine_path(&machine, &format!("/breakpoints/{id}")),
            )?;
            print_answer(&v, json, |b| {
                format!("removed breakpoint {}", breakpoint_line(b))
            });
            Ok(())
        }
        CtlCommand::Diagram { machine } => {
            let text = sidecar.get_text(&machine_path(&machine, "/diagram"))?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"machine": machine, "diagram": text}))?
                );
            } else {
                outln!("{}", text.trim_end());
            }
            Ok(())
        }
    }
}

/// `ctl start`: `POST /machines` `{definition, name?, context?}`, 201 `{"name": ...}`.
fn start(
    sidecar: &Sidecar,
    definition: &str,
    name: Option<String>,
    context: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = Map::new();
    body.insert("definition".into(), json!(definition));
    if let Some(n) = name {
        body.insert("name".into(), Json::String(n));
    }
    if let Some(c) = context {
        body.insert("context".into(), parse_json(c, "--context")?);
    }
    let v = match sidecar.write_json(Method::POST, "/machines", &Json::Object(body)) {
        Ok(v) => v,
        Err(e) => {
            // A sidecar without run-time instances routes no `POST /machines`: 405 (the
            // path takes GET), or 404 from one that has no such path at all.
            let missing = e.downcast_ref::<Refused>().is_some_and(|r| {
                r.status == StatusCode::METHOD_NOT_ALLOWED
                    || (r.status == StatusCode::NOT_FOUND && r.message.starts_with("no endpoint"))
            });
            if missing {
                anyhow::bail!(
                    "the sidecar at {} cannot start machines: it has no POST /machines (a Turnstile without run-time instances); start the definition with `turnstile run` instead, or upgrade the sidecar",
                    sidecar.shown()
                );
            }
            return Err(e);
        }
    };
    print_answer(&v, json, |v| match v.get("name").and_then(Json::as_str) {
        Some(n) => n.to_owned(),
        None => pretty(v),
    });
    Ok(())
}

/// Reads a patch file, `-` being standard input.
fn read_file(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|e| UsageError(format!("--file {}: cannot read it: {e}", path.display())))?;
    Ok(text)
}

/// JSON given on the command line (or in a file): a usage error when it does not parse.
fn parse_json(text: &str, what: &str) -> anyhow::Result<Json> {
    serde_json::from_str(text).map_err(|e| UsageError(format!("{what} is not JSON: {e}")).into())
}

/// Prints the answer: as JSON, or as `text` reads it.
fn print_answer(v: &Json, json: bool, text: impl Fn(&Json) -> String) {
    if json {
        outln!("{}", pretty(v));
    } else {
        outln!("{}", text(v));
    }
}

fn pretty(v: &Json) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A live operation's answer in one line: `worker: paused in state `idle`, 1 queued,
/// holding `go``.
fn summary(v: &Json) -> String {
    let machine = v["machine"].as_str().unwrap_or("?");
    let state = v["state"].as_str().unwrap_or("?");
    let how = if v["running"] == json!(false) {
        "stopped"
    } else if v["paused"] == json!(true) {
        "paused"
    } else {
        "running"
    };
    let mut line = format!(
        "{machine}: {how} in state `{state}`, {} queued",
        v["queue_depth"].as_u64().unwrap_or(0)
    );
    if let Some(e) = v["held_event"].as_str() {
        line.push_str(&format!(", holding `{e}`"));
    }
    if v["action_running"] == json!(true) {
        line.push_str(", an action running");
    }
    if let Some(r) = v["stop_reason"].as_str() {
        line.push_str(&format!(" ({r})"));
    }
    line
}

/// `3: on enter state=busy when=attempts > 3 (hits 0)`.
fn breakpoint_line(b: &Json) -> String {
    let mut line = format!("{}: on {}", b["id"], b["on"].as_str().unwrap_or("?"));
    for k in ["state", "event", "when"] {
        if let Some(v) = b[k].as_str() {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line.push_str(&format!(" (hits {})", b["hits"].as_u64().unwrap_or(0)));
    line
}

/// `ctl break list`: a table, or a line saying there is none.
fn breakpoint_table(v: &Json) -> String {
    let list = v.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "no breakpoints".into();
    }
    let cell = |b: &Json, k: &str| b[k].as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "{:>4}  {:<10} {:<16} {:<16} {:>5}  WHEN",
        "ID", "ON", "STATE", "EVENT", "HITS"
    );
    for b in list {
        out.push_str(&format!(
            "\n{:>4}  {:<10} {:<16} {:<16} {:>5}  {}",
            b["id"].as_u64().unwrap_or(0),
            cell(b, "on"),
            cell(b, "state"),
            cell(b, "event"),
            b["hits"].as_u64().unwrap_or(0),
            cell(b, "when")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn answers_read_as_lines() {
        let v = json!({"machine": "w", "state": "idle", "paused": true, "held_event": "go",
            "action_running": false, "queue_depth": 2, "running": true});
        assert_eq!(
            summary(&v),
            "w: paused in state `idle`, 2 queued, holding `go`"
        );
        let v = json!({"machine": "w", "state": "idle", "paused": false, "held_event": null,
            "action_running": true, "queue_depth": 0, "running": false,
            "stop_reason": "stopped by request"});
        assert_eq!(
            summary(&v),
            "w: stopped in state `idle`, 0 queued, an action running (stopped by request)"
        );
        let b = json!({"id": 3, "on": "enter", "state": "busy", "event": null,
            "when": "attempts > 3", "hits": 1});
        assert_eq!(
            breakpoint_line(&b),
            "3: on enter state=busy when=attempts > 3 (hits 1)"
        );
        let table = breakpoint_table(&json!([b]));
        assert!(table.starts_with("  ID  ON"), "{table}");
        assert!(
            table.lines().nth(1).unwrap().contains("enter") && table.contains("attempts > 3"),
            "{table}"
        );
        assert_eq!(breakpoint_table(&json!([])), "no breakpoints");
        assert!(parse_json("{", "--set").unwrap_err().is::<UsageError>());
    }
}
