//! A job to add, read from JSON: the shape `POST /jobs` takes and `turnstile jobs add
//! --from-file` reads, checked in one place so that both accept and refuse the same jobs.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value as Json};

use super::{NewJob, Timestamp};
use crate::TraceContext;

/// Most jobs one bulk add takes (`POST /jobs` with an array, `jobs add --from-file`).
pub const MAX_BATCH: usize = 10_000;

fn field_str(obj: &Map<String, Json>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a non-empty string")),
    }
}

/// Reads one job. `value` must be an object; `job_type` (or `type`) is required. `now`:
/// what `delay_seconds` counts from. `traceparent`: one given outside the object (an
/// HTTP header), which wins over the object's field (then not read). The error says what
/// is wrong, naming the field.
pub fn new_job_from_json(
    value: &Json,
    now: SystemTime,
    traceparent: Option<String>,
) -> Result<NewJob, String> {
    let Json::Object(obj) = value else {
        return Err(
            "a job must be a JSON object like {\"job_type\": \"task\", \"data\": {...}}".into(),
        );
    };
    let job_type = match field_str(obj, "job_type")? {
        Some(t) => t,
        None => {
            field_str(obj, "type")?.ok_or("`job_type` is missing: {\"job_type\": \"task\", ...}")?
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            p.as_i64()
                .ok_or("`priority` must be a whole number (1 = highest)")?,
        ),
    };
    let max_attempts = match obj.get("max_attempts") {
        None | Some(Json::Null) => None,
        Some(p) => Some(
            p.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or("`max_attempts` must be a positive number")?,
        ),
    };
    let traceparent = match (traceparent, field_str(obj, "traceparent")?) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => {
            TraceContext::parse(&t).map_err(|e| e.to_string())?;
            Some(t)
        }
        (None, None) => None,
    };
    let run_after = match (
        obj.get("run_after").filter(|v| !v.is_null()),
        obj.get("delay_seconds").filter(|v| !v.is_null()),
    ) {
        (Some(_), Some(_)) => {
            return Err("give `run_after` or `delay_seconds`, not both".into());
        }
        (Some(t), None) => Some(t.as_str().and_then(Timestamp::parse_rfc3339).ok_or(
            "`run_after` must be an RFC 3339 time with its offset, like \"2026-12-04T10:00:00Z\"",
        )?),
        (None, Some(d)) => {
            let secs = d
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or("`delay_seconds` must be a number of seconds, 0 or more")?;
            let at = Duration::try_from_secs_f64(secs)
                .ok()
                .and_then(|d| now.checked_add(d))
                .ok_or("`delay_seconds` is too large")?;
            Some(Timestamp::from(at))
        }
        (None, None) => None,
    };
    Ok(NewJob {
        job_id: field_str(obj, "job_id")?,
        job_type,
        machine_type: field_str(obj, "machine_type")?,
        source_job_id: field_str(obj, "source_job_id")?,
        data: obj.get("data").filter(|d| !d.is_null()).cloned(),
        metadata: obj.get("metadata").filter(|d| !d.is_null()).cloned(),
        priority,
        max_attempts,
        traceparent,
        run_after,
        unique_key: field_str(obj, "unique_key")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_their_errors() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let j = new_job_from_json(
            &json!({"type": "t", "unique_key": "k", "delay_seconds": 1.5, "priority": 2}),
            now,
            None,
        )
        .unwrap();
        assert_eq!(j.job_type, "t");
        assert_eq!(j.unique_key.as_deref(), Some("k"));
        assert_eq!(j.run_after.unwrap().as_ms(), 1_001_500);
        assert_eq!(j.priority, Some(2));
        let j = new_job_from_json(
            &json!({"job_type": "t", "run_after": "1970-01-01T00:00:02+00:00"}),
            now,
            None,
        )
        .unwrap();
        assert_eq!(j.run_after.unwrap().as_ms(), 2000);
        for (bad, says) in [
            (json!([]), "JSON object"),
            (json!({}), "`job_type` is missing"),
            (
                json!({"job_type": "t", "run_after": "1970-01-01T00:00:02Z", "delay_seconds": 1}),
                "not both",
            ),
            (json!({"job_type": "t", "run_after": "soon"}), "`run_after`"),
            (json!({"job_type": "t", "run_after": 5}), "`run_after`"),
            (
                json!({"job_type": "t", "delay_seconds": -1}),
                "`delay_seconds`",
            ),
            (
                json!({"job_type": "t", "delay_seconds": "5"}),
                "`delay_seconds`",
            ),
            (
                json!({"job_type": "t", "delay_seconds": 1e300}),
                "too large",
            ),
            (json!({"job_type": "t", "unique_key": ""}), "`unique_key`"),
            (
                json!({"job_type": "t", "max_attempts": 0}),
                "`max_attempts`",
            ),
            (json!({"job_type": "t", "priority": 1.5}), "`priority`"),
        ] {
            let e = new_job_from_json(&bad, now, None).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
