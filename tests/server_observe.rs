//! Observability through the HTTP app, in process: `X-Request-Id` (echoed when sane, else
//! generated, and carried by error envelopes), `GET /metrics` after real traffic, the probes,
//! and what clients and scrapers see while the engine drains. The engine-level figures
//! (per-device counts, load balancing) are checked in `engine_devices.rs`; the real process and
//! its signals in `drain.rs`.

mod server_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kiln::engine::{EngineConfig, ServedModel};
use kiln::server::ServerConfig;
use poem::http::{HeaderValue, StatusCode};
use serde_json::json;
use server_common::*;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of a scrape (no label value here holds `",`).
fn samples(text: &str) -> Vec<Sample> {
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    lines
        .map(|line| {
            let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| odd(line));
            let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
            let labels = labels.strip_suffix('}').unwrap_or_else(|| odd(line));
            let labels = labels.split("\",").filter(|kv| !kv.is_empty()).map(|kv| {
                let (k, v) = kv.split_once("=\"").unwrap_or_else(|| odd(line));
                (k.to_string(), v.trim_end_matches('"').to_string())
            });
            Sample {
                name: name.into(),
                labels: labels.collect(),
                value: value.parse().unwrap_or_else(|_| odd(line)),
            }
        })
        .collect()
}

fn odd<T>(line: &str) -> T {
    panic!("odd line `{line}`")
}

/// The value of the one sample named `name` having (at least) `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let all = samples(text);
    let hits: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "want one `{name}` {labels:?}, got {hits:?} in:\n{text}"
    );
    hits[0].value
}

async fn scrape(t: &TestApp) -> String {
    let r = send(t.client.get("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain"), "content type `{ct}`");
    r.text()
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header"))
        .unwrap_or_else(|| panic!("no `{name}` header (status {})", r.status))
}

fn is_generated(id: &str) -> bool {
    id.len() == 36
        && id.starts_with("req_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_else_generated() {
    let t = start();
    let sane = send(t.client.get("/v1/models").header("X-Request-Id", "abc-123")).await;
    assert_eq!(sane.status, StatusCode::OK);
    assert_eq!(header(&sane, "x-request-id"), "abc-123");

    let absent = send(t.client.get("/v1/models")).await;
    let first = header(&absent, "x-request-id").to_string();
    assert!(is_generated(&first), "`{first}`");
    let again = send(t.client.get("/v1/models")).await;
    assert_ne!(
        header(&again, "x-request-id"),
        first,
        "ids are fresh per request"
    );

    let long = "a".repeat(200);
    let insane: Vec<HeaderValue> = ["", long.as_str(), "has\"quote", "has space", "back\\slash"]
        .into_iter()
        .map(|s| HeaderValue::from_str(s).expect("a valid header value"))
        .chain([HeaderValue::from_bytes("café".as_bytes()).expect("obs-text is allowed")])
        .collect();
    for v in insane {
        let r = send(t.client.get("/v1/models").header("X-Request-Id", v.clone())).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = header(&r, "x-request-id");
        assert!(is_generated(id), "client id {v:?} answered with `{id}`");
    }
    // 128 characters is the longest kept
    let max = "b".repeat(128);
    let r = send(
        t.client
            .get("/health/live")
            .header("X-Request-Id", max.as_str()),
    )
    .await;
    assert_eq!(header(&r, "x-request-id"), max);
}

#[tokio::test]
async fn error_envelopes_carry_the_request_id() {
    let t = start();
    let unknown_model = || generate_req(&t, json!({"model": "nope", "prompt": "x"}));
    let bad_json = || {
        t.client
            .post("/v1/images/generations")
            .content_type("application/json")
            .body("{not json")
    };
    let unrouted = || t.client.get("/no/such/route");
    let cases = [
        (unknown_model(), 404, Some("model")),
        (bad_json(), 400, None),
        (unrouted(), 404, None),
    ];
    for (i, (req, status, param)) in cases.into_iter().enumerate() {
        let r = send(req).await;
        let e = r.assert_error(status, param);
        assert!(is_generated(header(&r, "x-request-id")), "case {i}");
        assert_eq!(e["request_id"], header(&r, "x-request-id"), "case {i}: {e}");
    }
    let r = send(unknown_model().header("X-Request-Id", "client-7")).await;
    assert_eq!(r.json()["error"]["request_id"], "client-7");
    assert_eq!(header(&r, "x-request-id"), "client-7");
}

fn generate_req(t: &TestApp, body: serde_json::Value) -> poem::test::TestRequestBuilder<'_, App> {
    t.client.post("/v1/images/generations").body_json(&body)
}

#[tokio::test]
async fn metrics_count_a_generation() {
    let t = start_with(
        vec![fake("m")],
        EngineConfig {
            max_queue: 7,
            preload: false,
        },
        ServerConfig::default(),
    );
    let r = generate(&t, json!({"model": "m", "prompt": "x", "size": "64x64"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The worker releases the queue slot just after the reply is sent.
    wait_for(|| t.engine.is_idle(), "the queue slot").await;
    let text = scrape(&t).await;
    let gen_ok = [
        ("endpoint", "/v1/images/generations"),
        ("model", "m"),
        ("status", "200"),
    ];
    assert_eq!(metric(&text, "kiln_http_requests_total", &gen_ok), 1.0);
    // The labels are written in the order the struct declares them.
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"kiln_http_requests_total{endpoint="/v1/images/generations",model="m",status="200"} "#
        )),
        "{text}"
    );
    let rep = [("model", "m"), ("device", "fake-m")];
    let dur = [("endpoint", "/v1/images/generations"), ("model", "m")];
    assert_eq!(
        metric(&text, "kiln_http_request_duration_seconds_count", &dur),
        1.0
    );
    let done = [
        ("model", "m"),
        ("device", "fake-m"),
        ("outcome", "completed"),
    ];
    assert_eq!(metric(&text, "kiln_jobs_total", &done), 1.0);
    let failed = [("model", "m"), ("device", "fake-m"), ("outcome", "failed")];
    assert_eq!(metric(&text, "kiln_jobs_total", &failed), 0.0);
    assert_eq!(metric(&text, "kiln_images_generated_total", &rep), 1.0);
    assert!(metric(&text, "kiln_step_duration_seconds_count", &rep) > 0.0);
    assert_eq!(metric(&text, "kiln_queue_capacity", &[]), 7.0);
    assert_eq!(
        metric(&text, "kiln_queue_waiting", &[("device", "fake-m")]),
        0.0
    );
    assert_eq!(
        metric(&text, "kiln_queue_running", &[("device", "fake-m")]),
        0.0
    );
    for (state, v) in [
        ("ready", 1.0),
        ("loading", 0.0),
        ("unloaded", 0.0),
        ("failed", 0.0),
    ] {
        let l = [("model", "m"), ("device", "fake-m"), ("state", state)];
        assert_eq!(metric(&text, "kiln_model_state", &l), v, "state {state}");
    }
    let build = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(metric(&text, "kiln_build_info", &build), 1.0);
    let backends = samples(&text)
        .into_iter()
        .find(|s| s.name == "kiln_build_info");
    assert!(backends.is_some_and(|s| !s.labels["backends"].is_empty()));
    assert_eq!(metric(&text, "kiln_ready", &[]), 1.0);
    assert_eq!(metric(&text, "kiln_draining", &[]), 0.0);
    assert!(text.trim_end().ends_with("# EOF"), "a complete exposition");
}

#[tokio::test]
async fn unrouted_paths_share_one_label() {
    let t = start();
    for i in 0..20u32 {
        let path = match i % 4 {
            0 => format!("/wp-admin/{i}.php"),
            1 => format!("/v1/images/generations{i}"),
            2 => format!("/v1/images/files/img{i}.png"),
            _ => format!("/v1/models/made-up-{i}"),
        };
        let r = send(t.client.get(&path)).await;
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
    }
    let text = scrape(&t).await;
    let endpoints: BTreeSet<String> = samples(&text)
        .into_iter()
        .filter(|s| s.name == "kiln_http_requests_total")
        .map(|s| s.labels["endpoint"].clone())
        .collect();
    let want: BTreeSet<String> = ["other", "/v1/images/files/{id}", "/v1/models/{model}"]
        .map(String::from)
        .into();
    assert_eq!(endpoints, want, "20 odd paths made these labels:\n{text}");
    let other = [("endpoint", "other"), ("model", ""), ("status", "404")];
    assert!(metric(&text, "kiln_http_requests_total", &other) >= 10.0);
    assert!(
        !text.contains("wp-admin") && !text.contains("made-up"),
        "{text}"
    );
}

#[tokio::test]
async fn probes_answer() {
    let t = start();
    let live = send(t.client.get("/health/live")).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json(), json!({"status": "ok"}));
    let ready = send(t.client.get("/health/ready")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    // The older path answers as the new one.
    assert_eq!(send(t.client.get("/health")).await.json(), ready.json());
    for path in ["/v1/", "/v1"] {
        let r = send(t.client.get(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json(), json!({"status": true}), "{path}");
    }
}

#[tokio::test]
async fn draining_refuses_new_work_and_finishes_accepted_jobs() {
    let t = start_with(
        vec![slow("slow", 20)],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    // 100 steps × 20 ms: the job runs ~2 s, far longer than the checks below take in process.
    let body = json!({"model": "slow", "prompt": "x", "size": "64x64", "num_inference_steps": 100});
    let in_flight = generate(&t, body);
    let checks = async {
        wait_for(|| t.engine.devices()[0].running == 1, "the job to start").await;
        t.engine.begin_drain();
        assert!(
            !t.engine.is_idle(),
            "the job is still in flight when the drain begins"
        );

        let ready = send(t.client.get("/health/ready")).await;
        let e = ready.assert_error(503, None);
        assert_eq!(e["code"], "draining");
        assert!(
            ready.headers.get("retry-after").is_some(),
            "Retry-After on /health/ready"
        );
        assert_eq!(header(&ready, "connection"), "close");
        assert_eq!(
            send(t.client.get("/health")).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );

        let late = generate(
            &t,
            json!({"model": "slow", "prompt": "late", "size": "64x64"}),
        )
        .await;
        let e = late.assert_error(503, None);
        assert_eq!(e["code"], "shutting_down");
        assert!(
            late.headers.get("retry-after").is_some(),
            "Retry-After on a refused job"
        );
        assert_eq!(e["request_id"], header(&late, "x-request-id"));

        let live = send(t.client.get("/health/live")).await;
        assert_eq!(live.status, StatusCode::OK);
        assert_eq!(header(&live, "connection"), "close");

        let text = scrape(&t).await;
        assert_eq!(metric(&text, "kiln_draining", &[]), 1.0);
        assert_eq!(metric(&text, "kiln_ready", &[]), 0.0);
    };
    let (first, ()) = tokio::join!(in_flight, checks);
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(header(&first, "connection"), "close");
    let img = b64_image(&first.json()["data"][0]["b64_json"]);
    assert_eq!((img.width(), img.height()), (64, 64));
    tokio::time::timeout(Duration::from_secs(30), t.engine.wait_idle())
        .await
        .expect("idle once the accepted job is done");
    let text = scrape(&t).await;
    let done = [("model", "slow"), ("outcome", "completed")];
    assert_eq!(
        metric(&text, "kiln_jobs_total", &done),
        1.0,
        "the refused job never ran"
    );
}

#[tokio::test]
async fn two_devices_have_their_own_queue_series() {
    let on = |device: &str| ServedModel {
        device: device.into(),
        ..fake("m")
    };
    let t = start_with(
        vec![on("cpu#0"), on("cpu#1")],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let r = generate(&t, json!({"model": "m", "prompt": "x", "size": "64x64"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    wait_for(|| t.engine.is_idle(), "the queue slot").await;
    let text = scrape(&t).await;
    for device in ["cpu#0", "cpu#1"] {
        for name in ["kiln_queue_waiting", "kiln_queue_running"] {
            assert_eq!(
                metric(&text, name, &[("device", device)]),
                0.0,
                "{name} {device}"
            );
        }
        let l = [("model", "m"), ("device", device), ("outcome", "completed")];
        assert!(metric(&text, "kiln_jobs_total", &l) <= 1.0);
    }
    let done: f64 = samples(&text)
        .iter()
        .filter(|s| s.name == "kiln_jobs_total" && s.labels["outcome"] == "completed")
        .map(|s| s.value)
        .sum();
    assert_eq!(done, 1.0, "one job, counted on the one device it ran on");
    // The request counter is by model, not by device: one series.
    let ok = [
        ("endpoint", "/v1/images/generations"),
        ("model", "m"),
        ("status", "200"),
    ];
    assert_eq!(metric(&text, "kiln_http_requests_total", &ok), 1.0);
}
