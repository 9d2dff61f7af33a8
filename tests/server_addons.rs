//! The HTTP side of SD's add-ons on fake pipelines: `GET /v1/loras`, LoRAs named by the `loras`
//! field (JSON and multipart) and by `<lora:…>` prompt tags, and the 400s for what cannot be
//! served. The LoRA math itself is tested against diffusers in `sd15_lora.rs`.

mod server_common;

use kiln::engine::{EngineConfig, JobRules, LoraLibrary};
use kiln::server::ServerConfig;
use poem::http::StatusCode;
use serde_json::json;
use server_common::*;

fn with_loras(dir: &std::path::Path) -> TestApp {
    let config = ServerConfig {
        rules: JobRules {
            loras: LoraLibrary::new(dir),
            ..JobRules::default()
        },
        ..ServerConfig::default()
    };
    start_with(
        vec![fake("fake-sd"), dalle("fake-dalle")],
        EngineConfig::default(),
        config,
    )
}

fn library() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("film.safetensors"), b"12345").unwrap();
    std::fs::create_dir(dir.path().join("lcm")).unwrap();
    std::fs::write(
        dir.path().join("lcm/pytorch_lora_weights.safetensors"),
        b"1",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn loras_are_listed_from_the_folder_as_it_is_now() {
    let dir = library();
    let t = with_loras(dir.path());
    let v = send(t.client.get("/v1/loras")).await.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["film", "lcm"]);
    assert_eq!(v["data"][0]["bytes"], 5);
    std::fs::write(dir.path().join("new.safetensors"), b"1").unwrap();
    let v = send(t.client.get("/v1/loras")).await.json();
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(3),
        "found without a restart"
    );
}

#[tokio::test]
async fn named_loras_are_accepted_and_unknown_ones_are_400s_listing_what_exists() {
    let dir = library();
    let t = with_loras(dir.path());
    let post = |body: serde_json::Value| t.client.post("/v1/images/generations").body_json(&body);
    let ok = send(post(
        json!({"prompt": "a cat <lora:film:0.6>", "size": "64x64",
        "loras": [{"name": "lcm", "weight": 1.0}]}),
    ))
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    for body in [
        json!({"prompt": "a cat", "loras": [{"name": "nope"}]}),
        json!({"prompt": "a cat <lora:nope:0.5>"}),
    ] {
        let r = send(post(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let e = &r.json()["error"];
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains("unknown LoRA `nope`") && msg.contains("film, lcm"),
            "{msg}"
        );
    }
    // never a server path, even one that exists
    let path = dir.path().join("film.safetensors");
    let r = send(post(
        json!({"prompt": "a", "loras": [{"name": path.to_str().unwrap()}]}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(post(json!({"prompt": "a", "loras": [{"name": "../film"}]}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let cases = [
        (
            json!({"prompt": "a", "loras": [{"name": "film", "weight": 11}]}),
            "weight",
        ),
        (json!({"prompt": "a <lora:film:0.5:0.2>"}), "prompt"),
        (json!({"prompt": "a <hypernet:x:1>"}), "prompt"),
        (
            json!({"prompt": "a", "negative_prompt": "<lora:film>"}),
            "negative_prompt",
        ),
        (
            json!({"prompt": "a", "loras": [{"name": "film"}, {"name": "film"}]}),
            "loras",
        ),
        (
            json!({"prompt": "a", "model": "fake-dalle", "loras": [{"name": "film"}]}),
            "loras",
        ),
        (
            json!({"prompt": "a <lora:film>", "model": "fake-dalle"}),
            "loras",
        ),
    ];
    for (body, param) in cases {
        let r = send(post(body.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], param, "{body}: {}", r.text());
    }
}

#[tokio::test]
async fn edits_take_loras_as_a_json_form_field() {
    let dir = library();
    let t = with_loras(dir.path());
    let form = |loras: &str| {
        poem::test::TestForm::new()
            .text("prompt", "make it blue")
            .text("size", "64x64")
            .text("loras", loras)
            .field(
                poem::test::TestFormField::bytes(png_bytes(32, 32, false))
                    .name("image")
                    .filename("image.png"),
            )
    };
    let r = send(
        t.client
            .post("/v1/images/edits")
            .multipart(form(r#"[{"name":"film","weight":0.5}]"#)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = send(
        t.client
            .post("/v1/images/edits")
            .multipart(form(r#"[{"name":"nope"}]"#)),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("unknown LoRA `nope`"), "{}", r.text());
    let r = send(t.client.post("/v1/images/edits").multipart(form("film"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "not JSON: {}", r.text());
}

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(rel)
}

fn tiny_with_addons(taesd: bool) -> TestApp {
    let addons = kiln::engine::AddOns {
        loras: LoraLibrary::new(fixture("sd15-tiny-lora")),
        embeddings_dir: Some(fixture("embeddings-tiny")),
        taesd_dir: taesd.then(|| fixture("taesd-tiny")),
        ..kiln::engine::AddOns::default()
    };
    serve_model_with("sd15-tiny", &fixture("sd15-tiny"), addons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_describe_the_real_files_without_server_paths() {
    let t = tiny_with_addons(false);
    let v = send(t.client.get("/v1/loras")).await.json();
    let find = |id: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .cloned()
            .unwrap()
    };
    let kohya = find("kohya");
    assert_eq!(kohya["format"], "kohya");
    assert!(kohya["rank"].as_u64().unwrap() >= 1 && kohya["conv_modules"].as_u64().unwrap() >= 1);
    assert!(
        kohya["text_encoder_modules"].as_u64().unwrap() >= 1,
        "{kohya}"
    );
    assert_eq!(find("peft")["format"], "peft");
    let sdxl = find("sdxl_keys");
    assert!(sdxl["error"].as_str().unwrap().contains("SDXL"), "{sdxl}");
    let text = v.to_string();
    assert!(
        !text.contains(env!("CARGO_MANIFEST_DIR")),
        "no server paths: {text}"
    );

    let v = send(t.client.get("/v1/textual_inversions")).await.json();
    let e: Vec<(String, u64, u64)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().into(),
                e["vectors"].as_u64().unwrap(),
                e["dim"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(e.contains(&("threevec".into(), 3, 32)), "{e:?}");
    assert!(e.contains(&("twopt".into(), 2, 32)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_that_does_not_fit_and_a_missing_taesd_are_400s() {
    let t = tiny_with_addons(false);
    let post = |body: serde_json::Value| t.client.post("/v1/images/generations").body_json(&body);
    let r = send(post(
        json!({"prompt": "a", "size": "32x32", "num_inference_steps": 1,
        "loras": [{"name": "bad_shape"}]}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let e = &r.json()["error"];
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.starts_with("LoRA `bad_shape`") && msg.contains("shape"),
        "{msg}"
    );
    assert!(
        !msg.contains(env!("CARGO_MANIFEST_DIR")),
        "no server path: {msg}"
    );
    assert_eq!(e["param"], "loras");
    // the base model is untouched and the server goes on
    let ok = send(post(
        json!({"prompt": "a", "size": "32x32", "num_inference_steps": 1}),
    ))
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    let r = send(post(
        json!({"prompt": "a", "size": "32x32", "vae": "taesd"}),
    ))
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("kiln download taesd"), "{}", r.text());
    let r = send(post(json!({"prompt": "a", "vae": "huge"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = send(post(json!({"prompt": "a", "prompt_syntax": "markdown"}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "prompt_syntax");
}
