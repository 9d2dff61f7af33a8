//! Async jobs (`/v1/images/jobs/...`), in process: submit → poll → result for both families
//! and for edits, cancel while queued and while running, expiry and eviction, webhooks (to a
//! server on 127.0.0.1, with a retry), the shared queue (429), auth, drain, and two replicas
//! sharing a directory (reads through the other one, `replica_lost`). Running jobs are held
//! at a gate the test opens, so nothing here depends on timing; deadlines only turn a hang
//! into a failure.

mod server_common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kiln::engine::EngineConfig;
use kiln::server::{JobsConfig, ServerConfig, StoreKind, WebhookAllow};
use poem::http::StatusCode;
use serde_json::{Value, json};
use server_common::*;

const JOBS: &str = "/v1/images/jobs";

async fn submit(t: &TestApp, body: Value) -> Reply {
    send(
        t.client
            .post(format!("{JOBS}/generations"))
            .body_json(&body),
    )
    .await
}

/// Submits and expects a 202; returns the job id.
async fn accepted(t: &TestApp, body: Value) -> String {
    let r = submit(t, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    r.json()["id"].as_str().expect("id").to_string()
}

async fn job(t: &TestApp, id: &str) -> Reply {
    send(t.client.get(format!("{JOBS}/{id}"))).await
}

async fn cancel(t: &TestApp, id: &str) -> Reply {
    send(t.client.post(format!("{JOBS}/{id}/cancel"))).await
}

/// Polls the job until `done` holds; returns that record.
async fn until(t: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let r = job(t, id).await;
        if r.status == StatusCode::OK && done(&r.json()) {
            return r.json();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never {what}: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status_is(t: &TestApp, id: &str, status: &str) -> Value {
    until(t, id, status, |v| v["status"] == status).await
}

fn app(models: Vec<kiln::engine::ServedModel>, max_queue: usize, config: ServerConfig) -> TestApp {
    let engine = EngineConfig {
        max_queue,
        preload: false,
    };
    start_with(models, engine, config)
}

fn gate() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn small(prompt: &str) -> Value {
    json!({"prompt": prompt, "size": "64x64", "seed": 7})
}

#[tokio::test]
async fn generation_job_is_submitted_polled_and_returns_the_synchronous_data() {
    let t = start();
    let r = submit(&t, small("a lighthouse")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let a = r.json();
    let id = a["id"].as_str().expect("id");
    assert!(id.starts_with("job_") && id.len() == 36, "{id}");
    assert_eq!(a["object"], "image.job");
    assert_eq!(a["status"], "queued");
    assert!(
        a["queue_position"].is_u64() || a["queue_position"].is_null(),
        "{a}"
    );
    assert!(a["created_at"].as_i64().is_some_and(|t| t > 0));
    let url = a["status_url"].as_str().expect("status_url");
    assert!(url.ends_with(&format!("{JOBS}/{id}")), "{url}");
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(url)
    );

    let v = status_is(&t, id, "succeeded").await;
    assert_eq!(v["kind"], "generation");
    assert_eq!(v["model"], "fake-sd");
    assert_eq!(v["size"], "64x64");
    assert_eq!(v["step"], v["total_steps"]);
    assert!(v["total_steps"].as_u64().is_some_and(|n| n > 0), "{v}");
    let (created, finished) = (v["created_at"].as_i64(), v["finished_at"].as_i64());
    assert!(v["started_at"].as_i64() >= created && finished >= v["started_at"].as_i64());
    assert_eq!(v["expires_at"].as_i64(), finished.map(|f| f + 3600));
    assert!(v["error"].is_null() && v["queue_position"].is_null() && v["created"].is_i64());
    assert_eq!(b64_image(&v["data"][0]["b64_json"]).width(), 64);
    // The same request, synchronously: the same images.
    let sync = generate(&t, small("a lighthouse")).await.json();
    assert_eq!(v["data"], sync["data"]);
    // The replica's list has it, without its images.
    let list = send(t.client.get(JOBS)).await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id);
    assert!(list["data"][0].get("data").is_none());
}

#[tokio::test]
async fn dalle_job_with_links_and_an_edit_job() {
    let t = start();
    let id = accepted(
        &t,
        json!({"prompt": "a fox", "model": "fake-dalle", "response_format": "url"}),
    )
    .await;
    let v = status_is(&t, &id, "succeeded").await;
    assert_eq!(v["response_format"], "url");
    let link = v["data"][0]["url"].as_str().expect("url");
    let path = &link[link.find("/v1/images/files/").expect("a file link")..];
    let file = send(t.client.get(path)).await;
    assert_eq!(file.status, StatusCode::OK);
    assert!(image::load_from_memory(&file.bytes).is_ok());

    let form = poem::test::TestForm::new()
        .text("prompt", "make it blue")
        .text("size", "64x64")
        .text("n", "2")
        .field(
            poem::test::TestFormField::bytes(png_bytes(64, 64, false))
                .name("image")
                .filename("in.png"),
        );
    let r = send(t.client.post(format!("{JOBS}/edits")).multipart(form)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let v = status_is(&t, &id, "succeeded").await;
    assert_eq!(v["kind"], "edit");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 64);

    // The JSON form too, as `POST /v1/images/edits` takes it: data: URLs only.
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_bytes(64, 64, false))
    );
    let body = json!({"images": [{"image_url": url}], "prompt": "blue", "size": "64x64"});
    let r = send(t.client.post(format!("{JOBS}/edits")).body_json(&body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let v = status_is(&t, &id, "succeeded").await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1));
    let body = json!({"images": [{"image_url": "http://x/a.png"}], "prompt": "blue"});
    let r = send(t.client.post(format!("{JOBS}/edits")).body_json(&body)).await;
    r.assert_error(400, Some("images[0].image_url"));
    let body = json!({"images": [{"image_url": url}], "prompt": "blue", "stream": true});
    let r = send(t.client.post(format!("{JOBS}/edits")).body_json(&body)).await;
    r.assert_error(400, Some("stream"));
}

#[tokio::test]
async fn invalid_requests_are_refused_at_once_and_leave_no_job() {
    let t = start();
    submit(&t, json!({"prompt": "x", "size": "63x64"}))
        .await
        .assert_error(400, Some("size"));
    submit(&t, json!({"prompt": "x", "n": "two"}))
        .await
        .assert_error(400, Some("n"));
    submit(&t, json!({"size": "64x64"}))
        .await
        .assert_error(400, Some("prompt"));
    let e = submit(&t, json!({"prompt": "x", "model": "nope"})).await;
    assert_eq!(
        e.assert_error(404, Some("model"))["code"],
        "model_not_found"
    );
    let e = submit(&t, json!({"prompt": "x", "stream": true})).await;
    e.assert_error(400, Some("stream"));
    let e = submit(
        &t,
        json!({"prompt": "x", "webhook_url": "http://127.0.0.1:9/"}),
    )
    .await;
    assert_eq!(
        e.assert_error(400, Some("webhook_url"))["code"],
        "webhooks_disabled"
    );
    let e = submit(&t, json!({"prompt": "x", "top_k": 5, "model": "fake-sd"})).await;
    e.assert_error(400, Some("top_k"));
    let no_image = poem::test::TestForm::new().text("prompt", "x");
    send(t.client.post(format!("{JOBS}/edits")).multipart(no_image))
        .await
        .assert_error(400, Some("image"));
    let list = send(t.client.get(JOBS)).await.json();
    assert_eq!(list["data"], json!([]));
    assert_eq!(
        t.engine.stats().completed + t.engine.stats().in_flight as u64,
        0
    );
    // Unknown and malformed ids.
    for id in [
        "job_0123456789abcdef0123456789abcdef",
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        job(&t, id).await.assert_error(404, Some("id"));
        cancel(&t, id).await.assert_error(404, Some("id"));
    }
}

#[tokio::test]
async fn cancel_while_queued_and_while_running() {
    let g = gate();
    let t = app(vec![gated("g", &g)], 4, ServerConfig::default());
    let a = accepted(&t, small("a")).await;
    status_is(&t, &a, "running").await;
    let b = submit(&t, small("b")).await.json();
    assert_eq!(b["queue_position"], 0, "{b}");
    let b = b["id"].as_str().expect("id").to_string();
    let c = accepted(&t, small("c")).await;
    assert_eq!(job(&t, &c).await.json()["queue_position"], 1);

    let v = cancel(&t, &b).await.json();
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(v["finished_at"].is_i64() && v["started_at"].is_null());
    let v = cancel(&t, &a).await.json();
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(job(&t, &a).await.json()["status"], "cancelled");
    // The engine stops a at its next step and drops b unstarted; c runs.
    status_is(&t, &c, "running").await;
    g.store(true, Ordering::Release);
    status_is(&t, &c, "succeeded").await;
    // A finished job stays as it was.
    assert_eq!(cancel(&t, &c).await.json()["status"], "succeeded");
    t.engine.wait_idle().await;
    let metrics = send(t.client.get("/metrics")).await.text();
    for line in [
        r#"kiln_jobs_total{model="g",device="fake-g",outcome="cancelled"} 2"#,
        r#"kiln_jobs_total{model="g",device="fake-g",outcome="completed"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn jobs_share_the_queue_and_its_429() {
    let g = gate();
    let t = app(vec![gated("g", &g)], 1, ServerConfig::default());
    let a = accepted(&t, small("a")).await;
    let full = submit(&t, small("b")).await;
    assert_eq!(full.assert_error(429, None)["code"], "queue_full");
    assert!(full.headers.get("retry-after").is_some());
    // A synchronous request waits in the same queue, so it is refused too.
    generate(&t, small("c")).await.assert_error(429, None);
    let list = send(t.client.get(JOBS)).await.json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    cancel(&t, &a).await;

    // The job table's own cap: every record unfinished → 429 too.
    let config = ServerConfig {
        jobs: JobsConfig {
            max_jobs: 1,
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    };
    let g = gate();
    let t = app(vec![gated("g", &g)], 4, config);
    let a = accepted(&t, small("a")).await;
    let e = submit(&t, small("b")).await;
    assert_eq!(e.assert_error(429, None)["code"], "too_many_jobs");
    assert!(e.headers.get("retry-after").is_some());
    g.store(true, Ordering::Release);
    status_is(&t, &a, "succeeded").await;
    // Once a finished record can be evicted, a new job fits.
    let b = accepted(&t, small("b")).await;
    job(&t, &a).await.assert_error(404, Some("id"));
    status_is(&t, &b, "succeeded").await;
}

#[tokio::test]
async fn finished_jobs_expire_and_the_oldest_are_evicted_first() {
    let config = ServerConfig {
        jobs: JobsConfig {
            ttl: Duration::from_secs(1),
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    };
    let t = app(vec![fake("fake-sd")], 4, config);
    let id = accepted(&t, small("a")).await;
    let v = status_is(&t, &id, "succeeded").await;
    assert_eq!(
        v["expires_at"].as_i64(),
        v["finished_at"].as_i64().map(|f| f + 1)
    );
    let t0 = Instant::now();
    while job(&t, &id).await.status == StatusCode::OK {
        assert!(t0.elapsed() < Duration::from_secs(30), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    job(&t, &id).await.assert_error(404, Some("id"));

    let config = ServerConfig {
        jobs: JobsConfig {
            max_jobs: 2,
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    };
    let t = app(vec![fake("fake-sd")], 4, config);
    let mut ids = Vec::new();
    for p in ["a", "b", "c"] {
        let id = accepted(&t, small(p)).await;
        status_is(&t, &id, "succeeded").await;
        ids.push(id);
    }
    job(&t, &ids[0]).await.assert_error(404, Some("id"));
    let list = send(t.client.get(JOBS)).await.json();
    let listed: Vec<&str> = list["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);

    // The byte cap: the newest finished job's images stay even when alone larger.
    let config = ServerConfig {
        jobs: JobsConfig {
            max_bytes: Some(1),
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    };
    let t = app(vec![fake("fake-sd")], 4, config);
    let a = accepted(&t, small("a")).await;
    status_is(&t, &a, "succeeded").await;
    let b = accepted(&t, small("b")).await;
    status_is(&t, &b, "succeeded").await;
    job(&t, &a).await.assert_error(404, Some("id"));
    assert!(job(&t, &b).await.json()["data"][0]["b64_json"].is_string());
}

/// A webhook receiver on 127.0.0.1 that answers each request with the next status of
/// `answers` (then 200), and keeps (headers, body) of each.
fn webhook_receiver(answers: Vec<u16>) -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break buf.len(),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
            seen.lock().unwrap().push((head, body));
            let code = answers.get(i).copied().unwrap_or(200);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

#[tokio::test]
async fn webhooks_are_checked_and_delivered_with_retries() {
    let config = ServerConfig {
        jobs: JobsConfig {
            webhook_allow: WebhookAllow::from_list(&["127.0.0.1".to_string()]),
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    };
    let t = app(vec![fake("fake-sd")], 4, config);
    let with = |url: &str| json!({"prompt": "x", "size": "64x64", "webhook_url": url});
    let e = submit(&t, with("ftp://127.0.0.1/x")).await;
    assert_eq!(
        e.assert_error(400, Some("webhook_url"))["code"],
        "invalid_value"
    );
    let e = submit(&t, with("http://localhost:9/x")).await;
    assert_eq!(
        e.assert_error(400, Some("webhook_url"))["code"],
        "webhook_not_allowed"
    );

    let (port, got) = webhook_receiver(vec![500]);
    let id = accepted(
        &t,
        with(&format!("http://127.0.0.1:{port}/hook?token=s3cret")),
    )
    .await;
    let v = until(&t, &id, "webhook delivered", |v| v["webhook"] != "pending").await;
    assert_eq!(v["webhook"], "delivered", "{v}");
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one 500, then the retry");
    for (head, body) in &got {
        assert!(head.starts_with("post /hook?token=s3cret "), "{head}");
        assert!(head.contains(&format!("x-kiln-job-id: {id}")), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let sent: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(sent["id"], id);
        assert_eq!(sent["status"], "succeeded");
        assert_eq!(b64_image(&sent["data"][0]["b64_json"]).width(), 64);
    }
}

#[tokio::test]
async fn every_job_route_needs_the_api_key() {
    let config = ServerConfig {
        api_key: Some("k".into()),
        ..ServerConfig::default()
    };
    let t = app(vec![fake("fake-sd")], 4, config);
    let some = "job_0123456789abcdef0123456789abcdef";
    let form = || poem::test::TestForm::new().text("prompt", "x");
    let replies = [
        send(
            t.client
                .post(format!("{JOBS}/generations"))
                .body_json(&small("x")),
        )
        .await,
        send(t.client.post(format!("{JOBS}/edits")).multipart(form())).await,
        send(t.client.get(JOBS)).await,
        send(t.client.get(format!("{JOBS}/{some}"))).await,
        send(t.client.post(format!("{JOBS}/{some}/cancel"))).await,
    ];
    for r in replies {
        assert_eq!(r.assert_error(401, None)["code"], "invalid_api_key");
    }
    let key = "Bearer k";
    let r = send(
        t.client
            .post(format!("{JOBS}/generations"))
            .header("Authorization", key)
            .body_json(&small("x")),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = send(
        t.client
            .get(format!("{JOBS}/{id}"))
            .header("Authorization", key),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_draining_server_refuses_new_jobs_and_settles_accepted_ones() {
    let g = gate();
    let engine = kiln::engine::EngineHandle::start(vec![gated("g", &g)], EngineConfig::default())
        .expect("engine");
    let (ep, background) =
        kiln::server::build_server(ServerConfig::default(), engine.clone()).expect("app");
    let t = TestApp {
        client: poem::test::TestClient::new(poem::EndpointExt::boxed(
            poem::EndpointExt::map_to_response(ep),
        )),
        engine: engine.clone(),
    };
    let id = accepted(&t, small("a")).await;
    engine.begin_drain();
    let e = submit(&t, small("b")).await;
    assert_eq!(e.assert_error(503, None)["code"], "shutting_down");
    assert!(e.headers.get("retry-after").is_some());
    // The accepted job goes on; the drain waits for its record.
    let settled = background.jobs_settled();
    tokio::pin!(settled);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), settled.as_mut())
            .await
            .is_err()
    );
    g.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("settles");
    assert_eq!(job(&t, &id).await.json()["status"], "succeeded");
}

fn shared(dir: &std::path::Path, stale_secs: u64) -> ServerConfig {
    ServerConfig {
        image_store: StoreKind::Dir(dir.to_path_buf()),
        jobs: JobsConfig {
            stale: Duration::from_secs(stale_secs),
            ..JobsConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn replicas_sharing_a_directory_read_each_others_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = gate();
    let a = app(
        vec![fake("fake-sd"), gated("g", &g)],
        4,
        shared(dir.path(), 4),
    );
    let b = app(vec![fake("fake-sd")], 4, shared(dir.path(), 4));
    // A finished job, read through the other replica: the same record, links served there too.
    let id = accepted(
        &a,
        json!({"prompt": "x", "size": "64x64", "response_format": "url"}),
    )
    .await;
    let v = status_is(&b, &id, "succeeded").await;
    assert_eq!(v, job(&a, &id).await.json());
    let link = v["data"][0]["url"].as_str().expect("url");
    let path = &link[link.find("/v1/images/files/").expect("link")..];
    assert_eq!(send(b.client.get(path)).await.status, StatusCode::OK);
    assert_ne!(v["replica"], "");

    // Active jobs of A: B reads them (no queue position: only A knows it), cannot cancel them.
    let running = accepted(&a, json!({"prompt": "r", "model": "g", "size": "64x64"})).await;
    status_is(&b, &running, "running").await;
    let queued = accepted(&a, json!({"prompt": "q", "model": "g", "size": "64x64"})).await;
    let seen = status_is(&b, &queued, "queued").await;
    assert!(seen["queue_position"].is_null());
    let e = cancel(&b, &queued).await;
    assert_eq!(
        e.assert_error(409, Some("id"))["code"],
        "job_on_other_replica"
    );
    // While it waits, A keeps the record fresh (a heartbeat), so B never takes A for dead.
    let created = seen["created_at"].as_i64().expect("created_at");
    until(&b, &queued, "a heartbeat", |v| {
        v["updated_at"].as_i64() > Some(created)
    })
    .await;
    assert_eq!(cancel(&a, &queued).await.json()["status"], "cancelled");
    status_is(&b, &queued, "cancelled").await;
    assert_eq!(cancel(&b, &queued).await.json()["status"], "cancelled");
    cancel(&a, &running).await;
}

#[tokio::test]
async fn a_record_its_replica_stopped_writing_reads_as_replica_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = app(vec![fake("fake-sd")], 4, shared(dir.path(), 120));
    let id = accepted(&t, small("x")).await;
    let real = status_is(&t, &id, "succeeded").await;
    let now = real["updated_at"].as_i64().expect("updated_at");
    // As left by a replica that died while running a job 1000 s ago.
    let lost = "job_00000000000000000000000000000001";
    let mut record = real.clone();
    for (k, v) in [
        ("id", json!(lost)),
        ("status", json!("running")),
        ("replica", json!("0000dead0000beef")),
        ("updated_at", json!(now - 1000)),
        ("finished_at", Value::Null),
        ("expires_at", Value::Null),
        ("created", Value::Null),
    ] {
        record[k] = v;
    }
    record.as_object_mut().expect("object").remove("data");
    let file = |id: &str| dir.path().join("jobs").join(format!("{id}.json"));
    std::fs::write(file(lost), record.to_string()).expect("write");
    let v = job(&t, lost).await.json();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "replica_lost");
    assert_eq!(v["finished_at"], now - 1000 + 120);
    // Nothing to cancel: it is answered as it is.
    assert_eq!(cancel(&t, lost).await.json()["status"], "failed");
    // A finished record past its expiry is gone, and its file with it.
    let old = "job_00000000000000000000000000000002";
    record["id"] = json!(old);
    record["status"] = json!("succeeded");
    record["finished_at"] = json!(now - 7200);
    record["expires_at"] = json!(now - 3600);
    std::fs::write(file(old), record.to_string()).expect("write");
    job(&t, old).await.assert_error(404, Some("id"));
    let t0 = Instant::now();
    while file(old).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the expired file stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The job records sit beside the images; their own directory holds nothing else.
    assert!(file(&id).exists());
}
