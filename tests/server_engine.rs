//! Engine behaviour seen through the server: 429 under a saturated queue, cancel on client
//! disconnect (dropped request future and a real TCP client), streaming event order, shutdown,
//! and the real tiny SD 1.5 model behind the same API.

mod server_common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kiln::backend::DeviceSpec;
use kiln::engine::{AddOns, EngineConfig, EngineError, EngineHandle, ImageJob, discover};
use kiln::server::{ServerConfig, build_app, serve};
use poem::http::StatusCode;
use serde_json::json;
use server_common::*;

#[tokio::test]
async fn saturated_queue_answers_429_with_retry_after() {
    let t = start_with(
        vec![slow("slow", 50)],
        EngineConfig {
            max_queue: 1,
            preload: false,
        },
        ServerConfig::default(),
    );
    let long = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "num_inference_steps": 10}),
    );
    let second = async {
        wait_for(|| t.engine.stats().in_flight == 1, "the first job").await;
        generate(&t, json!({"prompt": "y", "size": "64x64"})).await
    };
    let (first, second) = tokio::join!(long, second);
    assert_eq!(first.status, StatusCode::OK);
    let e = second.assert_error(429, None);
    assert_eq!(e["code"], "queue_full");
    assert!(second.headers.get("retry-after").is_some());
    assert!(
        second.headers.get("x-should-retry").is_none(),
        "429 must stay retryable"
    );
    // The slot is free again afterwards (the worker releases it just after the reply is sent).
    wait_for(|| t.engine.stats().in_flight == 0, "the queue slot").await;
    assert_eq!(
        generate(&t, json!({"prompt": "z", "size": "64x64"}))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn dropping_the_request_cancels_the_job() {
    let t = start_with(
        vec![slow("slow", 20)],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let req = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "num_inference_steps": 150}),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), req)
            .await
            .is_err(),
        "should still be running"
    );
    wait_for(|| t.engine.stats().cancelled == 1, "the cancellation").await;
    wait_for(|| t.engine.stats().in_flight == 0, "the queue slot").await;
    assert_eq!(t.engine.stats().completed, 0);
}

#[tokio::test]
async fn stream_events_come_in_openai_order() {
    let t = start();
    let r = generate(&t, json!({"prompt": "x", "size": "64x64", "stream": true, "partial_images": 2, "num_inference_steps": 6, "n": 2, "stream_progress": true})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"))
    );
    let events = sse_events(&r.text());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    for (name, data) in &events {
        assert_eq!(
            data["type"].as_str(),
            Some(name.as_str()),
            "event name = type"
        );
    }
    let progress: Vec<u64> = events
        .iter()
        .filter(|(e, _)| e == "image_generation.progress")
        .map(|(_, d)| d["step"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(progress, [1, 2, 3, 4, 5, 6]);
    let partial: Vec<&serde_json::Value> = events
        .iter()
        .filter(|(e, _)| e == "image_generation.partial_image")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(partial.len(), 2);
    assert_eq!(partial[0]["partial_image_index"], 0);
    assert_eq!(partial[1]["partial_image_index"], 1);
    assert_eq!(b64_image(&partial[0]["b64_json"]).width(), 64);
    let completed: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == "image_generation.completed")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(completed.len(), 2);
    assert!(
        completed[0]
            > names
                .iter()
                .rposition(|n| *n != "image_generation.completed")
                .unwrap_or(0),
        "completed events come last: {names:?}"
    );
    let done = &events[completed[0]].1;
    assert_eq!(b64_image(&done["b64_json"]).height(), 64);
    assert!(done["usage"].is_object() && done["size"] == "64x64" && done["output_format"] == "png");

    // Without the opt-in there are no progress events.
    let r = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "stream": true, "partial_images": 1}),
    )
    .await;
    let names: Vec<String> = sse_events(&r.text()).into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
}

#[tokio::test]
async fn stream_errors_arrive_as_error_events() {
    let t = start();
    let r = generate(
        &t,
        json!({"prompt": "__fail__", "size": "64x64", "stream": true}),
    )
    .await;
    let events = sse_events(&r.text());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "error");
    assert!(events[0].1["error"]["message"].as_str().is_some());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real client over TCP that hangs up mid-generation cancels the job (hyper drops the
/// handler future when it sees the connection close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_disconnect_cancels_the_job_and_shutdown_is_clean() {
    let engine =
        EngineHandle::start(vec![slow("slow", 20)], EngineConfig::default()).expect("engine");
    let app = build_app(ServerConfig::default(), engine.clone()).expect("app");
    let port = free_port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = format!("127.0.0.1:{port}");
    let server = tokio::spawn(async move {
        serve(
            app,
            &addr,
            async {
                let _ = stop_rx.await;
            },
            Duration::from_secs(2),
            &Default::default(),
        )
        .await
    });
    let body = r#"{"prompt": "x", "size": "64x64", "num_inference_steps": 150}"#;
    let request = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let t0 = Instant::now();
    let mut sock = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server did not start: {e}"),
        }
    };
    sock.write_all(request.as_bytes()).expect("send");
    let t1 = Instant::now();
    while engine.stats().in_flight == 0 && t1.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if engine.stats().in_flight == 0 {
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf).unwrap_or(0);
        panic!(
            "the job never started; server said: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    wait_for(
        || engine.stats().cancelled == 1,
        "cancellation after disconnect",
    )
    .await;

    // A normal request still works, then shutdown stops the server.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.write_all(b"GET /v1/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    sock.read_to_string(&mut reply).expect("read");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains(r#"{"status":true}"#),
        "{reply}"
    );
    let _ = stop_tx.send(());
    engine.begin_shutdown();
    server.await.expect("join").expect("server exits cleanly");
    engine.shutdown();
}

#[tokio::test]
async fn shutdown_cancels_running_and_refuses_new_jobs() {
    let engine =
        EngineHandle::start(vec![slow("slow", 20)], EngineConfig::default()).expect("engine");
    let ticket = engine
        .submit(
            "slow",
            ImageJob {
                steps: Some(1000),
                ..ImageJob::new("x", 8, 8, 1)
            },
        )
        .expect("submit");
    wait_for(|| engine.stats().in_flight == 1, "the job").await;
    let t0 = Instant::now();
    let e2 = engine.clone();
    tokio::task::spawn_blocking(move || e2.shutdown())
        .await
        .expect("join");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Stopped by shutdown: says so (503 `shutting_down` with Retry-After), not `cancelled`.
    assert!(matches!(
        ticket.wait().await,
        Err(EngineError::ShuttingDown)
    ));
    assert!(matches!(
        engine.submit("slow", ImageJob::new("x", 8, 8, 1)),
        Err(EngineError::ShuttingDown)
    ));
}

fn tiny_sd() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/sd15-tiny")
}

#[test]
fn empty_models_dir_falls_back_to_the_demo_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let found = discover(dir.path(), &[], DeviceSpec::Cpu, &AddOns::default()).expect("discover");
    assert!(found.demo);
    let ids: Vec<&str> = found.specs.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["sd15-demo", "dalle-mini-demo"]);
    // A real diffusers folder under the models dir wins over the demo.
    let real = dir.path().join("my-sd");
    std::fs::create_dir_all(real.join("unet")).expect("mkdir");
    std::fs::write(real.join("model_index.json"), "{}").expect("write");
    let found = discover(dir.path(), &[], DeviceSpec::Cpu, &AddOns::default()).expect("discover");
    assert!(!found.demo);
    assert_eq!(found.specs[0].id, "my-sd");
}

/// The real SD 1.5 pipeline (tiny random weights) behind the HTTP API: lazy load, PNG of the
/// requested size, seeds returned, loading state visible in /v1/models.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_sd15_generates_through_the_api() {
    let t = serve_model("sd15-demo", &tiny_sd());
    let m = send(t.client.get("/v1/models/sd15-demo")).await.json();
    assert_eq!(m["state"], "unloaded");
    assert_eq!(m["family"], "stable-diffusion-1.5");
    let r = generate(&t, json!({"prompt": "a photo of a cat", "size": "64x64", "n": 2, "num_inference_steps": 2, "seed": 11})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"][1]["seed"], 12);
    for d in v["data"].as_array().expect("data") {
        let img = b64_image(&d["b64_json"]);
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    assert_eq!(
        send(t.client.get("/v1/models/sd15-demo")).await.json()["state"],
        "ready"
    );
    // Streaming on the real pipeline: partial images are cheap latent previews at full size.
    let r = generate(&t, json!({"prompt": "a cat", "size": "64x64", "stream": true, "partial_images": 2, "num_inference_steps": 3, "seed": 4})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let events = sse_events(&r.text());
    let partial: Vec<_> = events
        .iter()
        .filter(|(e, _)| e == "image_generation.partial_image")
        .collect();
    assert_eq!(
        partial.len(),
        2,
        "{:?}",
        events.iter().map(|(e, _)| e).collect::<Vec<_>>()
    );
    assert_eq!(b64_image(&partial[0].1["b64_json"]).width(), 64);
    assert_eq!(
        events.last().map(|(e, _)| e.as_str()),
        Some("image_generation.completed")
    );
    // Edits: img2img (no mask) and inpainting with the image's own transparency as the mask
    // (OpenAI's convention); numbers arrive as multipart text.
    for alpha in [false, true] {
        let form = poem::test::TestForm::new()
            .text("prompt", "x")
            .text("size", "64x64")
            .text("num_inference_steps", "2")
            .text("strength", "0.5")
            .bytes("image", png_bytes(64, 64, alpha));
        let r = send(t.client.post("/v1/images/edits").multipart(form)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let img = b64_image(&r.json()["data"][0]["b64_json"]);
        assert_eq!((img.width(), img.height()), (64, 64));
    }
}

#[tokio::test]
async fn dalle_mini_demo_generates_through_the_api() {
    let found = discover(
        &tiny_sd().join("does-not-exist"),
        &[],
        DeviceSpec::Cpu,
        &AddOns::default(),
    )
    .expect("discover");
    assert!(found.demo);
    assert!(
        found.specs.iter().any(|s| s.id == "dalle-mini-demo"),
        "the DALL·E demo model is registered"
    );
    let t = start_with(
        found.specs,
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let m = send(t.client.get("/v1/models/dalle-mini-demo"))
        .await
        .json();
    assert_eq!(m["family"], "dalle-mini");
    let r = generate(&t, json!({"model": "dalle-mini-demo", "prompt": "a red chair", "size": "64x64", "n": 2, "seed": 5, "top_k": 1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"][1]["seed"], 6);
    for d in v["data"].as_array().expect("data") {
        let img = b64_image(&d["b64_json"]);
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    // DALL·E cannot edit: a clear 400 naming the model.
    let form = poem::test::TestForm::new()
        .text("model", "dalle-mini-demo")
        .text("prompt", "x")
        .bytes("image", png_bytes(64, 64, false));
    send(t.client.post("/v1/images/edits").multipart(form))
        .await
        .assert_error(400, Some("model"));
}
