//! `GET /`: a one-file "try it in a browser" page (inline CSS and JS, no external assets, no
//! build step). It calls the API from the browser with the key the user types in; the page
//! itself holds no key and, like `/docs`, loads without one.

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("page/index.html");

/// The page at `/`; every other path goes on to `routes`.
pub async fn or_route<E: Endpoint>(routes: &E, req: Request) -> poem::Result<Response> {
    if req.uri().path() == "/" {
        return Ok(index(&req));
    }
    routes.call(req).await.map(IntoResponse::into_response)
}

/// The page for GET and HEAD (hyper drops the body of a HEAD answer); 405 with `Allow`
/// otherwise.
fn index(req: &Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("`{}` is not allowed on `/`: use GET", req.method()),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    Response::builder()
        .content_type("text/html; charset=utf-8")
        // Inline script and style only; nothing is fetched from another origin.
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'",
        )
        .header(header::CACHE_CONTROL, "no-cache")
        .body(INDEX_HTML)
}
