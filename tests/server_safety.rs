//! The SD safety checker behind the API, with the real (tiny, random) checker of
//! `models/fixtures/safety-tiny` on the tiny SD model: its concept thresholds rewritten so that
//! it flags every image or none, a flagged image (or preview) is never sent, every image
//! flagged is OpenAI's `moderation_blocked`, and `--safety-checker on` without a checker
//! refuses to load the model.

mod safety_common;
mod server_common;

use std::path::Path;

use kiln::engine::{AddOns, SafetyMode};
use poem::http::StatusCode;
use safety_common::{checker_with_threshold, fixtures};
use serde_json::json;
use server_common::*;

fn serve(mode: SafetyMode, dir: Option<&Path>) -> TestApp {
    let addons = AddOns {
        safety: mode,
        safety_dir: dir.map(Path::to_path_buf),
        ..AddOns::default()
    };
    serve_model_with("sd", &fixtures().join("sd15-tiny"), addons)
}

const FAST: &str = r#"{"size": "64x64", "num_inference_steps": 3}"#;

fn body(extra: serde_json::Value) -> serde_json::Value {
    let mut b: serde_json::Value = serde_json::from_str(FAST).expect("json");
    b["prompt"] = json!("a lighthouse");
    for (k, v) in extra.as_object().expect("object") {
        b[k] = v.clone();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_flags_everything_blocks_images_and_previews() {
    let dir = tempfile::tempdir().expect("tempdir");
    checker_with_threshold(dir.path(), -2.0);
    let t = serve(SafetyMode::On, Some(dir.path()));
    let r = generate(&t, body(json!({"n": 2}))).await;
    let e = r.assert_error(400, None);
    assert_eq!(e["code"], "moderation_blocked");
    assert_eq!(e["type"], "image_generation_user_error");
    // Streamed: no preview gets out, and the stream ends in the same error.
    let r = generate(&t, body(json!({"stream": true, "partial_images": 2}))).await;
    let events = sse_events(&r.text());
    assert!(
        events.iter().all(|(n, _)| !n.contains("partial_image")),
        "{events:?}"
    );
    let (name, data) = events.last().expect("an event");
    assert_eq!(name, "error");
    assert_eq!(data["error"]["code"], "moderation_blocked");
    // Variations are checked too.
    let form = poem::test::TestForm::new()
        .field(
            poem::test::TestFormField::bytes(png_bytes(64, 64, false))
                .name("image")
                .filename("in.png"),
        )
        .text("num_inference_steps", "3");
    let r = send(t.client.post("/v1/images/variations").multipart(form)).await;
    assert_eq!(r.assert_error(400, None)["code"], "moderation_blocked");
    // Operators see it: 2 + 1 + 1 images withheld.
    let metrics = send(t.client.get("/metrics")).await.text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kiln_images_withheld_total{"))
        .unwrap_or_else(|| panic!("no withheld counter in {metrics}"));
    assert!(line.ends_with(" 4"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_flags_nothing_lets_images_and_previews_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    checker_with_threshold(dir.path(), 2.0);
    let t = serve(SafetyMode::Auto, Some(dir.path()));
    let r = generate(&t, body(json!({"n": 2, "moderation": "low"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(2));
    let r = generate(&t, body(json!({"stream": true, "partial_images": 2}))).await;
    let names: Vec<String> = sse_events(&r.text()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.ends_with("partial_image"))
            .count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("image_generation.completed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_without_a_checker_refuses_to_serve_unchecked() {
    let empty = tempfile::tempdir().expect("tempdir");
    let t = serve(SafetyMode::On, Some(empty.path()));
    let r = generate(&t, body(json!({}))).await;
    let e = r.assert_error(500, None);
    assert_eq!(e["code"], "model_load_failed");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("safety checker"),
        "{e}"
    );
    // `auto` serves the same model unchecked, and `off` never looks.
    let t = serve(SafetyMode::Auto, Some(empty.path()));
    assert_eq!(generate(&t, body(json!({}))).await.status, StatusCode::OK);
}
