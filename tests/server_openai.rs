//! OpenAI conformance on fake pipelines: response fields and `usage`, variations, JSON and
//! streamed edits, refused choices (`background: transparent`, `style`, several input images,
//! non-`data:` URLs), and what the safety checker's verdicts do to a response.

mod server_common;

use base64::Engine as _;
use poem::http::StatusCode;
use serde_json::{Value, json};
use server_common::fake::FLAG_WORD;
use server_common::*;

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

async fn edit_json(t: &TestApp, body: Value) -> Reply {
    send(t.client.post("/v1/images/edits").body_json(&body)).await
}

fn variation_form(model: Option<&str>) -> poem::test::TestForm {
    let form = poem::test::TestForm::new()
        .field(
            poem::test::TestFormField::bytes(png_bytes(64, 48, false))
                .name("image")
                .filename("in.png"),
        )
        .text("n", "2")
        .text("seed", "9");
    match model {
        Some(m) => form.text("model", m),
        None => form,
    }
}

#[tokio::test]
async fn responses_carry_background_quality_size_and_usage() {
    let t = start();
    let r = generate(
        &t,
        json!({"prompt": "a red fox", "n": 2, "size": "64x48", "quality": "high"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["background"], "opaque");
    assert_eq!(v["quality"], "high");
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["size"], "64x48");
    // The fake counts prompt words + 2, and one output token per 8×8 pixels of each image.
    let u = &v["usage"];
    assert_eq!(u["input_tokens_details"]["text_tokens"], 5);
    assert_eq!(u["input_tokens_details"]["image_tokens"], 0);
    assert_eq!(u["output_tokens"], 2 * 8 * 6);
    assert_eq!(u["output_tokens_details"]["image_tokens"], 2 * 8 * 6);
    assert_eq!(u["input_tokens"], 5);
    assert_eq!(u["total_tokens"], 5 + 96);
    assert!(v.get("withheld").is_none(), "nothing withheld: {v}");
    // `standard` is medium; DALL·E has medium only and says so.
    let v = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "quality": "standard"}),
    )
    .await
    .json();
    assert_eq!(v["quality"], "medium");
    let r = generate(
        &t,
        json!({"prompt": "x", "model": "fake-dalle", "quality": "low"}),
    )
    .await;
    r.assert_error(400, Some("quality"));
    let r = generate(&t, json!({"prompt": "x", "quality": "ultra"})).await;
    r.assert_error(400, Some("quality"));
    // The tier is the step count when none is given (`low` = 12), and steps given win.
    for (body, steps) in [
        (json!({"quality": "low"}), 12),
        (json!({"quality": "low", "num_inference_steps": 3}), 3),
    ] {
        let mut body = body;
        body["prompt"] = json!("x");
        body["size"] = json!("64x64");
        body["stream"] = json!(true);
        body["stream_progress"] = json!(true);
        let events = sse_events(&generate(&t, body).await.text());
        let progress = events
            .iter()
            .find(|(n, _)| n == "image_generation.progress")
            .expect("progress events");
        assert_eq!(progress.1["total"], steps, "{events:?}");
    }
}

#[tokio::test]
async fn transparent_background_and_style_are_refused_not_ignored() {
    let t = start();
    let r = generate(&t, json!({"prompt": "x", "background": "transparent"})).await;
    let e = r.assert_error(400, Some("background"));
    assert!(
        e["message"].as_str().unwrap_or("").contains("opaque"),
        "{e}"
    );
    let r = generate(&t, json!({"prompt": "x", "style": "vivid"})).await;
    r.assert_error(400, Some("style"));
    let v = generate(
        &t,
        json!({"prompt": "x", "size": "64x64", "background": "opaque", "user": "u-1"}),
    )
    .await
    .json();
    assert_eq!(v["background"], "opaque");
    // A stream carries b64 images: asking it for links is refused, not ignored.
    let r = generate(
        &t,
        json!({"prompt": "x", "stream": true, "response_format": "url"}),
    )
    .await;
    r.assert_error(400, Some("response_format"));
}

#[tokio::test]
async fn variations_are_sd_img2img_and_dalle_refuses_them() {
    let t = start();
    let r = send(
        t.client
            .post("/v1/images/variations")
            .multipart(variation_form(None)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["seed"].as_u64(), data[1]["seed"].as_u64()),
        (Some(9), Some(10))
    );
    // The input's size (64x48) and its latent positions as image tokens.
    assert_eq!(v["size"], "64x48");
    assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 8 * 6);
    let img = b64_image(&data[0]["b64_json"]);
    assert_eq!((img.width(), img.height()), (64, 48));
    let r = send(
        t.client
            .post("/v1/images/variations")
            .multipart(variation_form(Some("fake-dalle"))),
    )
    .await;
    let e = r.assert_error(400, Some("model"));
    assert!(
        e["message"].as_str().unwrap_or("").contains("variation"),
        "{e}"
    );
    // The image is required.
    let r = send(
        t.client
            .post("/v1/images/variations")
            .multipart(poem::test::TestForm::new().text("n", "1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

#[tokio::test]
async fn json_edits_take_data_urls_only_and_one_image() {
    let t = start();
    let png = png_bytes(32, 32, false);
    let r = edit_json(
        &t,
        json!({"images": [{"image_url": data_url(&png)}], "mask": {"image_url": data_url(&png_bytes(32, 32, true))},
               "prompt": "blue", "input_fidelity": "high"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["size"], "32x32");
    assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 16);
    let r = edit_json(
        &t,
        json!({"images": [{"image_url": "https://example.com/a.png"}], "prompt": "blue"}),
    )
    .await;
    assert_eq!(
        r.assert_error(400, Some("images[0].image_url"))["code"],
        "unsupported_url"
    );
    let r = edit_json(
        &t,
        json!({"images": [{"file_id": "file-123"}], "prompt": "blue"}),
    )
    .await;
    r.assert_error(400, Some("images[0].image_url"));
    let two = json!({"images": [{"image_url": data_url(&png)}, {"image_url": data_url(&png)}], "prompt": "blue"});
    let e = edit_json(&t, two).await.assert_error(400, Some("image"));
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("2 input images"),
        "{e}"
    );
    // The same rule for repeated multipart parts.
    let form = poem::test::TestForm::new()
        .text("prompt", "blue")
        .field(
            poem::test::TestFormField::bytes(png.clone())
                .name("image[]")
                .filename("a.png"),
        )
        .field(
            poem::test::TestFormField::bytes(png)
                .name("image[]")
                .filename("b.png"),
        );
    send(t.client.post("/v1/images/edits").multipart(form))
        .await
        .assert_error(400, Some("image"));
    // A wrong type in the JSON body names the field, as generations do.
    let r = edit_json(&t, json!({"images": [], "prompt": "blue"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

#[tokio::test]
async fn edits_stream_image_edit_events_with_usage() {
    let t = start();
    let form = poem::test::TestForm::new()
        .text("prompt", "blue")
        .text("stream", "true")
        .text("partial_images", "2")
        .text("num_inference_steps", "4")
        .field(
            poem::test::TestFormField::bytes(png_bytes(32, 32, false))
                .name("image")
                .filename("a.png"),
        );
    let r = send(t.client.post("/v1/images/edits").multipart(form)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let events = sse_events(&r.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed"
        ]
    );
    let done = &events[2].1;
    assert_eq!(done["type"], "image_edit.completed");
    assert_eq!(done["usage"]["input_tokens_details"]["image_tokens"], 16);
    assert_eq!(done["background"], "opaque");
    assert_eq!(done["quality"], "medium");
}

#[tokio::test]
async fn flagged_images_are_withheld_and_all_flagged_is_moderation_blocked() {
    let t = start();
    // The fake checker flags even indices of a prompt with its word: of 3, image 1 passes.
    let prompt = format!("a {FLAG_WORD} fox");
    let v = generate(
        &t,
        json!({"prompt": prompt, "n": 3, "size": "64x64", "seed": 20}),
    )
    .await
    .json();
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{v}");
    assert_eq!(data[0]["seed"], 21);
    assert_eq!(
        v["withheld"],
        json!([{"index": 0, "seed": 20}, {"index": 2, "seed": 22}])
    );
    // Withheld images were still made: usage counts all three.
    assert_eq!(v["usage"]["output_tokens"], 3 * 64);
    // Every image flagged: OpenAI's blocked-generation error.
    let r = generate(&t, json!({"prompt": prompt, "size": "64x64"})).await;
    let e = r.assert_error(400, None);
    assert_eq!(e["code"], "moderation_blocked");
    assert_eq!(e["type"], "image_generation_user_error");
    // `moderation: low` is less strict: the fake then flags nothing.
    let v = generate(
        &t,
        json!({"prompt": prompt, "n": 2, "size": "64x64", "moderation": "low"}),
    )
    .await
    .json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    // Streamed: completed events only for what passed, each naming what was withheld.
    let r = generate(
        &t,
        json!({"prompt": prompt, "n": 2, "size": "64x64", "stream": true, "seed": 4}),
    )
    .await;
    let events = sse_events(&r.text());
    let done: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "image_generation.completed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(done.len(), 1, "{events:?}");
    assert_eq!(done[0]["image_index"], 1);
    assert_eq!(done[0]["withheld"], json!([{"index": 0, "seed": 4}]));
    let r = generate(
        &t,
        json!({"prompt": prompt, "size": "64x64", "stream": true}),
    )
    .await;
    let events = sse_events(&r.text());
    let (name, data) = events.last().expect("an event");
    assert_eq!(name, "error");
    assert_eq!(data["error"]["code"], "moderation_blocked");
}
