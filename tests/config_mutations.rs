//! Every number in every fixture config, set to 0, -1, 10¹² and u64::MAX in turn, loads through
//! the library loaders with either a config error that names the file and the field, or (for
//! the fields listed in `IGNORED` and the values listed in `VALID`) a clean load; never a panic.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use kiln::error::Error;
use kiln::models::dalle_mini::DalleMini;
use kiln::models::sd15::{AutoencoderTiny, SafetyChecker, StableDiffusion};
use serde_json::Value;

/// Fields kiln does not read (training-only settings, token ids the tokenizer files decide,
/// legacy duplicates): any value loads. A nested field is `outer.inner`; `outer` alone covers
/// all of it.
const IGNORED: &[(&str, &str)] = &[
    ("unet/config.json", "addition_embed_type_num_heads"), // addition_embed_type is null
    ("unet/config.json", "dropout"),
    ("unet/config.json", "sample_size"), // only diffusers' default image size
    ("text_encoder/config.json", "attention_dropout"),
    ("text_encoder/config.json", "dropout"),
    ("text_encoder/config.json", "bos_token_id"),
    ("text_encoder/config.json", "eos_token_id"),
    ("text_encoder/config.json", "pad_token_id"),
    ("text_encoder/config.json", "initializer_factor"),
    ("text_encoder/config.json", "initializer_range"),
    ("text_encoder/config.json", "projection_dim"), // CLIPTextModel has no projection
    ("taesd/config.json", "block_out_channels"),    // superseded by encoder_/decoder_…
    ("taesd/config.json", "latent_magnitude"),      // training-time latent scaling
    ("taesd/config.json", "latent_shift"),
    ("taesd/config.json", "shift_factor"),
    ("config.json", "dropout"),
    ("config.json", "init_std"),
    ("vqgan/config.json", "in_channels"), // the encoder half is not built
    ("vqgan/config.json", "dropout"),
    ("safety_checker/config.json", "text_config"), // the checker has no text tower
    ("safety_checker/config.json", "initializer_factor"),
    ("safety_checker/config.json", "logit_scale_init_value"),
    (
        "safety_checker/config.json",
        "vision_config.attention_dropout",
    ),
    (
        "safety_checker/config.json",
        "vision_config.initializer_factor",
    ),
    (
        "safety_checker/config.json",
        "vision_config.initializer_range",
    ),
    ("safety_checker/config.json", "vision_config.projection_dim"), // the top-level one is used
    ("feature_extractor/preprocessor_config.json", "image_mean"), // read; any finite mean is valid
];

/// DALL·E's own token ids and generation lengths kiln takes from the VQGAN grid instead.
const DALLE_IGNORED: [&str; 5] = [
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "min_length",
    "max_length",
];

/// Mutations that are valid values of a read field.
const VALID: [(&str, &str, i128); 3] = [
    ("unet/config.json", "freq_shift", 0),
    ("scheduler/scheduler_config.json", "steps_offset", 0),
    ("config.json", "decoder_start_token_id", 0),
];

const VALUES: [i128; 4] = [0, -1, 1_000_000_000_000, u64::MAX as i128];

/// Where the number sits: the top-level field, then indices into its list.
fn numbers(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Number(_) => out.push(path.clone()),
        Value::Object(m) => {
            for (k, x) in m {
                path.push(Value::String(k.clone()));
                numbers(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Value::from(i));
                numbers(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn set(root: &mut Value, path: &[Value], to: Value) {
    let mut v = root;
    for p in path {
        v = match p {
            Value::String(k) => &mut v[k.as_str()],
            other => &mut v[other.as_u64().unwrap() as usize],
        };
    }
    *v = to;
}

/// A fixture without its fp16 single files and reference tensors.
fn copy_dir(from: &Path, to: &Path) {
    copy_tree(from, to, &|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        !name.contains("fp16.safetensors") && name != "refs.safetensors"
    });
}

/// Mutates every number of `config` (relative to `root`) and loads with `load`; returns the
/// failures.
fn mutate_all(
    root: &Path,
    config: &str,
    load: &dyn Fn() -> kiln::error::Result<()>,
) -> Vec<String> {
    let file = root.join(config);
    let original = std::fs::read_to_string(&file).unwrap();
    let json: Value = serde_json::from_str(&original).unwrap();
    let mut paths = Vec::new();
    numbers(&json, &mut Vec::new(), &mut paths);
    assert!(paths.len() >= 4, "{config}: only {} numbers", paths.len());
    let kind = config;
    let mut failures = Vec::new();
    for path in paths {
        let top = path[0].as_str().unwrap();
        let field = path
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(".");
        for value in VALUES {
            let mut j = json.clone();
            let to: Value = serde_json::from_str(&value.to_string()).unwrap();
            set(&mut j, &path, to);
            std::fs::write(&file, serde_json::to_string_pretty(&j).unwrap()).unwrap();
            let case = format!("{config} {path:?} = {value}");
            let outcome = catch_unwind(AssertUnwindSafe(load));
            let ignored = IGNORED.contains(&(kind, field.as_str()))
                || IGNORED.contains(&(kind, top))
                || (kind == "config.json" && DALLE_IGNORED.contains(&field.as_str()));
            let valid = VALID.contains(&(kind, field.as_str(), value));
            match outcome {
                Err(_) => failures.push(format!("{case}: PANIC")),
                Ok(Ok(())) if ignored || valid => {}
                Ok(Ok(())) => failures.push(format!("{case}: loaded")),
                Ok(Err(e)) if ignored || valid => failures.push(format!("{case}: refused: {e}")),
                Ok(Err(Error::Config { path: p, message }))
                    if p == file && message.contains(&format!("`{field}`")) => {}
                Ok(Err(e)) => {
                    failures.push(format!("{case}: error does not name file and field: {e}"))
                }
            }
        }
    }
    std::fs::write(&file, original).unwrap();
    failures
}

fn check(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sd15_config_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sd15");
    copy_dir(&sd_tiny(), &root);
    std::fs::remove_file(root.join("unet/diffusion_pytorch_model.bf16.safetensors")).ok();
    let load = || StableDiffusion::<B>::load(&root, false, &device()).map(drop);
    load().expect("the unmutated copy loads");
    let mut failures = Vec::new();
    for config in [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
    ] {
        failures.extend(mutate_all(&root, config, &load));
    }
    check(failures);
}

#[test]
fn safety_checker_config_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("safety");
    copy_dir(&fixture("safety-tiny"), &root);
    let load = || SafetyChecker::<B>::load(&root, &device()).map(drop);
    load().expect("the unmutated copy loads");
    let mut failures = Vec::new();
    for config in [
        "safety_checker/config.json",
        "feature_extractor/preprocessor_config.json",
    ] {
        failures.extend(mutate_all(&root, config, &load));
    }
    check(failures);
}

#[test]
fn taesd_config_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("taesd");
    copy_dir(&fixture("taesd-tiny"), &root);
    let load = || AutoencoderTiny::<B>::load(&root, &device(), DType::F32).map(drop);
    load().expect("the unmutated copy loads");
    check(mutate_all(dir.path(), "taesd/config.json", &load));
}

#[test]
fn dalle_config_numbers() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("dalle-tiny"), dir.path());
    let mut failures = Vec::new();
    for (bart, configs) in [
        ("flax", ["flax/config.json", "flax/vqgan/config.json"]),
        (
            "mindalle/dalle_bart_tiny",
            [
                "mindalle/dalle_bart_tiny/config.json",
                "mindalle/vqgan/config.json",
            ],
        ),
    ] {
        let folder: PathBuf = dir.path().join(bart);
        let load = || DalleMini::<B>::load(&folder, &device()).map(drop);
        load().expect("the unmutated copy loads");
        for config in configs {
            let (parent, kind) = config.split_once('/').unwrap();
            let (root, rel) = match kind.strip_prefix("dalle_bart_tiny/") {
                Some(_) => (
                    dir.path().join(parent).join("dalle_bart_tiny"),
                    "config.json",
                ),
                None => (dir.path().join(parent), kind),
            };
            failures.extend(mutate_all(&root, rel, &load));
        }
    }
    check(failures);
}
