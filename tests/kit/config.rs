//! Machine definitions: for the tests that run the engine in-process, and the job
//! workers the end-to-end job tests run on each backend.

use std::sync::Arc;

use turnstile_engine::{config, ActionRegistry, MachineDef};

/// Loads `yaml` with the built-in actions; panics with the errors if it does not load.
pub fn def(yaml: &str) -> Arc<MachineDef> {
    let loaded = config::load_str(yaml, None, &ActionRegistry::with_builtins());
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "config errors: {errors:#?}");
    loaded.def.expect("a definition")
}

/// A statemachine-engine-style worker that claims `task` jobs and completes each at once.
pub const JOB_WORKER: &str = r#"
initial_state: waiting
metadata:
  machine_name: worker
transitions:
  - {from: waiting, to: processing, event: new_job}
  - {from: processing, to: waiting, event: job_completed}
  - {from: processing, to: waiting, event: job_done_elsewhere}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
  processing:
    - type: complete_job
      job_id: "{id}"
      success: job_completed
      error: job_done_elsewhere
"#;

/// A worker whose `task` jobs take `secs` seconds before their completion (so that kills
/// and restarts land mid-job).
pub fn slow_job_worker(secs: f64) -> String {
    format!(
        r#"
initial_state: waiting
metadata:
  machine_name: slow_worker
transitions:
  - {{from: waiting, to: processing, event: new_job}}
  - {{from: processing, to: finishing, event: done}}
  - {{from: finishing, to: waiting, event: job_completed}}
  - {{from: finishing, to: waiting, event: job_done_elsewhere}}
actions:
  waiting:
    - type: check_database_queue
      job_type: task
  processing:
    - type: sleep
      duration: {secs}
      success: done
  finishing:
    - type: complete_job
      job_id: "{{id}}"
      success: job_completed
      error: job_done_elsewhere
"#
    )
}
