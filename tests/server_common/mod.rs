//! Helpers for the server tests: an app on fake pipelines, and JSON/PNG/SSE helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use base64::Engine as _;
pub use fake::{FakeConfig, FakePipeline};
pub mod fake;

use kiln::engine::{EngineConfig, EngineHandle, Family, ServedModel};
use kiln::server::{ServerConfig, build_app};
use poem::EndpointExt;
use poem::http::{HeaderMap, StatusCode};
use poem::test::{TestClient, TestRequestBuilder};
use serde_json::Value;

pub type App = poem::endpoint::BoxEndpoint<'static, poem::Response>;

pub struct TestApp {
    pub client: TestClient<App>,
    pub engine: EngineHandle,
}

pub fn fake(id: &str) -> ServedModel {
    FakePipeline::spec(
        id,
        FakeConfig {
            panic_prompt: Some("__panic__".into()),
            fail_prompt: Some("__fail__".into()),
            ..FakeConfig::default()
        },
    )
}

pub fn slow(id: &str, step_ms: u64) -> ServedModel {
    FakePipeline::spec(
        id,
        FakeConfig {
            step_delay: Duration::from_millis(step_ms),
            ..FakeConfig::default()
        },
    )
}

/// A fake whose steps wait until `gate` is set (cancellable meanwhile).
pub fn gated(id: &str, gate: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> ServedModel {
    FakePipeline::spec(
        id,
        FakeConfig {
            gate: Some(gate.clone()),
            ..FakeConfig::default()
        },
    )
}

pub fn dalle(id: &str) -> ServedModel {
    FakePipeline::spec(
        id,
        FakeConfig {
            family: Family::DalleMini,
            ..FakeConfig::default()
        },
    )
}

pub fn start_with(models: Vec<ServedModel>, engine: EngineConfig, config: ServerConfig) -> TestApp {
    let engine = EngineHandle::start(models, engine).expect("engine");
    let app: App = build_app(config, engine.clone())
        .expect("app")
        .map_to_response()
        .boxed();
    TestApp {
        client: TestClient::new(app),
        engine,
    }
}

/// The real model at `path` (found as `kiln serve --model ID=PATH` finds it) served as `id`.
pub fn serve_model(id: &str, path: &std::path::Path) -> TestApp {
    serve_model_with(id, path, kiln::engine::AddOns::default())
}

/// [`serve_model`] with SD add-ons, as `kiln serve --lora-dir … --embeddings-dir …
/// --taesd-dir …` sets them up.
pub fn serve_model_with(id: &str, path: &std::path::Path, addons: kiln::engine::AddOns) -> TestApp {
    let found = kiln::engine::discover(
        &path.join("does-not-exist"),
        &[(id.into(), path.to_path_buf())],
        kiln::backend::DeviceSpec::Cpu,
        &addons,
    )
    .expect("discover");
    let mut config = ServerConfig {
        embeddings_dir: addons.embeddings_dir.clone(),
        ..ServerConfig::default()
    };
    config.rules.loras = addons.loras;
    start_with(found.specs, EngineConfig::default(), config)
}

pub fn start() -> TestApp {
    start_with(
        vec![fake("fake-sd"), dalle("fake-dalle")],
        EngineConfig::default(),
        ServerConfig::default(),
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Asserts the OpenAI error envelope with this status and `param`; returns the error object.
    pub fn assert_error(&self, status: u16, param: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        assert!(e["type"].as_str().is_some(), "no type: {v}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "param/code keys missing: {v}"
        );
        assert_eq!(e["param"].as_str(), param, "param in {v}");
        e.clone()
    }
}

pub async fn send(req: TestRequestBuilder<'_, App>) -> Reply {
    let resp = req.send().await.0;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().into_vec().await.expect("body");
    Reply {
        status,
        headers,
        bytes,
    }
}

pub async fn generate(t: &TestApp, body: Value) -> Reply {
    send(t.client.post("/v1/images/generations").body_json(&body)).await
}

pub fn b64_image(v: &Value) -> image::DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("b64 string"))
        .expect("base64");
    image::load_from_memory(&bytes).expect("decodable image")
}

pub fn png_bytes(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if alpha {
        image::RgbaImage::from_fn(w, h, |x, _| {
            image::Rgba([10, 20, 30, if x < w / 2 { 0 } else { 255 }])
        })
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    } else {
        image::RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]))
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
    }
    out.into_inner()
}

/// (event name, data JSON) pairs of an SSE body.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let data: Value = serde_json::from_str(&data).ok()?;
            Some((event.unwrap_or_else(|| "message".into()), data))
        })
        .collect()
}

/// Polls `cond` every 10 ms; the 20 s deadline only turns a hang into a failure.
pub async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
