//! Per-request context: the `X-Request-Id` (taken from the client when sane, else made here),
//! the tracing span every log line of the request is written in (the engine's worker enters it
//! too), the access log line, and the request metrics.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

use super::AppState;
use super::metrics::endpoint_label;
use crate::sync::Locked;

pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-sent id kept; a longer or odd one is replaced (and the new one echoed).
const MAX_ID_LEN: usize = 128;

/// What a request's handlers tell the middleware around them.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub id: String,
    /// The served model the request was resolved to (a label of the request metrics).
    model: Mutex<Option<String>>,
    /// The API's `user`: the end user the client acts for, kept for the request's log line
    /// (what OpenAI asks it for: telling abusive end users apart).
    user: Mutex<Option<String>>,
}

tokio::task_local! {
    static CURRENT: Arc<RequestCtx>;
}

/// The current request's id, inside a request's handler (error envelopes carry it).
pub fn current_id() -> Option<String> {
    CURRENT.try_with(|c| c.id.clone()).ok()
}

/// Records which served model the current request uses.
pub fn set_model(id: &str) {
    let _ = CURRENT.try_with(|c| {
        *c.model.locked() = Some(id.to_string());
    });
}

/// Records the request's `user` for its log line (written with `?`, so quotes and control
/// characters are escaped).
pub fn set_user(user: &str) {
    let _ = CURRENT.try_with(|c| {
        *c.user.locked() = Some(user.to_string());
    });
}

/// A client id is kept when it is 1..=128 visible ASCII characters without quotes or
/// backslashes (so it is safe in a header, a log line and a JSON string alike).
fn sane(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// `req_` and 128 random bits in hex, as OpenAI's own request ids look.
fn new_id() -> String {
    format!("req_{:032x}", rand::random::<u128>())
}

pub async fn observe<E: Endpoint>(
    ep: &E,
    req: Request,
    state: Arc<AppState>,
) -> poem::Result<Response> {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_string)
        .unwrap_or_else(new_id);
    let endpoint = endpoint_label(req.uri().path());
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %id, method = %method, endpoint);
    let ctx = Arc::new(RequestCtx {
        id: id.clone(),
        model: Mutex::new(None),
        user: Mutex::new(None),
    });
    let t0 = Instant::now();
    let mut resp = CURRENT
        .scope(
            ctx.clone(),
            async { ep.get_response(req).await }.instrument(span.clone()),
        )
        .await;
    let status = resp.status();
    let secs = t0.elapsed().as_secs_f64();
    let model = ctx.model.locked().take().unwrap_or_default();
    let user = ctx.user.locked().take();
    state
        .metrics
        .observe_request(endpoint, &model, status, secs);
    // Probes and scrapes come every few seconds from every kubelet and Prometheus: their
    // lines would drown the requests' at the default level.
    let routine = endpoint.starts_with("/health") || endpoint == "/metrics";
    span.in_scope(|| {
        let status = status.as_u16();
        if routine && status < 500 {
            tracing::debug!(status, secs, "request done");
        } else {
            tracing::info!(status, secs, model = %model, user = ?user, "request done");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    // While draining, ask keep-alive clients to reconnect (to another replica).
    if state.engine.is_draining() {
        resp.headers_mut().insert(
            poem::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    Ok(resp.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        assert!(sane("abc-123_X.y:z/+="));
        assert!(sane(&"a".repeat(MAX_ID_LEN)));
        assert!(!sane(""));
        assert!(!sane(&"a".repeat(MAX_ID_LEN + 1)));
        assert!(!sane("has space"));
        assert!(!sane("quote\"d"));
        assert!(!sane("back\\slash"));
        assert!(!sane("nl\n"));
        assert!(!sane("é"));
        let id = new_id();
        assert!(id.starts_with("req_") && id.len() == 36 && sane(&id));
        assert_ne!(new_id(), new_id());
    }
}
