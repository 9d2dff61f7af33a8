//! The OpenAI error envelope for every non-2xx response: typed API errors, poem-openapi parse
//! failures, and (via [`finalize`]) anything else that reaches the client — routing 404/405,
//! 413 from limits, panics.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::warn;

use super::types::{ErrorBody, ErrorResponse};
use crate::engine::EngineError;

/// An error bound for the client; becomes `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub ty: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds, for 429/503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let ty = match status.as_u16() {
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        Self {
            status,
            ty,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 naming the offending request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
            .param(param)
            .code("invalid_value")
    }

    pub fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }

    pub fn code(mut self, c: &str) -> Self {
        self.code = Some(c.to_string());
        self
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                message: self.message.clone(),
                ty: self.ty.to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
                request_id: super::observe::current_id(),
            },
        }
    }

    /// From a poem / poem-openapi error (request parsing, routing, limits).
    pub fn from_poem(err: &poem::Error) -> Self {
        let status = err.status();
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        let message = err.to_string();
        let mut e = Self::new(status, message.clone());
        e.param = param_in_message(&message);
        e
    }
}

/// poem-openapi names fields as "field `n` ...", "parameter `id`", "path `id`".
fn param_in_message(msg: &str) -> Option<String> {
    ["field `", "parameter `", "path `"]
        .iter()
        .find_map(|start| {
            let rest = &msg[msg.find(start)? + start.len()..];
            Some(rest[..rest.find('`')?].to_string())
        })
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::QueueFull(_) => {
                let mut a = ApiError::new(StatusCode::TOO_MANY_REQUESTS, msg).code("queue_full");
                a.retry_after = Some(2);
                a
            }
            EngineError::UnknownModel(_) => ApiError::new(StatusCode::NOT_FOUND, msg)
                .param("model")
                .code("model_not_found"),
            EngineError::Invalid { param, .. } => ApiError {
                param,
                ..ApiError::new(StatusCode::BAD_REQUEST, msg).code("invalid_value")
            },
            EngineError::Unsupported { param, .. } => ApiError {
                param,
                ..ApiError::new(StatusCode::BAD_REQUEST, msg).code("unsupported")
            },
            EngineError::Cancelled => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("cancelled")
            }
            EngineError::ShuttingDown => {
                let mut a =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg).code("shutting_down");
                a.retry_after = Some(5);
                a
            }
            EngineError::Load { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg).code("model_load_failed")
            }
            // As OpenAI answers a generation its safety system blocks: 400, this type and code
            // (openai-python raises `BadRequestError` with `.code == "moderation_blocked"`).
            EngineError::Blocked { .. } => ApiError {
                ty: "image_generation_user_error",
                ..ApiError::new(StatusCode::BAD_REQUEST, msg).code("moderation_blocked")
            },
            EngineError::Failed(_) | EngineError::Panicked(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg).code("generation_failed")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&poem_openapi::types::ToJSON::to_json(&self.body()))
            .unwrap_or_default();
        let mut resp = Response::builder()
            .status(self.status)
            .content_type("application/json; charset=utf-8")
            .body(body);
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Every typed API response enum has these error variants.
pub trait ErrorVariants: Sized {
    fn too_many(body: ErrorResponse, retry_after: u32) -> Self;
    fn unavailable(body: ErrorResponse, retry_after: u32) -> Self;
    fn client(status: StatusCode, body: ErrorResponse) -> Self;
    fn server(status: StatusCode, body: ErrorResponse) -> Self;

    fn from_error(e: ApiError) -> Self {
        let body = e.body();
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            Self::too_many(body, e.retry_after.unwrap_or(1))
        } else if let (StatusCode::SERVICE_UNAVAILABLE, Some(s)) = (e.status, e.retry_after) {
            Self::unavailable(body, s)
        } else if e.status.is_client_error() {
            Self::client(e.status, body)
        } else {
            Self::server(e.status, body)
        }
    }
}

/// `bad_request_handler` of every operation: parse/validation failures → envelope.
pub fn bad_request<T: ErrorVariants>(err: poem::Error) -> T {
    T::from_error(ApiError::from_poem(&err))
}

/// Clients should not retry what will fail the same way again; 1.x SDKs honour this header.
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429 | 503)
}

/// Outermost middleware: turns any error or non-JSON error response into the envelope and
/// marks deterministic failures `x-should-retry: false`.
pub async fn finalize<E: Endpoint>(ep: &E, req: Request) -> poem::Result<Response> {
    let mut resp = ep.get_response(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(resp);
    }
    let is_json = resp
        .content_type()
        .is_some_and(|c| c.starts_with("application/json"));
    if !is_json {
        let text = resp.take_body().into_string().await.unwrap_or_default();
        let message = if text.trim().is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text
        };
        let mut fixed = ApiError::new(status, message).into_response();
        for (k, v) in resp.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                fixed.headers_mut().insert(k.clone(), v.clone());
            }
        }
        resp = fixed;
    }
    if !retryable(status) {
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    Ok(resp)
}

/// `CatchPanic` handler: the server stays up and answers 500 with the envelope.
pub fn panic_response(p: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    warn!(panic = %msg, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal server error (a handler panicked; see the server log)",
    )
    .code("panic")
    .into_response()
}
