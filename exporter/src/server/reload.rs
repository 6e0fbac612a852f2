//! `POST /-/reload`: reloads every config the process runs, as `SIGHUP` does (see
//! [`turnstile_engine::reload::ConfigReloader::reload_all`]). A write: the token and
//! read-only checks of [`super::write`] apply; the body, if any, is ignored.
//!
//! Answers 200 `{"status": "success", "configs": [{"path", "machine", "result":
//! "reloaded"|"unchanged", "detail"}]}`; when a config is refused (the old one keeps
//! running), 422 with the same list under `error.configs`, the refused ones with `"result":
//! "refused"`, their `message` and `diagnostics` (`line`, `column`, `code`, `message`,
//! `hint`). 501 when the sidecar was given no configs to reload.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value as Json};
use turnstile_engine::reload::{ConfigReload, ReloadResult};

use super::response::{self, ApiError, Body};
use super::state::State;
use super::write;

/// The message of a 422 answer; `routes::report` does not count it as a bad request (the
/// refused config is counted as a `config` error already).
pub const REFUSED: &str = "a config was refused; the previous config keeps running";

pub async fn post_reload(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    write::authorize(state, &req)?;
    let Some(reloader) = &state.reloader else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "this sidecar has no configs to reload",
        ));
    };
    tracing::info!(target: "turnstile::reload", "POST /-/reload: reloading every config");
    let report = reloader.reload_all().await;
    let configs: Vec<Json> = report.configs.iter().map(config_json).collect();
    if report.is_success() {
        Ok(response::json(
            StatusCode::OK,
            &json!({"status": "success", "configs": configs}),
        ))
    } else {
        Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, REFUSED)
            .field("configs", json!(configs)))
    }
}

fn config_json(c: &ConfigReload) -> Json {
    let mut v = json!({
        "path": c.path.display().to_string(),
        "machine": &*c.machine,
    });
    let extra = match &c.outcome {
        ReloadResult::Reloaded(what) => json!({"result": "reloaded", "detail": what}),
        ReloadResult::Unchanged => json!({"result": "unchanged"}),
        ReloadResult::Rejected {
            message,
            diagnostics,
        } => json!({
            "result": "refused",
            "message": message,
            "diagnostics": diagnostics.iter().map(|d| json!({
                "line": d.loc.line,
                "column": d.loc.column,
                "code": d.code,
                "message": d.message,
                "hint": d.hint,
            })).collect::<Vec<_>>(),
        }),
    };
    if let (Some(o), Json::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}
