//! `GET /healthz/machines?stale_after=60s`: 200 while every running machine has been
//! active within `stale_after`, 503 listing those that have not.
//!
//! A machine's last activity is [`MachineStatus::last_active`]: the moment it last stopped
//! to wait (for its queue, a timer, an action, a resume) after processing an event or
//! finishing an action, or its start. The engine writes it once per wait, not per event,
//! so the probe costs the machines nothing; this handler only reads the status every
//! endpoint reads. Waiting in an action is not activity (a machine whose command runs for
//! ten minutes has done nothing the probe can see until it ends): `stale_after` should
//! be longer than the longest action. A paused machine is judged like any other and
//! listed with `paused: true`; stopped machines are not judged (`/readyz` reports them).
//! It is a health endpoint: with basic auth configured it stays open like `/healthz`
//! (see `web/mod.rs`).

use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::MachineStatus;

use super::request::{cut, parse_query};
use super::response::{self, ApiError, Body};
use super::state::State;
use crate::telemetry::records::{coarse_now, timestamp};

/// `stale_after` when the query does not say.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);
/// Most stale machines listed by name (the count says how many there are).
pub const MAX_LISTED: usize = 100;

/// Reads `stale_after` (a duration: `60s`, `5m`, `1h30m`, `500ms`; more than zero); any
/// other parameter, or a repeated one, is refused.
pub(super) fn stale_after(query: Option<&str>) -> Result<Duration, ApiError> {
    let bad =
        |message: String| ApiError::bad_request(message).field("parameter", json!("stale_after"));
    let mut found = None;
    for (k, v) in parse_query(query).map_err(ApiError::bad_request)? {
        if k != "stale_after" {
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{}` (expected stale_after)",
                cut(&k, 40)
            ))
            .field("parameter", json!(cut(&k, 40))));
        }
        if found.is_some() {
            return Err(bad("parameter `stale_after` is given twice".into()));
        }
        let d = humantime::parse_duration(v.trim()).map_err(|e| {
            bad(format!(
                "`stale_after` must be a duration such as 60s, 5m or 1h30m, not `{}` ({e})",
                cut(&v, 40)
            ))
        })?;
        if d.is_zero() {
            return Err(bad("`stale_after` must be more than zero".into()));
        }
        found = Some(d);
    }
    Ok(found.unwrap_or(DEFAULT_STALE_AFTER))
}

/// `GET /healthz/machines`.
pub(super) fn healthz_machines(
    state: &State,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let limit = stale_after(req.uri().query())?;
    let (code, body) = judge(&state.engine.status(), coarse_now(), limit);
    Ok(response::json(code, &body))
}

/// The answer for these machines at `now`.
fn judge(machines: &[MachineStatus], now: SystemTime, limit: Duration) -> (StatusCode, Json) {
    // Instances started at run time wait for their entity as long as it takes (an order
    // waiting for its payment): only the machines the process was started with count.
    let running: Vec<&MachineStatus> = machines
        .iter()
        .filter(|m| m.running && !m.instance)
        .collect();
    let idle_for = |m: &MachineStatus| now.duration_since(m.last_active).unwrap_or_default();
    let mut stale: Vec<(&MachineStatus, Duration)> = running
        .iter()
        .map(|m| (*m, idle_for(m)))
        .filter(|(_, d)| *d > limit)
        .collect();
    // The longest idle first.
    stale.sort_by_key(|s| std::cmp::Reverse(s.1));
    let limit_s = limit.as_secs_f64();
    if stale.is_empty() {
        return (
            StatusCode::OK,
            json!({"status": "ok", "stale_after_s": limit_s, "machines": running.len()}),
        );
    }
    let listed: Vec<Json> = stale
        .iter()
        .take(MAX_LISTED)
        .map(|(m, d)| {
            json!({
                "name": &*m.name,
                "state": &*m.state,
                "last_activity": timestamp(m.last_active),
                "seconds_since": (d.as_secs_f64() * 1000.0).round() / 1000.0,
                "paused": m.paused,
                "queue_depth": m.queue_depth,
            })
        })
        .collect();
    let names: Vec<&str> = stale.iter().take(5).map(|(m, _)| &*m.name).collect();
    let more = if stale.len() > names.len() {
        ", ..."
    } else {
        ""
    };
    let message = format!(
        "{} of {} running machines have had no activity for more than {}: {}{more}",
        stale.len(),
        running.len(),
        humantime::format_duration(limit),
        names.join(", ")
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "status": "stale",
            "stale_after_s": limit_s,
            "machines": running.len(),
            "stale_count": stale.len(),
            "stale": listed,
            "error": {"status": 503, "message": message},
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn stale_after_takes_durations_and_names_itself_when_wrong() {
        assert_eq!(stale_after(None).unwrap(), DEFAULT_STALE_AFTER);
        for (q, secs) in [
            ("stale_after=60s", 60.0),
            ("stale_after=5m", 300.0),
            ("stale_after=1h30m", 5400.0),
            ("stale_after=500ms", 0.5),
        ] {
            assert_eq!(stale_after(Some(q)).unwrap().as_secs_f64(), secs, "{q}");
        }
        for (q, wanted) in [
            ("stale_after=soon", "must be a duration"),
            ("stale_after=60", "must be a duration"),
            ("stale_after=0s", "more than zero"),
            ("stale_after=1s&stale_after=2s", "twice"),
        ] {
            let e = stale_after(Some(q)).unwrap_err();
            assert_eq!(e.status, 400, "{q}");
            assert!(e.message.contains(wanted), "{q}: {}", e.message);
            assert_eq!(e.extra.unwrap()["parameter"], json!("stale_after"), "{q}");
        }
        let e = stale_after(Some("limit=3")).unwrap_err();
        assert!(
            e.message.contains("unknown parameter `limit`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn machines_idle_longer_than_the_limit_are_listed_longest_first() {
        let def = turnstile_engine::config::load_str(
            "metadata: {machine_name: m}\ninitial_state: a\ntransitions:\n  - {from: a, to: b, event: go}\n",
            None,
            &turnstile_engine::ActionRegistry::with_builtins(),
        )
        .def
        .unwrap();
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let m = |name: &str, active: u64, running: bool, paused: bool| MachineStatus {
            instance: name.starts_with("inst"),
            id: 0,
            name: name.into(),
            state: "a".into(),
            since: at(0),
            last_active: at(active),
            transitions: 0,
            events: 0,
            errors: 0,
            queue_depth: 2,
            running,
            paused,
            stop_reason: None,
            def: def.clone(),
        };
        let now = at(1000);
        let all = [
            m("fresh", 990, true, false),
            m("old", 100, true, false),
            m("older", 10, true, true),
            m("done", 0, false, false),
            // A run-time instance idle for long is not judged.
            m("inst-1", 0, true, false),
        ];
        let (code, v) = judge(&all, now, Duration::from_secs(60));
        assert_eq!(code, 503);
        assert_eq!(
            (v["machines"].clone(), v["stale_count"].clone()),
            (json!(3), json!(2))
        );
        let names: Vec<&str> = v["stale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["older", "old"]);
        assert_eq!(v["stale"][0]["paused"], json!(true));
        assert_eq!(v["stale"][0]["seconds_since"], json!(990.0));
        assert_eq!(
            v["stale"][1]["last_activity"],
            json!("1970-01-01T00:01:40.000Z")
        );
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(
                "2 of 3 running machines have had no activity for more than 1m: older, old"
            ),
            "{v}"
        );
        let (code, v) = judge(&all[..1], now, Duration::from_secs(60));
        assert_eq!(code, 200);
        assert_eq!(
            v,
            json!({"status": "ok", "stale_after_s": 60.0, "machines": 1})
        );
        // Activity "in the future" (a clock stepped back) is not stale.
        let (code, _) = judge(
            &[m("ahead", 2000, true, false)],
            now,
            Duration::from_secs(1),
        );
        assert_eq!(code, 200);
    }
}
