//! Events across processes through the store (`turnstile_machines`, `machine_events`):
//! two `turnstile run` processes play ping-pong, 5,000 rounds (10,000 events between
//! them), on SQLite and on PostgreSQL; a receiver killed mid-stream (PostgreSQL) and
//! restarted loses nothing and saves nothing twice (`--persist`).
//!
//! The test drives `ping` with `serve` events written into the store (seq `i` as the job
//! id); `ping` sends each on to `pong` (another process), which answers `pong` to `ping`.
//! Both run with `--persist`: each transition's audit row is written in the transaction
//! that marks its event processed, so the audit says exactly what each machine handled.

#![allow(clippy::unwrap_used)]

mod kit;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kit::http::{get_json, post_json};
use kit::postgres::Server;
use kit::Proc;
use serde_json::{json, Value as Json};
use turnstile_engine::store::{NewEvent, Store, StoreOptions, SyncMode};

const LIMIT: Duration = Duration::from_secs(180);

const PING: &str = r#"
initial_state: idle
metadata:
  machine_name: ping
transitions:
  - {from: [idle, serving, returned], to: serving, event: serve}
  - {from: [idle, serving, returned], to: returned, event: pong}
actions:
  serving:
    - type: send_event
      target_machine: pong
      event_type: ping
      job_id: "{payload.seq}"
      payload: {seq: "{payload.seq}"}
      fire_and_forget: true
"#;

const PONG: &str = r#"
initial_state: idle
metadata:
  machine_name: pong
transitions:
  - {from: [idle, answering], to: answering, event: ping}
actions:
  answering:
    - type: send_event
      target_machine: ping
      event_type: pong
      job_id: "{payload.seq}"
      payload: {seq: "{payload.seq}"}
      fire_and_forget: true
"#;

fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}

fn open(db: &str) -> Arc<dyn Store> {
    let opts = StoreOptions {
        renew: false,
        sync: SyncMode::Normal,
        ..StoreOptions::default()
    };
    turnstile_engine::store::open(&db.parse().unwrap(), opts).unwrap()
}

fn run(config: &Path, db: &str) -> Proc {
    let mut cmd = Command::new(kit::bin());
    cmd.current_dir(kit::root())
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn,turnstile::sidecar=info",
            "run",
        ])
        .arg(config)
        .args([
            "--db",
            db,
            "--db-sync",
            "normal",
            "--persist",
            "--job-lease",
            "3",
            // Tests run in parallel: a fixed sidecar port would be taken.
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("TURNSTILE_DB")
        .env_remove("TURNSTILE_LISTEN")
        .stdin(std::process::Stdio::null());
    Proc::spawn(cmd)
}

/// Polls `f` until it holds; panics with the processes' logs when one of them exits or
/// [`LIMIT`] passes (the processes are killed then).
fn wait_or_logs(what: &str, procs: &mut [&mut Proc], mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        let gone = procs.iter().any(|p| kit::process_gone(p.pid()));
        if gone || t0.elapsed() > LIMIT {
            let mut logs = String::new();
            for p in procs.iter_mut() {
                if !kit::process_gone(p.pid()) {
                    p.signal("KILL");
                }
                let (st, _) = p.finish(LIMIT);
                logs.push_str(&format!("--- pid {} ({st}):\n{}\n", p.pid(), p.log()));
            }
            panic!(
                "{what}: not after {:?} (a process exited: {gone})\n{logs}",
                t0.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_registered(store: &dyn Store, machine: &str, procs: &mut [&mut Proc]) {
    wait_or_logs(&format!("{machine} registered"), procs, || {
        !store
            .machine_hosts(machine, Duration::from_secs(3))
            .unwrap()
            .is_empty()
    });
}

/// The job ids (seqs) of `machine`'s transitions on `event`, oldest first.
fn handled(store: &dyn Store, machine: &str, event: &str) -> Vec<i64> {
    let (seqs, unrendered) = handled_and_unrendered(store, machine, event);
    assert_eq!(
        unrendered, 0,
        "{machine}: {unrendered} `{event}` without a seq"
    );
    seqs
}

/// [`handled`], and how many of those transitions had the unrendered template
/// `{payload.seq}` as their job id.
fn handled_and_unrendered(store: &dyn Store, machine: &str, event: &str) -> (Vec<i64>, usize) {
    let mut t = store.transitions(Some(machine), 1_000_000).unwrap();
    t.reverse();
    let mut unrendered = 0;
    let seqs = t
        .iter()
        .filter(|r| r.event == event)
        .filter_map(|r| {
            let id = r.job_id.as_deref().unwrap_or_default();
            if id == "{payload.seq}" {
                unrendered += 1;
                return None;
            }
            Some(
                id.parse()
                    .unwrap_or_else(|e| panic!("{machine}: job id {id:?} of {r:?}: {e}")),
            )
        })
        .collect();
    (seqs, unrendered)
}

fn serve(store: &dyn Store, seqs: std::ops::Range<i64>) {
    for i in seqs {
        store
            .send_event(&NewEvent {
                target: "ping".into(),
                event_type: "serve".into(),
                job_id: Some(i.to_string()),
                payload: Some(serde_json::json!({"seq": i})),
                ..NewEvent::default()
            })
            .unwrap();
    }
}

/// Asserts `got == want`, telling the first difference (not the whole lists).
#[track_caller]
fn same(got: &[i64], want: &[i64], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(g, w)| g != w);
        let around = |v: &[i64], i: usize| v[i.saturating_sub(3)..(i + 4).min(v.len())].to_vec();
        let i = at.unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} seen, {} wanted; first difference at {i}: got {:?}, wanted {:?}",
            got.len(),
            want.len(),
            around(got, i),
            around(want, i)
        );
    }
}

/// The most events a receiver queues before their marks: the most a kill can make it
/// handle again.
fn bridge_window() -> usize {
    turnstile_engine::runtime::bridge::WINDOW
}

/// Plays `n` rounds between two processes; with `kill`, `pong`'s process is killed
/// (SIGKILL) half-way and started again.
fn ping_pong(db: &str, dir: &Path, n: i64, kill: bool) {
    let (ping_cfg, pong_cfg) = (dir.join("ping.yaml"), dir.join("pong.yaml"));
    std::fs::write(&ping_cfg, PING).unwrap();
    std::fs::write(&pong_cfg, PONG).unwrap();
    let store = open(db);
    let mut ping = run(&ping_cfg, db);
    let mut pong = run(&pong_cfg, db);
    wait_registered(&*store, "ping", &mut [&mut ping, &mut pong]);
    wait_registered(&*store, "pong", &mut [&mut ping, &mut pong]);
    if kill {
        serve(&*store, 0..n / 2);
        wait_or_logs("pong half-way", &mut [&mut ping, &mut pong], || {
            handled(&*store, "pong", "ping").len() as i64 >= n / 4
        });
        pong.signal("KILL");
        pong.finish(LIMIT);
        // Started again at once: the dead process's registration still counts (it is
        // stale only a lease after its last heartbeat), so `ping`'s sends meanwhile are
        // queued in the table. A machine that no process runs for longer than that is
        // unknown, and a send to it fails (see docs/jobs.md).
        pong = run(&pong_cfg, db);
        serve(&*store, n / 2..n);
    } else {
        serve(&*store, 0..n);
    }
    wait_or_logs(
        "every pong back at ping",
        &mut [&mut ping, &mut pong],
        || handled_and_unrendered(&*store, "ping", "pong").0.len() as i64 >= n,
    );
    let want: Vec<i64> = (0..n).collect();
    same(&handled(&*store, "ping", "serve"), &want, "serve at ping");
    // Each event the receiver handled is saved once, in order, killed or not.
    same(&handled(&*store, "pong", "ping"), &want, "ping at pong");
    let (back, unrendered) = handled_and_unrendered(&*store, "ping", "pong");
    if kill {
        // The restarted `pong` restores its saved state; when that is `answering`, its
        // entry action runs again with the saved context, which does not hold the event's
        // payload: one answer without a seq.
        assert!(unrendered <= 1, "{unrendered} answers without a seq");
        // An event redelivered after the kill is handled again (its first handling was
        // not saved) and its `send_event` runs again: the answer is a new event, so it
        // may come back twice. None is lost, the first arrivals are in order, and a
        // repeat is an answer already seen (a re-run of the unsaved tail).
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<i64> = back.iter().copied().filter(|s| seen.insert(*s)).collect();
        same(&firsts, &want, "pong at ping (first arrivals)");
        let repeats = back.len() - firsts.len();
        assert!(
            repeats <= bridge_window(),
            "{repeats} answers came back twice: more than one window of unsaved events"
        );
    } else {
        assert_eq!(unrendered, 0, "answers without a seq");
        same(&back, &want, "pong at ping");
    }
    // Nothing is left pending.
    kit::wait_until("no pending events", LIMIT, || {
        store.queue_health().unwrap().events_pending == 0
    });
    let pids = [i64::from(ping.pid()), i64::from(pong.pid())];
    for p in [&mut ping, &mut pong] {
        p.signal("TERM");
        let (st, _) = p.finish(LIMIT);
        assert!(st.success(), "{}", p.log());
    }
    // A clean exit deletes the registrations (a killed process's stays until stale).
    for m in ["ping", "pong"] {
        let left = store.machine_hosts(m, Duration::from_secs(600)).unwrap();
        assert!(left.iter().all(|h| !pids.contains(&h.pid)), "{m}: {left:?}");
        assert_eq!(
            left.len(),
            usize::from(kill && m == "pong"),
            "{m}: {left:?}"
        );
    }
}

#[test]
fn ping_pong_through_postgres_10000_events() {
    let dir = tempfile::tempdir().unwrap();
    ping_pong(&shared().database(), dir.path(), 5_000, false);
}

#[test]
fn ping_pong_through_sqlite_10000_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    ping_pong(db.to_str().unwrap(), dir.path(), 5_000, false);
}

#[test]
fn a_receiver_killed_mid_stream_loses_nothing_and_saves_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    ping_pong(&shared().database(), dir.path(), 2_000, true);
}

const SINK: &str = r#"
initial_state: idle
metadata:
  machine_name: sink
transitions:
  - {from: [idle, got], to: got, event: poke}
"#;

/// Its `call` runs a `send_event` to `ghost`, which no process runs: the error event.
const CALLER: &str = r#"
initial_state: idle
metadata:
  machine_name: caller
transitions:
  - {from: idle, to: calling, event: call}
  - {from: calling, to: refused, event: call_failed}
  - {from: calling, to: sent, event: call_sent}
  - {from: [refused, sent], to: idle, event: reset}
actions:
  calling:
    - type: send_event
      target_machine: ghost
      event_type: boo
      success: call_sent
      error: call_failed
"#;

/// `turnstile send-event ARGS`: exit code, stdout, stderr.
fn send_event_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(kit::bin())
        .current_dir(kit::root())
        .arg("send-event")
        .args(args)
        .env_remove("TURNSTILE_DB")
        .output()
        .unwrap();
    (
        out.status.code(),
        kit::text(&out.stdout),
        kit::text(&out.stderr),
    )
}

/// The `poke` job ids `sink` has handled (its audit, `--persist`).
fn pokes(store: &dyn Store) -> Vec<String> {
    let mut t = store.transitions(Some("sink"), 1000).unwrap();
    t.reverse();
    t.into_iter()
        .filter(|r| r.event == "poke")
        .filter_map(|r| r.job_id)
        .collect()
}

/// Process R runs `sink`, process S runs `caller` (one SQLite file): S's sidecar forwards
/// `POST /machines/sink/events` through the store (202 with the event id; R handles it,
/// and R's `/trace` record carries the sender's trace id), answers 404 for a name no
/// process runs; `send-event --db` reaches `sink` (exit 0), fails for a name no process
/// runs (exit 1) and for a payload that is not JSON (exit 2); `caller`'s `send_event` to
/// a name no process runs takes its error event.
#[test]
fn the_sidecar_send_event_db_and_send_event_reach_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let db = db.to_str().unwrap();
    let (sink_cfg, caller_cfg) = (dir.path().join("sink.yaml"), dir.path().join("caller.yaml"));
    std::fs::write(&sink_cfg, SINK).unwrap();
    std::fs::write(&caller_cfg, CALLER).unwrap();
    let store = open(db);
    let mut r = run(&sink_cfg, db);
    let mut s = run(&caller_cfg, db);
    let (r_addr, s_addr) = (r.sidecar_addr(LIMIT), s.sidecar_addr(LIMIT));
    wait_registered(&*store, "sink", &mut [&mut r, &mut s]);

    // Through S's sidecar, with the sender's trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let resp = post_json(
        s_addr,
        "/machines/sink/events",
        &[("traceparent", &tp)],
        &json!({"type": "poke", "job_id": "via-http"}),
    );
    assert_eq!(resp.status, 202, "{}", resp.text());
    let body = resp.json();
    assert!(body["event_id"].as_i64().unwrap() > 0, "{body}");
    assert_eq!(body["elsewhere"], json!(true), "{body}");
    assert_eq!(body["trace_id"], json!(trace), "{body}");
    wait_or_logs("the forwarded event handled", &mut [&mut r, &mut s], || {
        pokes(&*store) == ["via-http"]
    });
    // The receiver's span continues the sender's trace.
    let records = get_json(r_addr, &format!("/trace?machine=sink&trace_id={trace}"));
    let rec = records.as_array().unwrap();
    assert_eq!(rec.len(), 1, "{records}");
    assert_eq!(rec[0]["data"]["trace_id"], json!(trace), "{records}");
    assert_eq!(rec[0]["data"]["job_id"], json!("via-http"), "{records}");
    assert_eq!(
        rec[0]["data"]["outcome"],
        json!("transitioned"),
        "{records}"
    );

    // A name no process runs: 404 with a JSON error.
    let resp = post_json(
        s_addr,
        "/machines/nowhere/events",
        &[],
        &json!({"type": "poke"}),
    );
    assert_eq!(resp.status, 404, "{}", resp.text());
    let err = resp.json();
    assert!(
        err.to_string().contains("no machine named `nowhere`"),
        "{err}"
    );

    // send-event --db.
    let (code, out, err) = send_event_cli(&[
        "--db",
        db,
        "--target",
        "sink",
        "--type",
        "poke",
        "--job-id",
        "via-cli",
        "--payload",
        r#"{"k": 1}"#,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    let sent: Json = serde_json::from_str(out.trim()).unwrap();
    assert!(sent["event_id"].as_i64().unwrap() > 0, "{sent}");
    assert_eq!(sent["target"], json!("sink"), "{sent}");
    wait_or_logs("the CLI's event handled", &mut [&mut r, &mut s], || {
        pokes(&*store) == ["via-http", "via-cli"]
    });
    let (code, out, err) = send_event_cli(&["--db", db, "--target", "nowhere", "--type", "poke"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("no live process runs a machine named `nowhere`"),
        "{err}"
    );
    let (code, out, err) = send_event_cli(&[
        "--db",
        db,
        "--target",
        "sink",
        "--type",
        "poke",
        "--payload",
        "{not json",
    ]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--payload is not JSON"), "{err}");

    // send_event to a name no process runs: its error event.
    let resp = post_json(
        s_addr,
        "/machines/caller/events",
        &[],
        &json!({"type": "call"}),
    );
    assert_eq!(resp.status, 202, "{}", resp.text());
    wait_or_logs("caller refused", &mut [&mut r, &mut s], || {
        get_json(s_addr, "/machines/caller")["state"] == json!("refused")
    });
    // Nothing was written for `ghost`, and nothing is left pending.
    assert!(store.events(Some("ghost"), 10).unwrap().is_empty());
    assert_eq!(store.queue_health().unwrap().events_pending, 0);
    for p in [&mut r, &mut s] {
        p.signal("TERM");
        let (st, _) = p.finish(LIMIT);
        assert!(st.success(), "{}", p.log());
    }
}

const TALLY: &str = r#"
initial_state: idle
metadata:
  machine_name: tally
  singleton: true
transitions:
  - {from: [idle, counted], to: counted, event: add}
"#;

/// Two processes run the singleton `tally` (PostgreSQL, a 2 s lease); the test posts 300
/// `add` events to the standby's sidecar, one after another, and SIGKILLs the holder after
/// the 100th. Before the survivor takes over, the standby forwards them into the event
/// table (202 with an event id, even while the dead holder's lease runs out); once it
/// holds the lease, it consumes them from the first one the dead holder did not mark, and
/// later posts go to its copy directly. Each event is handled once (the audit of a
/// `--persist` transition is written with its mark), none is lost.
#[test]
fn a_singletons_events_reach_the_survivor_of_a_sigkilled_holder() {
    let dir = tempfile::tempdir().unwrap();
    let db = shared().database();
    let cfg = dir.path().join("tally.yaml");
    std::fs::write(&cfg, TALLY).unwrap();
    let store = open(&db);
    let run2 = |cfg: &Path| {
        let mut cmd = Command::new(kit::bin());
        cmd.current_dir(kit::root())
            .args([
                "--log-format",
                "json",
                "--log-level",
                "warn,turnstile::sidecar=info",
            ])
            .arg("run")
            .arg(cfg)
            .args([
                "--db",
                &db,
                "--persist",
                "--job-lease",
                "2",
                "--listen",
                "127.0.0.1:0",
            ])
            .env_remove("RUST_LOG")
            .env_remove("TURNSTILE_DB")
            .env_remove("TURNSTILE_LISTEN")
            .stdin(std::process::Stdio::null());
        Proc::spawn(cmd)
    };
    let mut a = run2(&cfg);
    let mut b = run2(&cfg);
    let (a_addr, b_addr) = (a.sidecar_addr(LIMIT), b.sidecar_addr(LIMIT));
    wait_registered(&*store, "tally", &mut [&mut a, &mut b]);
    // Only the holder registers a singleton.
    let hosts = store
        .machine_hosts("tally", Duration::from_secs(2))
        .unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let (mut holder, mut standby, addr) = if hosts[0].pid == i64::from(a.pid()) {
        (a, b, b_addr)
    } else {
        assert_eq!(hosts[0].pid, i64::from(b.pid()), "{hosts:?}");
        (b, a, a_addr)
    };
    let n = 300;
    let mut through_store = 0;
    for i in 0..n {
        if i == 100 {
            holder.signal("KILL");
            holder.finish(LIMIT);
        }
        let resp = post_json(
            addr,
            "/machines/tally/events",
            &[],
            &json!({"type": "add", "job_id": i.to_string()}),
        );
        assert_eq!(resp.status, 202, "event {i}: {}", resp.text());
        if resp.json().get("event_id").is_some() {
            through_store += 1;
        }
    }
    assert!(
        through_store > 100,
        "only {through_store} went through the store"
    );
    let seqs = || -> Vec<i64> {
        let mut t = store.transitions(Some("tally"), 100_000).unwrap();
        t.reverse();
        t.iter()
            .filter(|r| r.event == "add")
            .map(|r| r.job_id.as_deref().unwrap().parse().unwrap())
            .collect()
    };
    wait_or_logs("every add handled", &mut [&mut standby], || {
        seqs().len() >= n
    });
    let got = seqs();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    same(
        &sorted,
        &(0..n as i64).collect::<Vec<_>>(),
        "adds handled (sorted)",
    );
    // The survivor is the registered runner now, and the only one once the dead holder's
    // registration is older than the lease (2 s after its last heartbeat: the adds may
    // all be handled sooner).
    let runners = || -> Vec<i64> {
        store
            .machine_hosts("tally", Duration::from_secs(2))
            .unwrap()
            .iter()
            .map(|h| h.pid)
            .collect()
    };
    let survivor = i64::from(standby.pid());
    assert!(runners().contains(&survivor), "{:?}", runners());
    wait_or_logs(
        "the dead holder's registration stale",
        &mut [&mut standby],
        || runners() == [survivor],
    );
    assert_eq!(store.queue_health().unwrap().events_pending, 0);
    standby.signal("TERM");
    let (st, _) = standby.finish(LIMIT);
    assert!(st.success(), "{}", standby.log());
}

/// statemachine-engine's own CLI (`statemachine-db send-event`, 1.0.91, which always
/// writes `./data/pipeline.db`) writes a `machine_events` row for a machine Turnstile runs
/// on that file: it is delivered and marked processed (its payload, stored as the text
/// given, reads back as JSON).
#[test]
fn statemachine_engines_own_send_event_reaches_a_turnstile_machine() {
    let sme = kit::upstream::statemachine_db();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let db = dir.path().join("data/pipeline.db");
    let db = db.to_str().unwrap();
    let cfg = dir.path().join("sink.yaml");
    std::fs::write(&cfg, SINK).unwrap();
    let store = open(db);
    let mut r = run(&cfg, db);
    wait_registered(&*store, "sink", &mut [&mut r]);
    kit::run_ok(
        "statemachine-db send-event",
        Command::new(&sme).current_dir(dir.path()).args([
            "send-event",
            "--target",
            "sink",
            "--type",
            "poke",
            "--job-id",
            "from-python",
            "--payload",
            r#"{"n": 7}"#,
        ]),
    );
    wait_or_logs("the python row handled", &mut [&mut r], || {
        pokes(&*store) == ["from-python"]
    });
    let ev = store.events(Some("sink"), 10).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].status, "processed", "{ev:?}");
    assert_eq!(ev[0].payload, Some(json!({"n": 7})), "{ev:?}");
    r.signal("TERM");
    let (st, _) = r.finish(LIMIT);
    assert!(st.success(), "{}", r.log());
}
