//! Probes and metrics: `GET /health/live` (the process answers), `GET /health/ready` (and the
//! older `/health`: models loaded, not draining), `GET /v1` (the Prem services' check) and
//! `GET /metrics` (Prometheus). All open without the API key, for probes and scrapers.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, OpenApi};

use super::AppState;
use super::api::{ApiTags, HealthResult, StatusResult};
use super::error::ApiError;
use super::guard::authorized;
use super::types::{HealthResponse, LiveResponse, ModelHealth, StatusResponse};
use crate::engine::ModelState;

#[derive(ApiResponse)]
pub enum LiveResult {
    /// The process answers.
    #[oai(status = 200)]
    Ok(Json<LiveResponse>),
}

#[derive(ApiResponse)]
pub enum MetricsResult {
    /// The Prometheus text exposition format, version 0.0.4.
    #[oai(
        status = 200,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    )]
    Ok(PlainText<String>),
    /// The figures could not be encoded.
    #[oai(status = 500)]
    Failed(PlainText<String>),
}

/// Whether this replica should get traffic: not draining, no model loading (with `--preload`,
/// none still waiting to), and at least one model able to serve. `details` names the model.
pub fn readiness(state: &AppState, details: bool) -> Result<(), ApiError> {
    let unavailable = |message: String, code: &str| {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).code(code);
        e.retry_after = Some(5);
        e
    };
    if state.engine.is_draining() {
        return Err(unavailable(
            "the server is shutting down: it finishes the jobs it has and takes no new ones".into(),
            "draining",
        ));
    }
    let models = state.engine.models();
    let name = |id: &str| {
        if details {
            format!(" `{id}`")
        } else {
            String::new()
        }
    };
    let preload = state.engine.preloads();
    if let Some(m) = models
        .iter()
        .find(|m| m.state == ModelState::Loading || (preload && m.state == ModelState::Unloaded))
    {
        return Err(unavailable(
            format!("a model{} is loading", name(&m.id)),
            "loading",
        ));
    }
    if models
        .iter()
        .all(|m| matches!(m.state, ModelState::Failed(_)))
    {
        return Err(unavailable(
            "no model can serve: every model failed to load".into(),
            "no_model",
        ));
    }
    Ok(())
}

pub struct HealthApi;

#[OpenApi]
impl HealthApi {
    /// Service status (the Prem services' health check, also at `/v1/`)
    #[oai(
        path = "/v1",
        method = "get",
        operation_id = "status",
        tag = "ApiTags::Health"
    )]
    async fn status(&self) -> StatusResult {
        StatusResult::Ok(Json(StatusResponse { status: true }))
    }

    /// Liveness: 200 whenever the process answers
    ///
    /// For a Kubernetes `livenessProbe`: it does not depend on models or load, so a busy or
    /// draining server is not restarted.
    #[oai(
        path = "/health/live",
        method = "get",
        operation_id = "live",
        tag = "ApiTags::Health"
    )]
    async fn live(&self) -> LiveResult {
        LiveResult::Ok(Json(LiveResponse {
            status: "ok".into(),
        }))
    }

    /// Readiness: 200 when models are loaded and the server is not draining, else 503
    ///
    /// For a `readinessProbe` and a `startupProbe`. Open without the API key, but then it says
    /// only `status`: model ids, their load errors and the queue are details for callers with
    /// the key.
    #[oai(
        path = "/health/ready",
        method = "get",
        operation_id = "ready",
        tag = "ApiTags::Health"
    )]
    async fn ready(&self, state: Data<&Arc<AppState>>, req: &poem::Request) -> HealthResult {
        health(&state, req)
    }

    /// Readiness, as `/health/ready` (kept for existing health checks)
    #[oai(
        path = "/health",
        method = "get",
        operation_id = "health",
        tag = "ApiTags::Health"
    )]
    async fn health(&self, state: Data<&Arc<AppState>>, req: &poem::Request) -> HealthResult {
        health(&state, req)
    }

    /// Prometheus metrics
    ///
    /// Queue depth (`kiln_queue_waiting` is the one to autoscale on), requests, latencies,
    /// images, model states and load times; each metric is described in the README.
    #[oai(
        path = "/metrics",
        method = "get",
        operation_id = "metrics",
        tag = "ApiTags::Health"
    )]
    async fn metrics(&self, state: Data<&Arc<AppState>>) -> MetricsResult {
        match super::metrics::render(&state) {
            Ok(text) => MetricsResult::Ok(PlainText(text)),
            Err(e) => MetricsResult::Failed(PlainText(format!("cannot encode the metrics: {e}"))),
        }
    }
}

fn health(state: &AppState, req: &poem::Request) -> HealthResult {
    let details = state
        .config
        .api_key
        .as_deref()
        .is_none_or(|key| authorized(req, key));
    if let Err(e) = readiness(state, details) {
        return e.into();
    }
    if !details {
        return HealthResult::Ok(Json(HealthResponse {
            status: "ready".into(),
            models: None,
            queue: None,
            queue_capacity: None,
        }));
    }
    let stats = state.engine.stats();
    let models = state
        .engine
        .models()
        .into_iter()
        .map(|m| ModelHealth {
            id: m.id,
            state: m.state.label().into(),
            error: match m.state {
                ModelState::Failed(e) => Some(e),
                _ => None,
            },
        })
        .collect();
    HealthResult::Ok(Json(HealthResponse {
        status: "ready".into(),
        models: Some(models),
        queue: Some(stats.in_flight as u32),
        queue_capacity: Some(stats.capacity as u32),
    }))
}
