//! `sleep`: waits, then returns `wake_up` (or `success`). An event that triggers a
//! transition interrupts it.

use std::sync::Arc;
use std::time::Duration;

use crate::actions::{Action, ActionCx, Built, Outcome, Params, Step};

struct Sleep {
    duration: Duration,
    event: Arc<str>,
}

pub(super) fn build(p: &mut Params<'_>) -> Option<Built> {
    let duration = p.seconds("duration", Some(1.0))?;
    let event = p.event("success", Some("wake_up"))?;
    Some(Built {
        emits: vec![event.to_string()],
        action: Arc::new(Sleep { duration, event }),
        waits: true,
    })
}

impl Action for Sleep {
    fn run(&self, _cx: &mut ActionCx<'_>) -> Step {
        let (d, ev) = (self.duration, self.event.clone());
        Step::Wait(Box::pin(async move {
            tokio::time::sleep(d).await;
            Outcome::ok(Some(ev))
        }))
    }
}
