//! A machine that drives itself through its own actions must still yield: on a
//! single-thread runtime other tasks run, queued external events get in, and shutdown
//! stops it.

use std::time::Duration;

mod support;

use support::machine::def;
use support::wait::wait_for_state;

use turnstile_engine::{config, ActionRegistry, Engine, Event};

/// `bench/pingpong_action.yaml` plus a `stop` event that leaves the loop.
const SELF_DRIVING: &str = "
metadata:
  machine_name: spinner
initial_state: ping
states: [ping, pong, halted]
events: [go, stop]
transitions:
  - {from: ping, to: pong, event: go}
  - {from: pong, to: ping, event: go}
  - {from: '*', to: halted, event: stop}
actions:
  ping:
    - {type: set_context, key: side, value: ping, success: go}
  pong:
    - {type: set_context, key: side, value: pong, success: go}
";

#[tokio::test(flavor = "current_thread")]
async fn self_driving_machine_yields_to_other_tasks_and_events() {
    let engine = Engine::builder().build();
    engine.spawn(def(SELF_DRIVING)).expect("spawn");
    // This task shares the only thread with the machine: it only gets to run (and the
    // timer only fires) if the machine yields.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = engine.machine("spinner").expect("machine").transitions;
    assert!(before > 0, "the machine should have been running");
    engine
        .send("spinner", Event::new("stop"))
        .await
        .expect("send");
    // Not halted in time: the external event did not get in between self-driven
    // transitions.
    wait_for_state(&engine, "spinner", "halted", Duration::from_secs(5)).await;
    engine.shutdown();
    tokio::time::timeout(Duration::from_secs(5), engine.join())
        .await
        .expect("the machine stops on shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn self_driving_machine_stops_on_shutdown() {
    let engine = Engine::builder().build();
    engine.spawn(def(SELF_DRIVING)).expect("spawn");
    tokio::time::sleep(Duration::from_millis(5)).await;
    engine.shutdown();
    tokio::time::timeout(Duration::from_secs(5), engine.join())
        .await
        .expect("the machine stops on shutdown");
    assert_eq!(engine.running(), 0);
}

/// A two-step chain per external event: `ping` leads to `busy`, whose action returns
/// `done` at once. A `ping` handled while the machine is in `busy` is ignored.
const TWO_STEP_CHAINS: &str = "
metadata:
  machine_name: chains
initial_state: idle
states: [idle, busy]
events: [ping, done]
transitions:
  - {from: idle, to: busy, event: ping}
  - {from: busy, to: idle, event: done}
actions:
  busy:
    - {type: set_context, key: seen, value: yes, success: done}
";

/// No external event is handled inside a chain shorter than the fairness limit, however
/// many are queued: the fairness count starts again with each chain (it used to run on
/// across chains, so every 64th step let a queued `ping` into `busy`, where it was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_events_never_cut_into_a_short_chain() {
    const PINGS: u64 = 100_000;
    let loaded = config::load_str(TWO_STEP_CHAINS, None, &ActionRegistry::with_builtins());
    let engine = Engine::builder().build();
    engine
        .spawn(loaded.def.expect("config loads"))
        .expect("spawn");
    let sender = engine.clone();
    let feed = tokio::spawn(async move {
        for _ in 0..PINGS {
            sender
                .send("chains", Event::new("ping"))
                .await
                .expect("send");
        }
    });
    feed.await.expect("sender");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = engine.machine("chains").expect("machine");
        // Every ping handled, and the `done` of each one that got into `idle`.
        let settled = s.queue_depth == 0 && &*s.state == "idle";
        if (settled && s.events >= PINGS + s.transitions / 2)
            || tokio::time::Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ignored = PINGS - status.transitions / 2;
    assert_eq!(
        ignored, 0,
        "{ignored} of {PINGS} pings were handled inside a chain and ignored ({status:?})"
    );
    assert_eq!(status.transitions, 2 * PINGS);
    engine.shutdown();
    engine.join().await;
}
