//! Request checks before routing: API key, body size limits, and the JSON pre-check of
//! generation bodies (so type errors name their field).

use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::AppState;
use super::error::ApiError;

/// Paths that need the API key when one is configured. The status check, health, docs, spec
/// and image links (unguessable ids, fetched by browsers) stay open.
fn protected(path: &str) -> bool {
    path.starts_with("/v1/") && path != "/v1/" && !path.starts_with("/v1/images/files/")
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn authorized(req: &Request, key: &str) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let token = match value.trim_start().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
        _ => "",
    };
    same(token.trim().as_bytes(), key.as_bytes())
}

pub async fn guard<E: Endpoint>(
    ep: &E,
    mut req: Request,
    state: Arc<AppState>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    if let Some(key) = state.config.api_key.as_deref()
        && protected(&path)
        && req.method() != Method::OPTIONS
        && !authorized(&req, key)
    {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        )
        .code("invalid_api_key")
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(resp);
    }
    if req.method() == Method::POST && path.starts_with("/v1/images/") {
        // Edits and variations carry images (as files, or as data: URLs in a JSON edit).
        let limit = if path.ends_with("/edits") || path.ends_with("/variations") {
            state.config.max_upload_bytes
        } else {
            state.config.max_json_bytes
        };
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {limit} bytes"),
            )
            .code("request_too_large")
            .into_response()
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(too_large());
        }
        // Read with the limit (covers chunked bodies), then hand the bytes on unchanged.
        let body = match req.take_body().into_bytes_limit(limit).await {
            Ok(b) => b,
            Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large()),
            Err(e) if super::conn::is_timeout(&e) => {
                let mut resp = ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string())
                    .code("request_timeout")
                    .into_response();
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(resp);
            }
            Err(e) => {
                return Ok(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
                .into_response());
            }
        };
        // Media types are case-insensitive (RFC 9110 §8.3.1).
        let is_json = req.content_type().is_some_and(|c| {
            c.trim_start()
                .get(..16)
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        });
        let schema = match path.as_str() {
            "/v1/images/generations" => Some(&state.generation_schema),
            "/v1/images/jobs/generations" => Some(&state.job_schema),
            "/v1/images/edits" => Some(&state.edit_schema),
            "/v1/images/jobs/edits" => Some(&state.job_edit_schema),
            _ => None,
        };
        if let Some(schema) = schema.filter(|_| is_json)
            && let Err(e) = schema.check(&body)
        {
            return Ok(e.into_response());
        }
        req.set_body(body);
    }
    ep.call(req).await.map(IntoResponse::into_response)
}
