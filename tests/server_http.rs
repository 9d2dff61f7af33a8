//! The HTTP API on fake pipelines: every endpoint, validation errors with their `param`, the
//! error envelope everywhere, auth, limits, url store, output formats.

mod server_common;

use kiln::engine::EngineConfig;
use kiln::server::ServerConfig;
use poem::http::StatusCode;
use serde_json::json;
use server_common::*;

#[tokio::test]
async fn generation_returns_b64_png_of_requested_size_with_seeds() {
    let t = start();
    let r = generate(
        &t,
        json!({"prompt": "a red fox", "n": 2, "size": "80x64", "seed": 7}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert!(v["created"].as_i64().is_some_and(|c| c > 0));
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["size"], "80x64");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["seed"], 7);
    assert_eq!(data[1]["seed"], 8);
    for d in data {
        assert!(d.get("url").is_none());
        let img = b64_image(&d["b64_json"]);
        assert_eq!((img.width(), img.height()), (80, 64));
    }
}

#[tokio::test]
async fn defaults_and_seed_semantics() {
    let t = start();
    // No model, no size, no response_format (0.28-style): default model, 512x512, b64_json.
    let a = generate(&t, json!({"prompt": "x", "seed": 42}))
        .await
        .json();
    assert_eq!(a["size"], "512x512");
    let b = generate(&t, json!({"prompt": "x", "seed": 42}))
        .await
        .json();
    assert_eq!(
        a["data"][0]["b64_json"], b["data"][0]["b64_json"],
        "same seed, same image"
    );
    // seed 0 means random (Prem); the seed actually used is returned.
    let c = generate(&t, json!({"prompt": "x", "seed": 0, "size": "64x64"}))
        .await
        .json();
    assert!(c["data"][0]["seed"].as_u64().is_some_and(|s| s != 0));
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_openai_fields_accepted() {
    let t = start();
    let r = generate(&t, json!({
        "prompt": "x", "size": "64x64", "quality": "hd", "user": "u1", "background": "auto",
        "moderation": "low", "safety_identifier": "abc", "something_new": {"a": 1}, "negative_prompt": "",
        "guidance_scale": 7.5, "num_inference_steps": 3, "scheduler": "Euler", "strength": 0.5,
        "response_format": null, "n": null
    }))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // An extension of the other family is not ignored: a 400 that names it.
    let r = generate(&t, json!({"prompt": "x", "size": "64x64", "top_k": 50})).await;
    let e = r.assert_error(400, Some("top_k"));
    assert!(e["message"].as_str().unwrap_or("").contains("DALL"), "{e}");
    let r = generate(
        &t,
        json!({"prompt": "x", "model": "fake-dalle", "guidance_scale": 7.5}),
    )
    .await;
    r.assert_error(400, Some("guidance_scale"));
}

#[tokio::test]
async fn every_validation_error_names_its_param() {
    let t = start();
    let cases = [
        (json!({}), 400, "prompt"),
        (json!({"prompt": ""}), 400, "prompt"),
        (json!({"prompt": "   "}), 400, "prompt"),
        (json!({"prompt": null}), 400, "prompt"),
        (json!({"prompt": 123}), 400, "prompt"),
        (json!({"prompt": "x", "n": 0}), 400, "n"),
        (json!({"prompt": "x", "n": 11}), 400, "n"),
        (json!({"prompt": "x", "n": "two"}), 400, "n"),
        (json!({"prompt": "x", "n": 1.5}), 400, "n"),
        (json!({"prompt": "x", "size": "100x100"}), 400, "size"),
        (json!({"prompt": "x", "size": "big"}), 400, "size"),
        (json!({"prompt": "x", "size": "0x0"}), 400, "size"),
        (json!({"prompt": "x", "size": "4096x4096"}), 400, "size"),
        (
            json!({"prompt": "x", "response_format": "bogus"}),
            400,
            "response_format",
        ),
        (
            json!({"prompt": "x", "output_format": "gif"}),
            400,
            "output_format",
        ),
        (
            json!({"prompt": "x", "output_compression": 101}),
            400,
            "output_compression",
        ),
        (
            json!({"prompt": "x", "model": "no-such-model"}),
            404,
            "model",
        ),
        (
            json!({"prompt": "x", "guidance_scale": "high"}),
            400,
            "guidance_scale",
        ),
        (
            json!({"prompt": "x", "guidance_scale": -1}),
            400,
            "guidance_scale",
        ),
        (
            json!({"prompt": "x", "num_inference_steps": 0}),
            400,
            "num_inference_steps",
        ),
        (
            json!({"prompt": "x", "num_inference_steps": 151}),
            400,
            "num_inference_steps",
        ),
        (
            json!({"prompt": "x", "scheduler": "warp-drive"}),
            400,
            "scheduler",
        ),
        // The spec's enum is exact, so the server is: no case folding, no empty name.
        (
            json!({"prompt": "x", "scheduler": "EULER A"}),
            400,
            "scheduler",
        ),
        (json!({"prompt": "x", "scheduler": ""}), 400, "scheduler"),
        (json!({"prompt": "x", "seed": -1}), 400, "seed"),
        (json!({"prompt": "x", "strength": 2}), 400, "strength"),
        (
            json!({"prompt": "x", "partial_images": 4}),
            400,
            "partial_images",
        ),
        (json!({"prompt": "x", "stream": "yes"}), 400, "stream"),
        (json!({"prompt": "x", "top_k": -3}), 400, "top_k"),
    ];
    for (body, status, param) in cases {
        let r = generate(&t, body.clone()).await;
        let e = r.assert_error(status, Some(param));
        assert_eq!(
            r.headers
                .get("x-should-retry")
                .and_then(|v| v.to_str().ok()),
            Some("false"),
            "{body}: {e}"
        );
    }
}

#[tokio::test]
async fn malformed_bodies_get_the_envelope() {
    let t = start();
    let r = send(
        t.client
            .post("/v1/images/generations")
            .content_type("application/json")
            .body("{not json"),
    )
    .await;
    r.assert_error(400, None);
    let r = send(
        t.client
            .post("/v1/images/generations")
            .content_type("application/json")
            .body("[1,2]"),
    )
    .await;
    r.assert_error(400, None);
    let r = send(
        t.client
            .post("/v1/images/generations")
            .content_type("text/plain")
            .body("prompt=x"),
    )
    .await;
    assert!(r.status.is_client_error());
    r.json()["error"]["message"].as_str().expect("envelope");
}

#[tokio::test]
async fn routing_errors_get_the_envelope() {
    let t = start();
    send(t.client.get("/v1/nope")).await.assert_error(404, None);
    send(t.client.get("/nope")).await.assert_error(404, None);
    let r = send(t.client.get("/v1/images/generations")).await;
    r.assert_error(405, None);
    assert_eq!(
        r.headers
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
}

/// Every 405 says which methods the path takes (RFC 9110 §15.5.6): the operations' methods,
/// HEAD wherever GET is (poem answers it from GET). A literal path segment is not mistaken
/// for a `{param}`.
#[tokio::test]
async fn method_not_allowed_lists_the_allowed_methods() {
    let t = start();
    let allow = |r: &Reply| {
        r.headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    for (method, path, want) in [
        ("GET", "/v1/images/generations", "POST"),
        ("PUT", "/v1/images/edits", "POST"),
        ("TRACE", "/v1/models", "GET, HEAD"),
        ("DELETE", "/v1/models/some-model", "GET, HEAD"),
        ("PATCH", "/v1/images/jobs", "GET, HEAD"),
        ("GET", "/v1/images/jobs/edits", "POST"),
        ("PUT", "/v1/images/jobs/job_x", "GET, HEAD"),
        ("GET", "/v1/images/jobs/job_x/cancel", "POST"),
        ("POST", "/health/live", "GET, HEAD"),
    ] {
        let m: poem::http::Method = method.parse().expect("method");
        let r = send(t.client.request(m, path)).await;
        r.assert_error(405, None);
        assert_eq!(allow(&r).as_deref(), Some(want), "{method} {path}");
    }
    // HEAD is served where GET is, as the header says.
    let r = send(t.client.head("/v1/models")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.bytes.is_empty());
}

#[tokio::test]
async fn models_status_health_docs_spec() {
    let t = start();
    let v = send(t.client.get("/v1/models")).await.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["fake-sd", "fake-dalle"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["created"].is_i64() && v["data"][0]["owned_by"].is_string());
    let m = send(t.client.get("/v1/models/fake-dalle")).await.json();
    assert_eq!(m["family"], "dalle-mini");
    send(t.client.get("/v1/models/nope"))
        .await
        .assert_error(404, Some("model"));
    assert_eq!(
        send(t.client.get("/v1/")).await.json(),
        json!({"status": true})
    );
    assert_eq!(
        send(t.client.get("/v1")).await.json(),
        json!({"status": true})
    );
    let h = send(t.client.get("/health")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["status"], "ready");
    let docs = send(t.client.get("/docs")).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text().to_lowercase().contains("swagger"));
    let spec = send(t.client.get("/openapi.json")).await.json();
    assert!(spec["paths"]["/v1/images/generations"].is_object());
}

#[tokio::test]
async fn api_key_is_enforced_when_configured() {
    let cfg = ServerConfig {
        api_key: Some("sekrit".into()),
        ..ServerConfig::default()
    };
    let t = start_with(vec![fake("fake-sd")], EngineConfig::default(), cfg);
    let body = json!({"prompt": "x", "size": "64x64"});
    let r = send(t.client.post("/v1/images/generations").body_json(&body)).await;
    assert_eq!(r.assert_error(401, None)["code"], "invalid_api_key");
    let r = send(
        t.client
            .post("/v1/images/generations")
            .header("Authorization", "Bearer wrong")
            .body_json(&body),
    )
    .await;
    r.assert_error(401, None);
    send(t.client.get("/v1/models"))
        .await
        .assert_error(401, None);
    let r = send(
        t.client
            .post("/v1/images/generations")
            .header("Authorization", "Bearer sekrit")
            .body_json(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Health checks and docs stay open.
    assert_eq!(send(t.client.get("/v1/")).await.status, StatusCode::OK);
    assert_eq!(send(t.client.get("/health")).await.status, StatusCode::OK);
    assert_eq!(
        send(t.client.get("/openapi.json")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn try_it_page_loads_without_the_key_and_holds_no_key_nor_external_urls() {
    let cfg = ServerConfig {
        api_key: Some("sekrit-page-key".into()),
        ..ServerConfig::default()
    };
    let t = start_with(vec![fake("fake-sd")], EngineConfig::default(), cfg);
    let r = send(t.client.get("/")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
    assert!(ct.is_some_and(|c| c.starts_with("text/html")), "{ct:?}");
    let html = r.text();
    assert!(
        !html.contains("sekrit-page-key"),
        "the page must not hold the key"
    );
    // The API calls it makes and the docs link.
    for needle in [
        "/v1/images/generations",
        "/v1/models",
        "href=\"/docs\"",
        "type=\"password\"",
    ] {
        assert!(html.contains(needle), "page lacks {needle}");
    }
    // Nothing from another origin: no absolute or protocol-relative links, sources or imports.
    let lower = html.to_lowercase();
    for bad in ["http://", "https://", "@import", "url("] {
        assert!(!lower.contains(bad), "page references `{bad}`");
    }
    for attr in ["src=", "href=", "action="] {
        for (i, _) in lower.match_indices(attr) {
            let value = lower[i + attr.len()..].trim_start_matches(['"', '\'']);
            let same_origin = value.starts_with('/') && !value.starts_with("//");
            assert!(
                same_origin || value.starts_with("data:"),
                "{attr} must be a same-origin path or data: {}",
                &value[..value.len().min(40)]
            );
        }
    }
    // HEAD too; other methods 405 with `Allow`, in the envelope.
    let head = send(t.client.head("/")).await;
    assert_eq!(head.status, StatusCode::OK);
    let post = send(t.client.post("/").body("x")).await;
    post.assert_error(405, None);
    assert_eq!(
        post.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
    // The API behind it still wants the key; unknown paths are still 404s.
    send(t.client.get("/v1/models"))
        .await
        .assert_error(401, None);
    send(t.client.get("/nope")).await.assert_error(404, None);
}

#[tokio::test]
async fn body_limits_answer_413() {
    let cfg = ServerConfig {
        max_json_bytes: 1000,
        max_upload_bytes: 2000,
        ..ServerConfig::default()
    };
    let t = start_with(vec![fake("fake-sd")], EngineConfig::default(), cfg);
    let big = "a".repeat(5000);
    let r = generate(&t, json!({"prompt": big})).await;
    assert_eq!(r.assert_error(413, None)["code"], "request_too_large");
    let form = poem::test::TestForm::new()
        .text("prompt", "x")
        .bytes("image", vec![0u8; 5000]);
    send(t.client.post("/v1/images/edits").multipart(form))
        .await
        .assert_error(413, None);
    // Variations carry an image too: the upload limit, not the JSON one.
    let variation = |bytes: usize| {
        poem::test::TestForm::new().field(
            poem::test::TestFormField::bytes(vec![0u8; bytes])
                .name("image")
                .filename("a.png"),
        )
    };
    let r = send(
        t.client
            .post("/v1/images/variations")
            .multipart(variation(1500)),
    )
    .await;
    r.assert_error(400, Some("image"));
    let r = send(
        t.client
            .post("/v1/images/variations")
            .multipart(variation(5000)),
    )
    .await;
    r.assert_error(413, None);
}

#[tokio::test]
async fn url_response_format_serves_files_from_the_store() {
    let t = start();
    let r = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "response_format": "url", "n": 2}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    for d in v["data"].as_array().expect("data") {
        assert!(d.get("b64_json").is_none());
        let url = d["url"].as_str().expect("url");
        let path = &url[url.find("/v1/").expect("path")..];
        let f = send(t.client.get(path)).await;
        assert_eq!(f.status, StatusCode::OK);
        assert_eq!(
            f.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("image/png")
        );
        assert_eq!(image::load_from_memory(&f.bytes).expect("png").width(), 64);
    }
    send(t.client.get("/v1/images/files/0123.png"))
        .await
        .assert_error(404, Some("id"));
}

#[tokio::test]
async fn output_formats() {
    let t = start();
    for (fmt, magic) in [
        ("png", &b"\x89PNG"[..]),
        ("jpeg", &b"\xff\xd8\xff"[..]),
        ("webp", &b"RIFF"[..]),
    ] {
        let v = generate(
            &t,
            json!({"prompt": "x", "size": "64x64", "output_format": fmt, "output_compression": 80}),
        )
        .await
        .json();
        assert_eq!(v["output_format"], fmt);
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["data"][0]["b64_json"].as_str().expect("b64"),
        )
        .expect("b64");
        assert!(bytes.starts_with(magic), "{fmt}");
        assert_eq!(b64_image(&v["data"][0]["b64_json"]).width(), 64);
    }
}

#[tokio::test]
async fn pipeline_panics_and_failures_are_500_envelopes_and_the_server_survives() {
    let t = start();
    let r = generate(&t, json!({"prompt": "__panic__", "size": "64x64"})).await;
    assert_eq!(r.assert_error(500, None)["type"], "server_error");
    assert_eq!(
        r.headers
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
    let r = generate(&t, json!({"prompt": "__fail__", "size": "64x64"})).await;
    assert_eq!(r.assert_error(500, None)["code"], "generation_failed");
    assert_eq!(
        generate(&t, json!({"prompt": "fine", "size": "64x64"}))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn dalle_family_resizes_to_the_requested_size() {
    let t = start();
    let v = generate(&t, json!({"prompt": "x", "model": "fake-dalle"}))
        .await
        .json();
    assert_eq!(v["size"], "256x256");
    assert_eq!(b64_image(&v["data"][0]["b64_json"]).width(), 256);
    // The Prem app always sends 512x512, to DALL·E too.
    let v = generate(
        &t,
        json!({"prompt": "x", "model": "fake-dalle", "size": "512x512"}),
    )
    .await
    .json();
    assert_eq!(b64_image(&v["data"][0]["b64_json"]).width(), 512);
}

fn edit_form(image_field: &str, image: Vec<u8>) -> poem::test::TestForm {
    // As openai 0.28 sends it: numbers as text, file named "image", octet-stream.
    poem::test::TestForm::new()
        .text("prompt", "make it blue")
        .text("n", "2")
        .text("size", "64x64")
        .text("guidance_scale", "9")
        .text("num_inference_steps", "3")
        .text("seed", "5")
        .text("unknown_field", "ignored")
        .field(
            poem::test::TestFormField::bytes(image)
                .name(image_field)
                .filename("image")
                .content_type("application/octet-stream"),
        )
}

#[tokio::test]
async fn edits_parse_multipart_with_numbers_as_text_and_image_or_image_array() {
    let t = start();
    for field in ["image", "image[]"] {
        let r = send(
            t.client
                .post("/v1/images/edits")
                .multipart(edit_form(field, png_bytes(32, 32, false))),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{field}: {}", r.text());
        let v = r.json();
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["data"][1]["seed"], 6);
    }
    let with_mask =
        edit_form("image", png_bytes(32, 32, false)).bytes("mask", png_bytes(32, 32, true));
    assert_eq!(
        send(t.client.post("/v1/images/edits").multipart(with_mask))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn edit_validation_errors_name_their_param() {
    let t = start();
    let no_image = poem::test::TestForm::new().text("prompt", "x");
    send(t.client.post("/v1/images/edits").multipart(no_image))
        .await
        .assert_error(400, Some("image"));
    // Every image part must be an image, though only the first is edited.
    let second_not_image =
        edit_form("image", png_bytes(32, 32, false)).bytes("image[]", b"{}".to_vec());
    send(
        t.client
            .post("/v1/images/edits")
            .multipart(second_not_image),
    )
    .await
    .assert_error(400, Some("image"));
    let no_prompt = poem::test::TestForm::new().bytes("image", png_bytes(8, 8, false));
    send(t.client.post("/v1/images/edits").multipart(no_prompt))
        .await
        .assert_error(400, Some("prompt"));
    let bad_n = poem::test::TestForm::new()
        .text("prompt", "x")
        .text("n", "many")
        .bytes("image", png_bytes(8, 8, false));
    send(t.client.post("/v1/images/edits").multipart(bad_n))
        .await
        .assert_error(400, Some("n"));
    let not_image = edit_form("image", b"hello, not an image".to_vec());
    send(t.client.post("/v1/images/edits").multipart(not_image))
        .await
        .assert_error(400, Some("image"));
    let mask_mismatch =
        edit_form("image", png_bytes(32, 32, false)).bytes("mask", png_bytes(16, 16, true));
    let e = send(t.client.post("/v1/images/edits").multipart(mask_mismatch))
        .await
        .assert_error(400, Some("mask"));
    let message = e["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("the mask is 16x16") && message.contains("32x32"),
        "{message}"
    );
    // An upload that is not an image: the field named, the library's error kind not leaked.
    let not_an_image = edit_form("image", b"not a png".to_vec());
    let e = send(t.client.post("/v1/images/edits").multipart(not_an_image))
        .await
        .assert_error(400, Some("image"));
    assert_eq!(e["message"], "`image` is not a PNG, JPEG or WebP image");
    let bad_size = poem::test::TestForm::new()
        .text("prompt", "x")
        .text("size", "100x100")
        .bytes("image", png_bytes(8, 8, false));
    send(t.client.post("/v1/images/edits").multipart(bad_size))
        .await
        .assert_error(400, Some("size"));
}

/// A PNG header claiming 100000x100000 pixels must be refused from its header, not decoded.
#[tokio::test]
async fn decompression_bombs_are_refused_before_decoding() {
    let t = start();
    let mut png = png_bytes(1, 1, false);
    // IHDR width/height live at bytes 16..24; rewrite them and fix the chunk CRC.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = send(
        t.client
            .post("/v1/images/edits")
            .multipart(edit_form("image", png)),
    )
    .await
    .assert_error(400, Some("image"));
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("100000x100000"),
        "{e}"
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn edits_on_models_that_cannot_edit_are_clear_400s() {
    // Whether a model edits is its family's (the catalog's) rule: DALL·E cannot.
    let t = start_with(
        vec![fake("fake-sd"), dalle("fake-dalle")],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let r = send(
        t.client.post("/v1/images/edits").multipart(
            poem::test::TestForm::new()
                .text("prompt", "x")
                .text("model", "fake-dalle")
                .bytes("image", png_bytes(32, 32, false)),
        ),
    )
    .await;
    let e = r.assert_error(400, Some("model"));
    assert_eq!(e["code"], "unsupported");
    let message = e["message"].as_str().unwrap_or("");
    assert!(
        message.contains("DALL") && message.contains("fake-dalle"),
        "{message}"
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let t = start_with(
        vec![fake("fake-sd")],
        EngineConfig::default(),
        ServerConfig::default(),
    );
    let r = send(
        t.client
            .get("/v1/models")
            .header("Origin", "http://app.example"),
    )
    .await;
    assert!(
        r.headers.get("access-control-allow-origin").is_none(),
        "CORS must be off unless configured"
    );

    let cfg = ServerConfig {
        cors_origins: vec!["http://app.example".into()],
        ..ServerConfig::default()
    };
    let t = start_with(vec![fake("fake-sd")], EngineConfig::default(), cfg);
    let r = send(
        t.client
            .get("/v1/models")
            .header("Origin", "http://app.example"),
    )
    .await;
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://app.example")
    );
    let pre = send(
        t.client
            .options("/v1/images/generations")
            .header("Origin", "http://app.example")
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type"),
    )
    .await;
    assert!(pre.status.is_success(), "preflight: {}", pre.status);
    let r = send(
        t.client
            .get("/v1/models")
            .header("Origin", "http://evil.example"),
    )
    .await;
    assert_ne!(
        r.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://evil.example")
    );
}
