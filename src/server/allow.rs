//! `Allow` on every 405 (RFC 9110 §15.5.6 requires it; poem's 405 has none): the methods of
//! the path as the OpenAPI operations declare them, so the header cannot drift from the spec.

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, Request, Response};
use poem_openapi::OpenApi;

/// Each routed path (its segments; `{param}` matches any one) with its `Allow` value.
pub struct AllowTable(Vec<(Vec<String>, HeaderValue)>);

impl AllowTable {
    /// From the operations of `T`. `HEAD` is listed wherever `GET` is: poem answers it from
    /// the `GET` endpoint. `OPTIONS` is not: it is answered only as a CORS preflight, and only
    /// when CORS is on.
    pub fn of<T: OpenApi>() -> Self {
        let paths = T::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .map(|p| (p.path, p.operations.into_iter().map(|o| o.method)));
        let mut rows: Vec<(Vec<String>, Vec<Method>)> = Vec::new();
        for (path, methods) in paths {
            let segments = split(&path);
            match rows.iter_mut().find(|(s, _)| *s == segments) {
                Some((_, m)) => m.extend(methods),
                None => rows.push((segments, methods.collect())),
            }
        }
        Self(
            rows.into_iter()
                .map(|(segments, mut methods)| {
                    if methods.contains(&Method::GET) {
                        methods.push(Method::HEAD);
                    }
                    methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                    methods.dedup();
                    let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                    let value = HeaderValue::from_str(&names.join(", "))
                        .unwrap_or(HeaderValue::from_static("GET"));
                    (segments, value)
                })
                .collect(),
        )
    }

    /// The `Allow` value of `path`, when it is routed. A literal segment wins over `{param}`
    /// (as the router matches `/v1/images/jobs/edits` before `/v1/images/jobs/{id}`).
    pub fn allow(&self, path: &str) -> Option<&HeaderValue> {
        let want = split(path);
        let matches = |s: &[String], literal_only: bool| {
            s.len() == want.len()
                && s.iter().zip(&want).all(|(a, b)| {
                    a == b || (!literal_only && a.starts_with('{') && a.ends_with('}'))
                })
        };
        self.0
            .iter()
            .find(|(s, _)| matches(s, true))
            .or_else(|| self.0.iter().find(|(s, _)| matches(s, false)))
            .map(|(_, v)| v)
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Adds `Allow` to a 405 that lacks it.
pub async fn add_allow<E: Endpoint>(
    ep: &E,
    req: Request,
    table: &AllowTable,
) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    let mut resp = ep.get_response(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && !resp.headers().contains_key(header::ALLOW)
        && let Some(v) = table.allow(&path)
    {
        resp.headers_mut().insert(header::ALLOW, v.clone());
    }
    Ok(resp)
}
