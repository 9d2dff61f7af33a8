//! `/health` for probes and for operators: open without the API key but then only `status`;
//! model ids, load errors (which name server paths) and the queue need the key; 503 while a
//! model loads and when no model can serve.

mod server_common;

use std::sync::Arc;
use std::time::Duration;

use kiln::engine::{EngineConfig, EngineError, Family, ServedModel};
use kiln::server::ServerConfig;
use poem::http::StatusCode;
use server_common::*;

/// A model whose load fails with an error naming a server path, as a broken folder does.
fn broken(id: &str) -> ServedModel {
    ServedModel {
        id: id.into(),
        family: Family::Sd15,
        device: format!("broken-{id}"),
        source: "/srv/secret/models/broken".into(),
        demo: false,
        loader: Arc::new(|| {
            Err(EngineError::Load {
                model: "broken".into(),
                message: "/srv/secret/models/broken/unet: no such file".into(),
            })
        }),
    }
}

fn preloaded(models: Vec<ServedModel>, key: Option<&str>) -> TestApp {
    start_with(
        models,
        EngineConfig {
            preload: true,
            ..EngineConfig::default()
        },
        ServerConfig {
            api_key: key.map(str::to_string),
            ..ServerConfig::default()
        },
    )
}

async fn until_settled(t: &TestApp) {
    for _ in 0..200 {
        // preloading: every model ends ready or failed
        let done = |l: &str| l == "ready" || l == "failed";
        if t.engine.models().iter().all(|m| done(m.state.label())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("models still loading");
}

#[tokio::test]
async fn without_the_key_health_says_only_ready() {
    let t = preloaded(vec![fake("fake-sd"), broken("bad")], Some("sekrit"));
    until_settled(&t).await;
    let open = send(t.client.get("/health")).await;
    assert_eq!(open.status, StatusCode::OK, "{}", open.text());
    assert_eq!(open.json(), serde_json::json!({"status": "ready"}));
    assert!(!open.text().contains("/srv/secret"), "{}", open.text());

    let keyed = send(
        t.client
            .get("/health")
            .header("Authorization", "Bearer sekrit"),
    )
    .await;
    assert_eq!(keyed.status, StatusCode::OK);
    let v = keyed.json();
    let states: Vec<(&str, &str)> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("fake-sd", "ready"), ("bad", "failed")]);
    assert!(
        v["models"][1]["error"]
            .as_str()
            .unwrap()
            .contains("no such file")
    );
    assert!(v["queue_capacity"].as_u64().unwrap() > 0);

    let wrong = send(
        t.client
            .get("/health")
            .header("Authorization", "Bearer nope"),
    )
    .await;
    assert_eq!(wrong.json(), serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn without_a_key_configured_everyone_gets_the_details() {
    let t = preloaded(vec![fake("fake-sd")], None);
    until_settled(&t).await;
    let v = send(t.client.get("/health")).await.json();
    assert_eq!(v["models"][0]["id"], "fake-sd");
}

#[tokio::test]
async fn not_ready_when_no_model_can_serve() {
    let t = preloaded(vec![broken("a"), broken("b")], Some("sekrit"));
    until_settled(&t).await;
    let r = send(t.client.get("/health")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "no_model");
    assert!(!r.text().contains("/srv/secret"), "{}", r.text());
    // the process still answers (liveness)
    assert_eq!(send(t.client.get("/v1/")).await.status, StatusCode::OK);
}
