//! What the port answers while its host is still starting ([`super::Bound::starting`]):
//! a sidecar often starts before its database, and a probe that finds the port closed
//! reads "dead" (Kubernetes restarts the pod) where the truth is "alive, not ready yet".
//! So the liveness probe is answered (200), the readiness probe says not ready and why
//! (503, the same JSON shape as the running sidecar's), and every other endpoint answers
//! 503 with the same reason: nothing else can be served before the machines exist.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::endpoints::{resolve, Handler};
use super::response::{self, ApiError, Body};

/// The answer to `req` while starting; `why` says what the host waits for.
pub(super) fn handle(req: &Request<Incoming>, why: &dyn Fn() -> String) -> Response<Body> {
    let reason = format!("starting: {}", why());
    match resolve(req.uri().path()) {
        Ok(Some((e, _))) if e.handler == Handler::Healthz => {
            response::json(StatusCode::OK, &json!({"status": "ok"}))
        }
        Ok(Some((e, _))) if e.handler == Handler::Readyz => response::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "status": "not ready",
                "reasons": [reason],
                "machines": {},
                "error": {"status": 503, "message": reason},
            }),
        ),
        Ok(Some(_)) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
        Ok(None) => {
            ApiError::not_found(format!("no endpoint {}", req.uri().path())).into_response()
        }
        Err(e) => e.into_response(),
    }
}
