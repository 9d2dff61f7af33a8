//! Hostile or sloppy requests (issue 29, items 6 and 7): Host headers in image links, the auth
//! scheme's case and `WWW-Authenticate`, upper-case JSON media types, models that fail to
//! load, and jobs stopped by shutdown.

mod server_common;

use std::sync::Arc;
use std::time::Duration;

use kiln::engine::{EngineConfig, EngineError, Family, ServedModel};
use kiln::server::ServerConfig;
use poem::http::StatusCode;
use serde_json::json;
use server_common::*;

async fn url_with_host(t: &TestApp, host: &str) -> String {
    let body = json!({"prompt": "x", "size": "64x64", "response_format": "url"});
    let r = send(
        t.client
            .post("/v1/images/generations")
            .header("Host", host)
            .body_json(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["data"][0]["url"]
        .as_str()
        .expect("url")
        .to_string()
}

#[tokio::test]
async fn image_links_ignore_hostile_host_headers() {
    let t = start();
    for host in [
        "evil.example/phish?x=",
        "evil.example#",
        "user@evil.example",
        "evil.example:80/x",
        "evil example",
        "evil.example:99999",
        "evil.example:+80",
        "[::1",
        "::1",
        "-evil.example",
        "",
    ] {
        let url = url_with_host(&t, host).await;
        assert!(
            !url.contains("evil") && url.starts_with("http://"),
            "Host `{host}` gave {url}"
        );
        let rest = url.trim_start_matches("http://");
        let (authority, path) = rest.split_once('/').expect("a path");
        assert!(!authority.contains(['@', '?', '#']), "{url}");
        assert!(path.starts_with("v1/images/files/"), "{url}");
    }
    for host in ["example.com:8080", "127.0.0.1", "[::1]:8000", "kiln"] {
        let url = url_with_host(&t, host).await;
        assert!(
            url.starts_with(&format!("http://{host}/v1/images/files/")),
            "{url}"
        );
    }
}

#[tokio::test]
async fn auth_scheme_is_case_insensitive_and_401_names_it() {
    let t = start_with(
        vec![fake("fake-sd")],
        EngineConfig::default(),
        ServerConfig {
            api_key: Some("sekrit".into()),
            ..ServerConfig::default()
        },
    );
    let r = send(t.client.get("/v1/models")).await;
    r.assert_error(401, None);
    assert_eq!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = send(
            t.client
                .get("/v1/models")
                .header("Authorization", format!("{scheme} sekrit")),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{scheme}: {}", r.text());
    }
    for value in ["Basic sekrit", "Bearersekrit", "sekrit", "Bearer  wrong"] {
        let r = send(t.client.get("/v1/models").header("Authorization", value)).await;
        r.assert_error(401, None);
    }
}

#[tokio::test]
async fn upper_case_json_media_type_gets_the_friendly_check() {
    let t = start();
    for ct in ["APPLICATION/JSON", "Application/Json; charset=UTF-8"] {
        let r = send(
            t.client
                .post("/v1/images/generations")
                .content_type(ct)
                .body(r#"{"prompt": "x", "n": "two"}"#),
        )
        .await;
        let e = r.assert_error(400, Some("n"));
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("must be an integer between 1 and 10"),
            "{ct}: {e}"
        );
    }
}

#[tokio::test]
async fn strength_zero_is_refused_by_the_schema_and_the_engine() {
    let t = start();
    let r = send(
        t.client
            .post("/v1/images/generations")
            .body_json(&serde_json::json!({"prompt": "x", "strength": 0})),
    )
    .await;
    r.assert_error(400, Some("strength"));
    let spec = kiln::server::spec_json();
    assert!(
        spec.contains("\"exclusiveMinimum\": true") || spec.contains("\"exclusiveMinimum\":true")
    );
    let p = kiln::engine::JobParams {
        prompt: "x".into(),
        strength: Some(0.0),
        ..Default::default()
    };
    let e = p
        .into_job(kiln::engine::Family::Sd15, &Default::default(), None)
        .unwrap_err();
    assert!(e.to_string().contains("above 0"), "{e}");
}

/// A model whose loader fails the way real loaders do (a `crate::Error` turned `Failed`).
fn unloadable(id: &str) -> ServedModel {
    ServedModel {
        id: id.into(),
        family: Family::Sd15,
        device: format!("unloadable-{id}"),
        source: "a broken folder".into(),
        demo: false,
        loader: Arc::new(|| Err(EngineError::Failed("unet/config.json: missing".into()))),
    }
}

#[tokio::test]
async fn a_model_that_fails_to_load_says_so() {
    let t = start_with(
        vec![unloadable("broken")],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let r = generate(&t, json!({"prompt": "x", "size": "64x64"})).await;
    let e = r.assert_error(500, None);
    assert_eq!(e["code"], "model_load_failed");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains("failed to load"), "{msg}");
    assert!(!msg.contains("generation failed"), "{msg}");
    assert!(msg.contains("unet/config.json: missing"), "{msg}");
}

#[tokio::test]
async fn jobs_stopped_by_shutdown_answer_shutting_down_with_retry_after() {
    let t = start_with(
        vec![slow("slow", 20)],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let engine = t.engine.clone();
    let stopper = tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        while engine.stats().in_flight == 0 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        engine.begin_shutdown();
    });
    let body = json!({"prompt": "x", "size": "64x64", "num_inference_steps": 150});
    let r = generate(&t, body).await;
    stopper.await.expect("join");
    let e = r.assert_error(503, None);
    assert_eq!(e["code"], "shutting_down", "{e}");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    // Refused after shutdown: the same answer.
    let r = generate(&t, json!({"prompt": "x", "size": "64x64"})).await;
    assert_eq!(r.assert_error(503, None)["code"], "shutting_down");
    assert!(r.headers.contains_key("retry-after"));
}
