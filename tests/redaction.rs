#![allow(clippy::unwrap_used)]
//! Redaction with the real binary: secrets sent in an event payload, in job data and in a
//! config's context reach the machine (its commands write them to files), and are absent
//! from every endpoint of the sidecar, from `jobs list` and `machine-state`, from the JSON
//! logs and from the spans an OTLP receiver gets; the config's `redact:` key and the
//! `--redact` flag (and `TURNSTILE_REDACT`) extend the list.

mod kit;

use std::path::Path;
use std::time::Duration;

use kit::http::{get, post_json};
use kit::otlp::Receiver;
use kit::{eventually, field, run_ok, text, turnstile, Proc};
use serde_json::{json, Value as Json};

const LIMIT: Duration = Duration::from_secs(60);

const PAYLOAD_SECRET: &str = "PAYLOAD-S3CRET-71c9";
const JOB_SECRET: &str = "JOB-S3CRET-0b44";
const CONTEXT_SECRET: &str = "CTX-S3CRET-5d2e";
/// Redacted by the config's `redact: [iban]`.
const IBAN_SECRET: &str = "IBAN-S3CRET-DE0012";
/// Redacted by `--redact PIN`.
const PIN_SECRET: &str = "PIN-S3CRET-4711";
const SECRETS: [&str; 5] = [
    PAYLOAD_SECRET,
    JOB_SECRET,
    CONTEXT_SECRET,
    IBAN_SECRET,
    PIN_SECRET,
];

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
initial_state: waiting
metadata:
  machine_name: vault
redact: [iban]
context:
  service_password: {CONTEXT_SECRET}
transitions:
  - {{from: waiting, to: greeting, event: login}}
  - {{from: greeting, to: waiting, event: greeted}}
  - {{from: waiting, to: working, event: new_job}}
  - {{from: working, to: failing, event: refused}}
  - {{from: failing, to: waiting, event: job_failed}}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
  greeting:
    - type: log
      message: "login of {{payload.user}} with {{payload.credentials.api_token}}, iban {{payload.customer_iban}}, pin {{payload.card_pin}}, as JSON {{payload|json}}, service {{service_password}}"
    - type: bash
      command: printf '%s %s %s %s' {{payload.credentials.api_token}} {{payload.customer_iban}} {{payload.card_pin}} {{service_password}} > {d}/payload.txt
      success: greeted
  working:
    - type: bash
      command: printf '%s' {{db_password}} > {d}/job.txt; echo 'access denied' >&2; exit 3
      error: refused
  failing:
    - type: fail_job
      error_message: "cannot log in as {{user}} with {{db_password}} ({{current_job.data|json}})"
"#
    )
}

/// `turnstile ARGS` with the given environment; stdout.
fn cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = turnstile(args);
    for (k, v) in env {
        c.env(k, v);
    }
    text(&run_ok(&args.join(" "), &mut c).stdout)
}

fn assert_clean(what: &str, shown: &str) {
    for s in SECRETS {
        assert!(!shown.contains(s), "{what} shows the secret {s}:\n{shown}");
    }
}

#[test]
fn secrets_reach_the_machine_and_nothing_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vault.yaml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let (cfg, db) = (
        cfg.display().to_string(),
        dir.path().join("jobs.db").display().to_string(),
    );
    let otlp = Receiver::start();
    let endpoint = otlp.endpoint();
    let mut p = Proc::start(&[
        "--redact",
        "PIN",
        "run",
        &cfg,
        "--db",
        &db,
        "--persist",
        "--otlp-endpoint",
        &endpoint,
    ]);
    let addr = p.sidecar_addr(LIMIT);

    // A secret in an event's payload.
    let r = post_json(
        addr,
        "/machines/vault/events",
        &[],
        &json!({"type": "login", "payload": {
            "user": "ann",
            "credentials": {"api_token": PAYLOAD_SECRET},
            "customer_iban": IBAN_SECRET,
            "card_pin": PIN_SECRET,
        }}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let written = eventually("the payload's command ran", || {
        std::fs::read_to_string(dir.path().join("payload.txt")).ok()
    });
    // The machine saw the real values.
    assert_eq!(
        written,
        format!("{PAYLOAD_SECRET} {IBAN_SECRET} {PIN_SECRET} {CONTEXT_SECRET}")
    );

    // A secret in a job's data; the job fails once and for all.
    let r = post_json(
        addr,
        "/jobs",
        &[],
        &json!({"job_type": "task", "max_attempts": 1,
                "data": {"user": "bob", "db_password": JOB_SECRET}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_clean("POST /jobs", &r.text());
    let job_id = r.json()["job_id"].as_str().unwrap().to_owned();
    let written = eventually("the job's command ran", || {
        std::fs::read_to_string(dir.path().join("job.txt")).ok()
    });
    assert_eq!(written, JOB_SECRET);
    let env = [("TURNSTILE_REDACT", "iban,pin")];
    let jobs = eventually("the job dead-lettered", || {
        let out = cli(&["jobs", "list", "--db", &db, "--format", "json"], &env);
        let v: Json = serde_json::from_str(&out).unwrap();
        (v[0]["status"] == "dead").then_some((v, out))
    });
    let (jobs, jobs_text) = jobs;
    assert_eq!(jobs[0]["job_id"], job_id.as_str());
    assert_eq!(jobs[0]["data"]["db_password"], "[redacted]", "{jobs:#}");
    assert_eq!(jobs[0]["data"]["user"], "bob", "{jobs:#}");
    assert_eq!(
        jobs[0]["error_message"],
        r#"cannot log in as bob with [redacted] ({"user":"bob","db_password":"[redacted]"})"#,
        "{jobs:#}"
    );
    assert_clean("jobs list --format json", &jobs_text);
    let listed = cli(&["jobs", "list", "--db", &db], &env);
    assert!(listed.contains(&job_id), "{listed}");
    assert_clean("jobs list", &listed);

    // Every endpoint; the machine's context shows the sensitive fields redacted.
    let m = eventually("the machine back in waiting", || {
        let m = get(addr, "/machines/vault").json();
        (m["state"] == "waiting").then_some(m)
    });
    let ctx = &m["context"];
    assert_eq!(ctx["service_password"], "[redacted]", "{m:#}");
    assert_eq!(ctx["db_password"], "[redacted]", "{m:#}");
    assert_eq!(ctx["user"], "bob", "{m:#}");
    let payload = &ctx["event_data"]["payload"];
    assert_eq!(payload["credentials"]["api_token"], "[redacted]", "{m:#}");
    assert_eq!(payload["customer_iban"], "[redacted]", "{m:#}");
    assert_eq!(payload["card_pin"], "[redacted]", "{m:#}");
    assert_eq!(payload["user"], "ann", "{m:#}");
    assert_eq!(
        ctx["last_error_command"]
            .as_str()
            .map(|c| c.contains("{db_password}")),
        Some(true),
        "{m:#}"
    );
    assert_eq!(
        ctx["last_error_values"]["{db_password}"], "[redacted]",
        "{m:#}"
    );
    let errors = get(addr, "/errors").json();
    assert!(
        errors.as_array().unwrap().iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("{db_password}")),
        "the command's error is there, placeholders as written: {errors:#}"
    );
    for path in [
        "/",
        "/machines",
        "/machines/vault",
        "/trace",
        "/trace?limit=1000",
        "/errors",
        "/stats",
        "/metrics",
        "/readyz",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_clean(path, &r.text());
    }

    // The spans: the failed command's span among them.
    let spans = otlp.wait_for(LIMIT, |s| {
        s.iter().any(|s| s.status == "STATUS_CODE_ERROR")
            && s.iter().any(|s| s.attr("turnstile.event") == Some("login"))
    });
    assert_clean("the spans", &format!("{spans:?}"));

    p.signal("TERM");
    let (st, _) = p.finish(LIMIT);
    assert!(st.success(), "{}", p.log());
    let logs = p.log();
    assert_clean("the logs", &logs);
    let logged = p
        .records()
        .into_iter()
        .find(|j| field(j, "target") == "turnstile::log")
        .unwrap_or_else(|| panic!("the log action's line: {logs}"));
    assert_eq!(
        field(&logged, "message"),
        r#"login of ann with [redacted], iban [redacted], pin [redacted], as JSON {"user":"ann","credentials":{"api_token":"[redacted]"},"customer_iban":"[redacted]","card_pin":"[redacted]"}, service [redacted]"#
    );

    // The saved state: the store keeps the real values, `machine-state` shows them
    // redacted.
    let states = cli(&["machine-state", "--db", &db, "--format", "json"], &env);
    let v: Json = serde_json::from_str(&states).unwrap();
    assert_eq!(v[0]["context"]["db_password"], "[redacted]", "{v:#}");
    assert_clean("machine-state --format json", &states);
    let store = turnstile_engine::store::SqliteStore::open(Path::new(&db)).unwrap();
    let saved = format!(
        "{:?}",
        turnstile_engine::store::StateStore::machines(&store).unwrap()
    );
    assert!(
        saved.contains(JOB_SECRET),
        "the store keeps the real value: {saved}"
    );
}

#[test]
fn a_bad_redact_name_is_refused() {
    let out = turnstile(&["--redact", " ", "jobs", "list", "--db", "/nonexistent/x.db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--redact"),
        "{}",
        text(&out.stderr)
    );
}
