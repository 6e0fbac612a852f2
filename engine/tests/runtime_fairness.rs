//! A machine that drives itself through its own actions must still yield: on a
//! single-thread runtime other tasks run, queued external events get in, and shutdown
//! stops it.

use std::sync::Arc;
use std::time::Duration;

use turnstile_engine::{config, ActionRegistry, Engine, Event, MachineDef};

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

fn def() -> Arc<MachineDef> {
    let loaded = config::load_str(SELF_DRIVING, None, &ActionRegistry::with_builtins());
    loaded.def.expect("config loads")
}

#[tokio::test(flavor = "current_thread")]
async fn self_driving_machine_yields_to_other_tasks_and_events() {
    let engine = Engine::builder().build();
    engine.spawn(def()).expect("spawn");
    // This task shares the only thread with the machine: it only gets to run (and the
    // timer only fires) if the machine yields.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = engine.machine("spinner").expect("machine").transitions;
    assert!(before > 0, "the machine should have been running");
    engine
        .send("spinner", Event::new("stop"))
        .await
        .expect("send");
    assert!(
        engine
            .wait_for_state("spinner", "halted", Duration::from_secs(5))
            .await,
        "the external event got in between self-driven transitions"
    );
    engine.shutdown();
    tokio::time::timeout(Duration::from_secs(5), engine.join())
        .await
        .expect("the machine stops on shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn self_driving_machine_stops_on_shutdown() {
    let engine = Engine::builder().build();
    engine.spawn(def()).expect("spawn");
    tokio::time::sleep(Duration::from_millis(5)).await;
    engine.shutdown();
    tokio::time::timeout(Duration::from_secs(5), engine.join())
        .await
        .expect("the machine stops on shutdown");
    assert_eq!(engine.running(), 0);
}
