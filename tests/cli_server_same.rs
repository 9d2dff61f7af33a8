//! `kiln generate` and `POST /v1/images/generations` translate the same options into the same
//! job and run it through the same family adapter: with the same prompt, seed and options they
//! give the same pixels (and, for SD, the same PNG infotext), for both families.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use server_common::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(rel)
}

/// Runs `kiln generate` on `model` with `args`, returns the PNG file's bytes.
fn cli_png(model: &Path, args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cli.png");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "generate",
            "--model-path",
            model.to_str().expect("utf-8 path"),
        ])
        .args(args)
        .args(["--output", out.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "warn")
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&out).expect("the CLI wrote its PNG")
}

/// Serves `model` as `id` and posts `body`, returns the PNG response's bytes.
async fn server_png(id: &str, model: &Path, body: Value) -> Vec<u8> {
    server_png_on(&serve_model(id, model), body).await
}

async fn server_png_on(t: &TestApp, body: Value) -> Vec<u8> {
    let r = generate(t, body).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    base64::engine::general_purpose::STANDARD
        .decode(r.json()["data"][0]["b64_json"].as_str().expect("b64_json"))
        .expect("base64")
}

fn pixels(png: &[u8]) -> image::RgbImage {
    image::load_from_memory(png).expect("PNG decodes").to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd15_cli_and_server_give_the_same_pixels_and_infotext() {
    // The server names the model by its id, the CLI by the file stem: the same here.
    let model = fixture("sd15-tiny");
    let cli = cli_png(
        &model,
        &[
            "--prompt",
            "a red cube",
            "--negative-prompt",
            "blurry",
            "--steps",
            "3",
            "--width",
            "64",
            "--height",
            "48",
            "--seed",
            "9",
            "--scheduler",
            "euler_a",
            "--guidance-scale",
            "6",
        ],
    );
    let server = server_png(
        "sd15-tiny",
        &model,
        json!({"prompt": "a red cube", "negative_prompt": "blurry", "num_inference_steps": 3,
               "size": "64x48", "seed": 9, "scheduler": "euler_a", "guidance_scale": 6}),
    )
    .await;
    assert_eq!(pixels(&cli), pixels(&server));
    let params = |png: &[u8]| kiln::image_io::read_parameters(png).expect("PNG reads");
    let p = params(&server).expect("server PNGs carry the infotext");
    assert_eq!((p.steps, p.seed, p.sampler.as_str()), (3, 9, "Euler a"));
    assert_eq!(params(&cli), Some(p));
}

/// The SD add-on fixtures as `--lora-dir`, `--embeddings-dir` and `--taesd-dir`.
fn addons() -> kiln::engine::AddOns {
    kiln::engine::AddOns {
        loras: kiln::engine::LoraLibrary::new(fixture("sd15-tiny-lora")),
        embeddings_dir: Some(fixture("embeddings-tiny")),
        taesd_dir: Some(fixture("taesd-tiny")),
        ..kiln::engine::AddOns::default()
    }
}

fn addon_flags() -> Vec<String> {
    let a = addons();
    let dir = |p: Option<&Path>| p.expect("set").to_str().expect("utf-8").to_string();
    vec![
        "--lora-dir".into(),
        dir(a.loras.dir()),
        "--embeddings-dir".into(),
        dir(a.embeddings_dir.as_deref()),
        "--taesd-dir".into(),
        dir(a.taesd_dir.as_deref()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd15_loras_embeddings_long_prompts_and_taesd_are_the_same_from_both() {
    let model = fixture("sd15-tiny");
    // A LoRA by tag and one by option, an embedding word, a prompt over 75 tokens with a BREAK.
    let long = format!("{} BREAK threevec on a table", "a red cube, ".repeat(30));
    let prompt = format!("<lora:kohya:0.7> {long}");
    let t = serve_model_with("sd15-tiny", &model, addons());
    for vae in ["full", "taesd"] {
        let mut args: Vec<String> = [
            "--prompt",
            &prompt,
            "--negative-prompt",
            "kittyemb",
            "--lora",
            "peft:-0.4",
            "--steps",
            "3",
            "--width",
            "32",
            "--height",
            "32",
            "--seed",
            "5",
            "--vae",
            vae,
        ]
        .map(String::from)
        .into();
        args.extend(addon_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cli = cli_png(&model, &args);
        let server = server_png_on(
            &t,
            json!({"prompt": prompt, "negative_prompt": "kittyemb", "num_inference_steps": 3,
                   "loras": [{"name": "peft", "weight": -0.4}], "size": "32x32", "seed": 5,
                   "vae": vae}),
        )
        .await;
        assert_eq!(pixels(&cli), pixels(&server), "vae {vae}");
        // the infotext keeps the prompt as written, tags included
        let p = kiln::image_io::read_parameters(&server).unwrap().unwrap();
        assert_eq!(p.prompt, prompt);
        // and the LoRAs did something
        let base = server_png_on(
            &t,
            json!({"prompt": long, "negative_prompt": "kittyemb", "num_inference_steps": 3,
                   "size": "32x32", "seed": 5, "vae": vae}),
        )
        .await;
        assert_ne!(pixels(&base), pixels(&server), "vae {vae}: LoRAs applied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd15_defaults_are_the_same_from_both() {
    let model = fixture("sd15-tiny");
    let cli = cli_png(
        &model,
        &[
            "--prompt", "x", "--width", "32", "--height", "32", "--seed", "4",
        ],
    );
    let server = server_png(
        "sd15-tiny",
        &model,
        json!({"prompt": "x", "size": "32x32", "seed": 4}),
    )
    .await;
    assert_eq!(pixels(&cli), pixels(&server));
    let p = kiln::image_io::read_parameters(&cli).unwrap().unwrap();
    assert_eq!(
        (p.steps, p.cfg_scale),
        (
            kiln::models::family::sd15_defaults::STEPS,
            kiln::models::family::sd15_defaults::GUIDANCE_SCALE
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dalle_cli_and_server_give_the_same_pixels_at_a_resized_size() {
    let model = fixture("dalle-tiny/flax");
    let cli = cli_png(
        &model,
        &[
            "--prompt",
            "a cat on a chair",
            "--seed",
            "3",
            "--top-k",
            "5",
            "--temperature",
            "0.9",
            "--width",
            "96",
            "--height",
            "64",
        ],
    );
    let server = server_png(
        "dalle",
        &model,
        json!({"prompt": "a cat on a chair", "seed": 3, "top_k": 5, "temperature": 0.9,
               "size": "96x64"}),
    )
    .await;
    let (a, b) = (pixels(&cli), pixels(&server));
    assert_eq!(a.dimensions(), (96, 64));
    assert_eq!(a, b);
}
