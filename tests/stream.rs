//! End to end: the live record stream (`GET /events`) of the real `turnstile` binary, read
//! by real clients: `curl -N` (resuming with `Last-Event-ID` after a disconnect), a
//! client that stops reading (cut off while the engine keeps its speed), and
//! `turnstile tail` in a tmux pane, read back with `capture-pane` as a person sees it.
//! Processes are killed when a test ends, however it ends.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod kit;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kit::http::{get_json, metric, post_json};
use kit::sidecar::{configs, run_command};
use kit::{bin, eventually, path, wait_until, Proc};
use serde_json::{json, Value as Json};

/// Generous: the machine may share its two cores with builds and other tests.
const LIMIT: Duration = Duration::from_secs(60);

/// A machine that waits for events: `go` runs a log action, `done` goes back.
const IDLE: &str = r#"
metadata: {machine_name: idle}
initial_state: waiting
states: [waiting, working]
transitions:
  - {from: waiting, to: working, event: go}
  - {from: working, to: waiting, event: done}
actions:
  working:
    - {type: log, message: "working"}
"#;

struct Server {
    _proc: Proc,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start(config: Option<&str>) -> Self {
        let (dir, files) = match config {
            Some(yaml) => configs(&[yaml]),
            None => (
                tempfile::tempdir().unwrap(),
                vec![path("bench/pingpong_action.yaml")],
            ),
        };
        let mut proc = Proc::spawn(run_command(&files, &["--listen", "127.0.0.1:0"]));
        let addr = proc.sidecar_addr(LIMIT);
        proc.wait_started(1, LIMIT);
        Self {
            _proc: proc,
            addr,
            _dir: Some(dir),
        }
    }

    fn send(&self, event: &str, payload: Json) {
        let r = post_json(
            self.addr,
            "/machines/idle/events",
            &[],
            &json!({"type": event, "payload": payload}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
    }

    fn clients(&self) -> f64 {
        metric(self.addr, "turnstile_stream_clients").unwrap_or(-1.0)
    }
}

/// A child process killed when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout read line by line on a thread.
fn lines_of(mut cmd: Command) -> (Kid, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Kid(child), rx)
}

/// `curl -N` on the stream, with more arguments.
fn curl(addr: SocketAddr, query: &str, extra: &[&str]) -> (Kid, mpsc::Receiver<String>) {
    let mut c = Command::new("curl");
    c.args(["-sN", "--no-buffer"])
        .args(extra)
        .arg(format!("http://{addr}/events{query}"));
    lines_of(c)
}

/// SSE messages as (id, record), read from `rx` until `done` holds of what was read or
/// `limit` passes.
fn read_records(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    done: impl Fn(&[(Option<u64>, Json)]) -> bool,
) -> Vec<(Option<u64>, Json)> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut id = None;
    while !done(&got) {
        let left = limit.saturating_sub(t0.elapsed());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("data: ") {
            got.push((id.take(), serde_json::from_str(v).unwrap()));
        }
    }
    got
}

fn transitions(r: &[(Option<u64>, Json)]) -> usize {
    r.iter().filter(|(_, j)| j["kind"] == "transition").count()
}

#[test]
fn curl_follows_the_stream_and_resumes_with_last_event_id_after_a_disconnect() {
    let s = Server::start(Some(IDLE));
    let a = s.addr;
    let (first, rx) = curl(a, "?machine=idle", &[]);
    wait_until("the first client is counted", LIMIT, || s.clients() == 1.0);
    s.send("go", json!({"n": 1, "db_password": "hunter2"}));
    s.send("done", json!({"n": 2}));
    s.send("go", json!({"n": 3}));
    s.send("done", json!({"n": 4}));
    let got = read_records(&rx, LIMIT, |r| transitions(r) == 4);
    assert_eq!(transitions(&got), 4, "{got:?}");
    let ids: Vec<u64> = got.iter().map(|(id, _)| id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (id, r) in &got {
        assert_eq!(r["id"], json!(id.unwrap()));
        assert_eq!(r["machine"], "idle");
        assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    let t: Vec<&Json> = got
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["kind"] == "transition")
        .collect();
    assert_eq!(
        (&t[0]["from"], &t[0]["to"], &t[0]["event"]),
        (&json!("waiting"), &json!("working"), &json!("go"))
    );
    assert_eq!(t[0]["payload"]["db_password"], "[redacted]", "{}", t[0]);
    assert_eq!(t[0]["payload"]["n"], 1);
    // The log action's result.
    let acts = read_records(&rx, Duration::from_millis(500), |_| false);
    let all: Vec<&Json> = got.iter().chain(&acts).map(|(_, r)| r).collect();
    let action = all.iter().find(|r| r["kind"] == "action").unwrap();
    assert_eq!(
        (&action["action"], &action["state"], &action["outcome"]),
        (&json!("log"), &json!("working"), &json!("ok"))
    );
    let last = got
        .iter()
        .chain(&acts)
        .filter_map(|(id, _)| *id)
        .max()
        .unwrap();

    // The client goes; records are published while it is away.
    drop(first);
    wait_until("the first client is gone", LIMIT, || s.clients() == 0.0);
    let (_keep, _k) = curl(a, "?kind=error", &[]); // someone follows, so records are kept
    wait_until("the keeper is counted", LIMIT, || s.clients() == 1.0);
    s.send("go", json!({"n": 5}));
    s.send("done", json!({"n": 6}));
    let (_second, rx) = curl(
        a,
        "?machine=idle",
        &["-H", &format!("Last-Event-ID: {last}")],
    );
    let again = read_records(&rx, LIMIT, |r| transitions(r) == 2);
    assert_eq!(transitions(&again), 2, "{again:?}");
    assert!(
        again.iter().all(|(_, r)| r["kind"] != "missed"),
        "{again:?}"
    );
    let ids: Vec<u64> = again.iter().map(|(id, _)| id.unwrap()).collect();
    assert_eq!(ids[0], last + 1, "resumed right after {last}: {ids:?}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "a gap: {ids:?}");
    let payloads: Vec<&Json> = again
        .iter()
        .filter(|(_, r)| r["kind"] == "transition")
        .map(|(_, r)| &r["payload"]["n"])
        .collect();
    assert_eq!(payloads, [&json!(5), &json!(6)]);

    // An id this process never gave (it restarted): a `missed` record says so first.
    let (_third, rx) = curl(a, "", &["-H", "Last-Event-ID: 999999"]);
    let r = read_records(&rx, LIMIT, |r| !r.is_empty());
    assert_eq!(r[0].0, None);
    assert_eq!(r[0].1["kind"], "missed");
    assert_eq!(r[0].1["missed"], Json::Null);

    // Bad filters are refused with the common error shape.
    let (status, body) = kit::http::http(a, "GET", "/events?kind=nope", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown record kind"), "{body}");
    let (status, body) = kit::http::http(a, "GET", "/events?limit=3", "");
    assert_eq!(status, 400, "{body}");
}

/// A client that connects and reads nothing: the ring passes it, it is cut off and
/// counted, and the machine, running as fast as it can, keeps its speed.
#[test]
fn a_client_that_reads_nothing_is_cut_off_while_the_engine_keeps_its_speed() {
    let s = Server::start(None);
    let a = s.addr;
    let processed = || get_json(a, "/stats")["processed_events"].as_f64().unwrap();
    let rate = |over: Duration| {
        let (n0, t0) = (processed(), Instant::now());
        thread::sleep(over);
        (processed() - n0) / t0.elapsed().as_secs_f64()
    };
    let before = rate(Duration::from_secs(1));
    assert!(before > 1000.0, "the machine runs slowly: {before}/s");

    let mut stuck = std::net::TcpStream::connect(a).unwrap();
    write!(stuck, "GET /events HTTP/1.1\r\nHost: {a}\r\n\r\n").unwrap();
    let t0 = Instant::now();
    wait_until("the stuck client is counted", LIMIT, || s.clients() == 1.0);
    let (n0, at) = (processed(), Instant::now());
    let cut = wait_until("the stuck client is cut off", LIMIT, || {
        metric(a, "turnstile_stream_dropped_total") == Some(1.0)
    });
    let during = (processed() - n0) / at.elapsed().as_secs_f64();
    wait_until("the stuck client is no longer followed", LIMIT, || {
        s.clients() == 0.0
    });
    let after = rate(Duration::from_secs(1));
    eprintln!(
        "events/s before {before:.0}, with the stuck client {during:.0}, after {after:.0}; cut off after {cut:?} ({:?} since it connected)",
        t0.elapsed()
    );
    assert!(
        during >= before * 0.3,
        "the stuck client slowed the machine: {during:.0}/s against {before:.0}/s"
    );
    assert!(
        after >= before * 0.5,
        "the machine did not get its speed back: {after:.0}/s against {before:.0}/s"
    );
    // The client was given what fit in its buffers; its connection is closed (by the
    // write timeout at the latest) however little it reads.
    stuck
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("the cut-off client's connection stays open: {e} after {total} bytes"),
        }
    }
    assert!(total > 0);
}

/// tmux, on a socket of its own for this test.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    fn pane(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "tail"];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.cmd(&args).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn turnstile_tail_in_a_terminal_shows_one_colored_line_per_record() {
    let s = Server::start(Some(IDLE));
    let a = s.addr;
    let tmux = Tmux(format!("turnstile-test-{}", std::process::id()));
    let tail = format!("{} tail --url http://{a} --machine idle", bin());
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "tail",
        "-x",
        "200",
        "-y",
        "30",
        &format!("env -u NO_COLOR {tail}; sleep 60"),
    ]);
    assert!(out.status.success(), "{out:?}");
    wait_until("tail is connected", LIMIT, || s.clients() == 1.0);
    // A second client, its output a pipe: plain lines.
    let mut piped = Command::new(bin());
    piped.args(["tail", "--url", &format!("http://{a}")]);
    let (_piped, plain) = lines_of(piped);
    let mut json_tail = Command::new(bin());
    json_tail.args([
        "tail",
        "--json",
        "--kind",
        "transition",
        "--url",
        &format!("http://{a}"),
    ]);
    let (_json, json_lines) = lines_of(json_tail);
    wait_until("all three are connected", LIMIT, || s.clients() == 3.0);

    s.send("go", json!({"user": "ann", "api_token": "abc123"}));
    s.send("done", json!({}));
    let screen = eventually("the pane shows both transitions", || {
        let p = tmux.pane(false);
        p.contains("idle transition working -> waiting  on done")
            .then_some(p)
    });
    assert!(
        screen.contains("idle transition waiting -> working  on go"),
        "{screen}"
    );
    assert!(screen.contains("\"api_token\":\"[redacted]\""), "{screen}");
    assert!(!screen.contains("abc123"), "{screen}");
    assert!(
        screen.contains("idle action log #0 in working: ok"),
        "{screen}"
    );
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines
            .iter()
            .all(|l| l.len() > 13 && l.as_bytes()[2] == b':' && l.as_bytes()[8] == b'.'),
        "every line starts with its time: {screen}"
    );
    let colored = tmux.pane(true);
    assert!(
        colored.contains("\x1b[32mtransition"),
        "a terminal gets colors: {colored:?}"
    );

    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(plain.recv_timeout(LIMIT).unwrap());
    }
    assert!(got.iter().all(|l| !l.contains('\x1b')), "{got:?}");
    assert!(
        got[0].ends_with("idle transition waiting -> working  on go  {\"user\":\"ann\",\"api_token\":\"[redacted]\"}"),
        "{got:?}"
    );
    let j: Json = serde_json::from_str(&json_lines.recv_timeout(LIMIT).unwrap()).unwrap();
    assert_eq!(
        (&j["kind"], &j["to"]),
        (&json!("transition"), &json!("working"))
    );
    let j: Json = serde_json::from_str(&json_lines.recv_timeout(LIMIT).unwrap()).unwrap();
    assert_eq!(
        (&j["kind"], &j["to"]),
        (&json!("transition"), &json!("waiting"))
    );

    // A bad filter is an error, not a loop of retries.
    let out = Command::new(bin())
        .args(["tail", "--kind", "nope", "--url", &format!("http://{a}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind `nope`"));
}

/// `tail` outlives its sidecar: when the process restarts on the same port, it reconnects
/// (with `Last-Event-ID`), says that records before were lost with the old process, and
/// goes on.
#[test]
fn turnstile_tail_reconnects_when_the_sidecar_restarts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, files) = configs(&[IDLE]);
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let mut proc = Proc::spawn(run_command(&files, &["--listen", &listen, "--strict-port"]));
        let addr = proc.sidecar_addr(LIMIT);
        proc.wait_started(1, LIMIT);
        Server {
            _proc: proc,
            addr,
            _dir: None,
        }
    };
    let s = start();
    let mut cmd = Command::new(bin());
    cmd.args([
        "tail",
        "--kind",
        "transition",
        "--url",
        &format!("http://{listen}"),
    ]);
    let (_tail, lines) = lines_of(cmd);
    wait_until("tail is connected", LIMIT, || s.clients() == 1.0);
    s.send("go", json!({"n": 1}));
    let first = lines.recv_timeout(LIMIT).unwrap();
    assert!(
        first.ends_with("idle transition waiting -> working  on go  {\"n\":1}"),
        "{first}"
    );
    drop(s);
    let s = start();
    wait_until("tail is connected again", LIMIT, || s.clients() == 1.0);
    let note = lines.recv_timeout(LIMIT).unwrap();
    assert!(
        note.ends_with("-- the sidecar restarted: records before this are unknown"),
        "{note}"
    );
    s.send("go", json!({"n": 2}));
    let next = lines.recv_timeout(LIMIT).unwrap();
    assert!(
        next.ends_with("idle transition waiting -> working  on go  {\"n\":2}"),
        "{next}"
    );
}

#[test]
fn live_operations_and_breakpoint_hits_are_on_the_stream_with_state_and_redacted_context() {
    let s = Server::start(Some(IDLE));
    let a = s.addr;
    let (_c, rx) = curl(a, "?machine=idle", &[]);
    wait_until("the client is counted", LIMIT, || s.clients() >= 1.0);
    let r = post_json(a, "/machines/idle/pause", &[], &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        a,
        "/machines/idle/breakpoints",
        &[],
        &json!({"on": "event", "event": "go"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_json(a, "/machines/idle/resume", &[], &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    // The breakpoint holds `go`: its payload's secret shows redacted on the stream.
    s.send("go", json!({"api_token": "s3cr3t-value", "n": 1}));
    let got = read_records(&rx, LIMIT, |r| {
        r.iter().any(|(_, j)| j["kind"] == "breakpoint")
    });
    let actions: Vec<&str> = got
        .iter()
        .filter(|(_, j)| j["kind"] == "control")
        .map(|(_, j)| j["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "breakpoint_set", "resume"], "{got:?}");
    let (id, hit) = got.iter().find(|(_, j)| j["kind"] == "breakpoint").unwrap();
    assert!(id.is_some(), "{hit}");
    assert_eq!(hit["machine"], "idle", "{hit}");
    assert_eq!(hit["action"], "breakpoint_hit", "{hit}");
    assert_eq!(hit["on"], "event", "{hit}");
    assert_eq!(hit["state"], "waiting", "{hit}");
    assert_eq!(hit["paused"], true, "{hit}");
    assert_eq!(hit["event"], "go", "{hit}");
    assert_eq!(hit["payload"]["api_token"], "[redacted]", "{hit}");
    assert_eq!(hit["payload"]["n"], 1, "{hit}");
    assert!(hit["context"].is_object(), "{hit}");
    assert!(!hit.to_string().contains("s3cr3t-value"), "{hit}");
}

/// An instance started at run time (`POST /machines`) is named on the stream as in
/// `/trace`: `machine` its definition's name, `instance` its own (null for the machine the
/// process was started with); `?machine=` takes the definition's name (all of them) or the
/// instance's (that one alone).
#[test]
fn records_of_an_instance_started_at_run_time_name_it_and_filter_by_either_name() {
    let s = Server::start(Some(IDLE));
    let a = s.addr;
    let (_all, all_rx) = curl(a, "", &[]);
    let (_def, def_rx) = curl(a, "?machine=idle", &[]);
    let (_one, one_rx) = curl(a, "?machine=idle-2", &[]);
    wait_until("the clients are counted", LIMIT, || s.clients() == 3.0);
    let r = post_json(
        a,
        "/machines",
        &[],
        &json!({"definition": "idle", "name": "idle-2"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post_json(a, "/machines/idle-2/pause", &[], &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(a, "/machines/idle-2/resume", &[], &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        a,
        "/machines/idle-2/events",
        &[],
        &json!({"type": "go", "payload": {"n": 2}}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    s.send("go", json!({"n": 1}));
    // Transitions, log actions and control actions of both machines.
    let both = |r: &[(Option<u64>, Json)]| {
        let n = |instance: Json, kind: &str| {
            r.iter()
                .filter(|(_, j)| j["kind"] == kind && j["instance"] == instance)
                .count()
        };
        n(json!("idle-2"), "transition") == 1
            && n(json!("idle-2"), "action") == 1
            && n(json!("idle-2"), "control") == 2
            && n(Json::Null, "transition") == 1
            && n(Json::Null, "action") == 1
    };
    let all = read_records(&all_rx, LIMIT, both);
    assert!(both(&all), "{all:?}");
    for (_, r) in &all {
        // Every record has both fields; the instance's are named after its definition.
        assert_eq!(r["machine"], "idle", "{r}");
        assert!(r.as_object().unwrap().contains_key("instance"), "{r}");
        assert!(r["instance"] == "idle-2" || r["instance"].is_null(), "{r}");
    }
    let t = |got: &[(Option<u64>, Json)], instance: Json| {
        got.iter()
            .find(|(_, j)| j["kind"] == "transition" && j["instance"] == instance)
            .map(|(_, j)| j.clone())
            .unwrap()
    };
    let inst = t(&all, json!("idle-2"));
    assert_eq!(
        (&inst["event"], &inst["payload"]["n"]),
        (&json!("go"), &json!(2))
    );
    let conf = t(&all, Json::Null);
    assert_eq!(
        (&conf["event"], &conf["payload"]["n"]),
        (&json!("go"), &json!(1))
    );
    // The definition's name: the same records.
    let by_def = read_records(&def_rx, LIMIT, both);
    assert_eq!(by_def, all);
    // The instance's name: its records alone (its transition, action and control
    // actions), then nothing of the other machine.
    let alone = |r: &[(Option<u64>, Json)]| r.len() >= 4;
    let mut by_one = read_records(&one_rx, LIMIT, alone);
    by_one.extend(read_records(&one_rx, Duration::from_millis(500), |_| false));
    let want: Vec<_> = all
        .iter()
        .filter(|(_, j)| j["instance"] == "idle-2")
        .cloned()
        .collect();
    assert_eq!(by_one, want);
}
