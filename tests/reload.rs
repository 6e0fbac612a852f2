//! End to end: `turnstile run --watch` with the real binary. Config files are changed the
//! way editors do it, and what the design promises is read where an operator reads it:
//! the logs, `/machines`, `/errors` and `turnstile_config_reloads_total` in `/metrics`.
//! Also measured: the time from a write to the `config reloaded` log record. And what
//! reading a config costs when the path is not a config (a device, a huge sparse file):
//! `validate` and the watcher refuse it without reading it.
//! Reloads on demand, without `--watch`: `SIGHUP` and `POST /-/reload` (with its answer, its
//! diagnostics and the write checks), the `turnstile_config_last_reload_*` gauges, and the
//! Prometheus-style probes `/-/healthy` and `/-/ready`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kit::http::{get, get_json, http, metric, request};
use kit::sidecar::{configs, run_command};
use kit::{eventually, field, Proc};
use serde_json::Value as Json;

/// Generous: the machine may share its two cores with builds and other tests.
const LIMIT: Duration = Duration::from_secs(60);

/// An editor's save: write a temporary file, rename it over the config.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn config(name: &str, extra_state: &str) -> String {
    format!(
        r#"metadata: {{machine_name: {name}}}
initial_state: idle
states: [idle, busy, {extra_state}]
transitions:
  - {{from: idle, to: busy, event: go}}
  - {{from: busy, to: idle, event: back}}
  - {{from: "*", to: {extra_state}, event: jump}}
  - {{from: {extra_state}, to: idle, event: back}}
"#
    )
}

struct Watched {
    proc: Proc,
    addr: SocketAddr,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start(text: &str) -> Watched {
    let (dir, paths) = configs(&[text]);
    let cmd = run_command(&paths, &["--watch", "--listen", "127.0.0.1:0"]);
    let mut proc = Proc::spawn(cmd);
    let addr = proc.sidecar_addr(LIMIT);
    proc.wait_for("the watcher", LIMIT, |j| {
        field(j, "target") == "turnstile::reload"
            && field(j, "message") == "watching for config changes"
    });
    Watched {
        proc,
        addr,
        path: paths[0].clone().into(),
        _dir: dir,
    }
}

fn wait_reloaded(w: &mut Watched, machine: &str) -> Json {
    w.proc.wait_for("a reload", LIMIT, |j| {
        field(j, "target") == "turnstile::reload"
            && field(j, "machine") == machine
            && field(j, "message").starts_with("config reloaded")
    })
}

fn state(addr: SocketAddr, machine: &str) -> String {
    get_json(addr, &format!("/machines/{machine}"))["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn watch_swaps_good_configs_and_refuses_bad_ones() {
    let mut w = start(&config("m", "v1"));
    let addr = w.addr;
    let (st, body) = http(addr, "POST", "/machines/m/events", r#"{"type":"go"}"#);
    assert_eq!(st, 202, "{body}");
    eventually("busy", || (state(addr, "m") == "busy").then_some(()));

    // A good change: the machine stays in `busy`, the new rule works.
    save(&w.path, &config("m", "v2"));
    let rec = wait_reloaded(&mut w, "m");
    assert!(
        field(&rec, "message").contains("stays in state `busy`"),
        "{rec}"
    );
    assert_eq!(state(addr, "m"), "busy");
    assert_eq!(
        metric(addr, r#"turnstile_config_reloads_total{result="success"}"#),
        Some(1.0)
    );

    // A broken change: refused with line and column, the old config keeps running.
    save(
        &w.path,
        "metadata: {machine_name: m}\ninitial_state: idle\nstates: [idle, busy\n",
    );
    let warn = w.proc.wait_for("the rejection", LIMIT, |j| {
        field(j, "target") == "turnstile::reload"
            && field(j, "message").starts_with("config change rejected")
    });
    assert_eq!(field(&warn, "level"), "WARN", "{warn}");
    let msg = field(&warn, "message");
    assert!(msg.contains("\n3:") || msg.contains("\n4:"), "{msg}");
    let errors = eventually("the /errors record", || {
        let e = get_json(addr, "/errors?kind=config");
        (!e.as_array().unwrap().is_empty()).then_some(e)
    });
    let m = errors[0]["message"].as_str().unwrap();
    let file = w.path.display().to_string();
    assert!(m.starts_with(&format!("{file}: ")), "{m}");
    let after = &m[file.len() + 2..];
    let (line, rest) = after.split_once(':').unwrap();
    let (col, _) = rest.split_once(':').unwrap();
    line.parse::<u32>().unwrap();
    col.parse::<u32>().unwrap();
    assert_eq!(
        metric(addr, r#"turnstile_config_reloads_total{result="failure"}"#),
        Some(1.0)
    );
    let (st, _) = http(addr, "POST", "/machines/m/events", r#"{"type":"jump"}"#);
    assert_eq!(st, 202);
    eventually("v2 (the old config still runs)", || {
        (state(addr, "m") == "v2").then_some(())
    });

    // The current state removed: back to the initial state, and /errors says why.
    save(
        &w.path,
        "metadata: {machine_name: m}\ninitial_state: idle\nstates: [idle, busy]\ntransitions:\n  - {from: idle, to: busy, event: go}\n",
    );
    let rec = wait_reloaded(&mut w, "m");
    assert!(field(&rec, "message").contains("`v2` was removed"), "{rec}");
    assert_eq!(state(addr, "m"), "idle");
    let errors = get_json(addr, "/errors?kind=state_removed");
    assert_eq!(errors.as_array().unwrap().len(), 1, "{errors}");
    assert_eq!(errors[0]["machine"], "m");
    assert_eq!(
        metric(
            addr,
            r#"turnstile_errors_total{machine="m",kind="state_removed"}"#
        ),
        Some(1.0)
    );

    // Renamed: the new machine starts, the old one stops.
    save(&w.path, &config("n", "v3"));
    wait_reloaded(&mut w, "n");
    let machines = get_json(addr, "/machines");
    let list = machines
        .as_array()
        .or_else(|| machines["machines"].as_array());
    let text = machines.to_string();
    assert!(list.is_some(), "{text}");
    let old = get_json(addr, "/machines/m");
    assert_eq!(old["running"], false, "{old}");
    assert_eq!(old["stop_reason"], "Removed", "{old}");
    assert_eq!(get_json(addr, "/machines/n")["running"], true);
    assert_eq!(
        metric(addr, r#"turnstile_config_reloads_total{result="success"}"#),
        Some(3.0)
    );

    w.proc.signal("TERM");
    let (status, _) = w.proc.finish(LIMIT);
    assert!(status.success(), "{}", w.proc.log());
}

/// A change is live within a second: from the write to the `config reloaded` log record
/// (written once the machine runs the new definition), median of 5 trials.
#[test]
fn a_change_is_live_within_one_second_of_the_write() {
    let mut w = start(&config("m", "v0"));
    // Let the watcher's first check pass.
    thread::sleep(Duration::from_millis(300));
    let mut samples = Vec::new();
    for n in 1..=5 {
        let t0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        save(&w.path, &config("m", &format!("v{n}")));
        let rec = wait_reloaded(&mut w, "m");
        samples.push(kit::timestamp(&rec) - t0);
        let (st, _) = http(w.addr, "POST", "/machines/m/events", r#"{"type":"jump"}"#);
        assert_eq!(st, 202);
        eventually("the new state", || {
            (state(w.addr, "m") == format!("v{n}")).then_some(())
        });
        thread::sleep(Duration::from_millis(300));
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!(
        "turnstile run --watch: write -> `config reloaded` log record: median {:.0} ms (min {:.0}, max {:.0}) over {} trials",
        median * 1e3,
        samples[0] * 1e3,
        samples[samples.len() - 1] * 1e3,
        samples.len()
    );
    assert!(median < 1.0, "median {median} s: {samples:?}");
}

/// Resident memory of a process in kB (Linux).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn validate_refuses_devices_and_huge_files_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.yaml");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let sparse = sparse.display().to_string();
    for (file, message) in [
        ("/dev/zero", "error[unreadable]: not a regular file: it is a device"),
        (
            sparse.as_str(),
            "error[too-large]: file is 1073741824 bytes; the limit for a machine config is 4194304 bytes",
        ),
    ] {
        // 256 MiB of address space: reading the file whole would fail (an abort, not 2).
        let started = Instant::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v 262144 && exec '{}' validate \"$1\"",
                kit::bin()
            ))
            .args(["sh", file])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {:?}\n{stdout}{stderr}", out.status);
        assert!(stdout.contains(message), "{stdout}{stderr}");
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }
}

#[test]
fn watch_refuses_a_config_replaced_by_a_device() {
    let mut w = start(&config("dev", "v1"));
    // The config becomes a link to /dev/zero (a ConfigMap-style symlink swap).
    let link = w.path.with_extension("link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    std::fs::rename(&link, &w.path).unwrap();
    let rec = w.proc.wait_for("the refusal", LIMIT, |j| {
        field(j, "target") == "turnstile::reload"
            && field(j, "message").contains("config change rejected")
    });
    assert!(
        field(&rec, "message").contains("error[unreadable]: not a regular file: it is a device"),
        "{rec}"
    );
    let rss = rss_kb(w.proc.pid());
    assert!(rss < 200_000, "{rss} kB resident");
    assert_eq!(state(w.addr, "dev"), "idle", "the machine keeps running");
    // A good config is taken again.
    save(&w.path, &config("dev", "v2"));
    wait_reloaded(&mut w, "dev");
    w.proc.signal("TERM");
    let (status, _) = w.proc.finish(LIMIT);
    assert!(status.success(), "{status:?}");
}

/// `turnstile run` of one config in a fresh directory, without `--watch`, with `extra`
/// arguments; its sidecar answers once this returns.
fn start_plain(text: &str, extra: &[&str]) -> Watched {
    let (dir, paths) = configs(&[text]);
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let cmd = run_command(&paths, &args);
    let mut proc = Proc::spawn(cmd);
    let addr = proc.sidecar_addr(LIMIT);
    // Answered once every machine runs (and SIGHUP is handled).
    assert_eq!(state(addr, "m"), "idle");
    Watched {
        proc,
        addr,
        path: paths[0].clone().into(),
        _dir: dir,
    }
}

/// The states `/machines/m` lists: they say which config runs.
fn states(addr: SocketAddr) -> Vec<String> {
    get_json(addr, "/machines/m")["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn last_ok(addr: SocketAddr) -> f64 {
    metric(addr, "turnstile_config_last_reload_successful ").unwrap()
}

fn last_ok_time(addr: SocketAddr) -> f64 {
    metric(
        addr,
        "turnstile_config_last_reload_success_timestamp_seconds ",
    )
    .unwrap()
}

const BROKEN: &str = "metadata: {machine_name: m}\ninitial_state: idle\nstates: [idle, busy\n";

#[test]
fn sighup_reloads_every_config_without_watch() {
    let w = start_plain(&config("m", "v1"), &[]);
    let addr = w.addr;
    assert_eq!(last_ok(addr), 1.0);
    let start_time = last_ok_time(addr);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start_time > now - 120.0 && start_time <= now + 1.0,
        "{start_time}"
    );

    // A valid change is picked up on SIGHUP (nothing watches the file).
    save(&w.path, &config("m", "v2"));
    w.proc.signal("HUP");
    eventually("v2 running", || {
        states(addr).contains(&"v2".to_owned()).then_some(())
    });
    let (st, body) = http(addr, "POST", "/machines/m/events", r#"{"type":"jump"}"#);
    assert_eq!(st, 202, "{body}");
    eventually("in v2", || (state(addr, "m") == "v2").then_some(()));
    assert_eq!(last_ok(addr), 1.0);
    let after_good = last_ok_time(addr);
    assert!(after_good > start_time, "{after_good} <= {start_time}");

    // An invalid one is refused: the old config keeps running, the gauge says 0 and the
    // time of the last success stays.
    save(&w.path, BROKEN);
    w.proc.signal("HUP");
    eventually("the gauge at 0", || (last_ok(addr) == 0.0).then_some(()));
    assert_eq!(last_ok_time(addr), after_good);
    assert!(states(addr).contains(&"v2".to_owned()));
    let (st, body) = http(addr, "POST", "/machines/m/events", r#"{"type":"back"}"#);
    assert_eq!(st, 202, "{body}");
    eventually("back in idle", || {
        (state(addr, "m") == "idle").then_some(())
    });
    let errors = get_json(addr, "/errors?kind=config");
    assert!(!errors.as_array().unwrap().is_empty(), "{errors}");

    // Fixed: 1 again, and the time moves.
    save(&w.path, &config("m", "v3"));
    w.proc.signal("HUP");
    eventually("the gauge at 1", || (last_ok(addr) == 1.0).then_some(()));
    assert!(last_ok_time(addr) > after_good);
    assert!(states(addr).contains(&"v3".to_owned()));
    w.proc.signal("TERM");
}

#[test]
fn post_reload_answers_what_it_did_and_refuses_bad_configs_with_diagnostics() {
    let w = start_plain(&config("m", "v1"), &["--token", "s3cret"]);
    let addr = w.addr;
    let auth = [("Authorization", "Bearer s3cret")];
    let reload = |headers: &[(&str, &str)]| request(addr, "POST", "/-/reload", headers, b"");

    // A write: the token is needed.
    let r = reload(&[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = reload(&[("Authorization", "Bearer wrong")]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(request(addr, "GET", "/-/reload", &[], b"").status, 405);

    // Nothing changed: 200, unchanged.
    let r = reload(&auth);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["status"], "success", "{j}");
    assert_eq!(j["configs"][0]["result"], "unchanged", "{j}");
    assert_eq!(j["configs"][0]["machine"], "m", "{j}");
    assert_eq!(j["configs"][0]["path"], w.path.display().to_string(), "{j}");
    let t0 = last_ok_time(addr);

    // A valid change: reloaded when the answer comes.
    save(&w.path, &config("m", "v2"));
    let r = reload(&auth);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["configs"][0]["result"], "reloaded", "{j}");
    assert!(states(addr).contains(&"v2".to_owned()));
    assert_eq!(last_ok(addr), 1.0);
    let t1 = last_ok_time(addr);
    assert!(t1 > t0, "{t1} <= {t0}");

    // An invalid one: 422 with the diagnostics; the old config keeps running.
    save(&w.path, BROKEN);
    let r = reload(&auth);
    assert_eq!(r.status, 422, "{}", r.text());
    let j = r.json();
    let e = &j["error"];
    assert_eq!(e["status"], 422, "{j}");
    let c = &e["configs"][0];
    assert_eq!(c["result"], "refused", "{j}");
    assert_eq!(c["machine"], "m", "{j}");
    let d = &c["diagnostics"][0];
    assert!(d["line"].as_u64().unwrap() >= 3, "{j}");
    assert!(d["column"].as_u64().unwrap() >= 1, "{j}");
    assert!(!d["code"].as_str().unwrap().is_empty(), "{j}");
    assert!(!d["message"].as_str().unwrap().is_empty(), "{j}");
    assert!(states(addr).contains(&"v2".to_owned()));
    assert_eq!(last_ok(addr), 0.0);
    assert_eq!(last_ok_time(addr), t1);
    // The same bad file refused again, still with its diagnostics.
    let r = reload(&auth);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.json()["error"]["configs"][0]["diagnostics"][0]["line"].is_u64());
    // Counted as a config error, not as a bad request.
    let bad = get_json(addr, "/errors?kind=bad_message");
    assert!(!bad.to_string().contains("/-/reload: 422"), "{bad}");

    // Fixed: 200, the gauge back at 1, the time moves.
    save(&w.path, &config("m", "v3"));
    let r = reload(&auth);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["configs"][0]["result"], "reloaded");
    assert!(states(addr).contains(&"v3".to_owned()));
    assert_eq!(last_ok(addr), 1.0);
    assert!(last_ok_time(addr) > t1);
    w.proc.signal("TERM");
}

#[test]
fn read_only_refuses_reload_and_the_prometheus_style_probes_answer_as_the_others() {
    let w = start_plain(&config("m", "v1"), &["--read-only"]);
    let addr = w.addr;
    save(&w.path, &config("m", "v2"));
    let r = request(addr, "POST", "/-/reload", &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!states(addr).contains(&"v2".to_owned()));

    for (prom, ours) in [("/-/healthy", "/healthz"), ("/-/ready", "/readyz")] {
        let a = get(addr, prom);
        let b = get(addr, ours);
        assert_eq!(a.status, 200, "{prom}: {}", a.text());
        assert_eq!(a.status, b.status);
        assert_eq!(a.json(), b.json(), "{prom} and {ours}");
        assert_eq!(a.header("content-type"), b.header("content-type"));
    }
    let index = get(addr, "/").text();
    for p in ["href=\"/-/healthy\"", "href=\"/-/ready\"", "POST /-/reload"] {
        assert!(index.contains(p), "{p} not on the index page");
    }
    w.proc.signal("TERM");
}
