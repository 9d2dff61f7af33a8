//! Weight loading: every key of the real SD 1.5 layouts is consumed (manifests of the full-size
//! files in `models/manifests/`), the tiny fixtures load with nothing missing or unused, and bad
//! files give errors that name the file and the tensor.

mod common;

use std::collections::{BTreeSet, HashMap};

use burn::tensor::Shape;
use common::*;
use kiln::models::sd15::clip::ClipTextModel;
use kiln::models::sd15::config::{ClipConfig, UNetConfig, VaeConfig};
use kiln::models::sd15::unet_2d::UNet2DConditionModel;
use kiln::models::sd15::vae::AutoencoderKL;
use kiln::models::sd15::{StableDiffusion, weights};
use kiln::weights::{KeyTarget, param_shapes};

fn manifest(name: &str) -> Vec<(String, Vec<usize>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/manifests")
        .join(name);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("json");
    v["tensors"]
        .as_object()
        .expect("tensors")
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect()
}

/// Maps every manifest key through `map` onto `params`; returns the unconsumed params and the
/// keys that found no home.
fn cover(
    keys: &[(String, Vec<usize>)],
    params: &HashMap<String, Shape>,
    map: &dyn Fn(&str) -> KeyTarget,
) -> (Vec<String>, Vec<String>) {
    let mut taken = BTreeSet::new();
    let mut homeless = Vec::new();
    for (key, shape) in keys {
        match map(key) {
            KeyTarget::Param(p) => match params.get(&p) {
                Some(s)
                    if s.as_slice() == shape.as_slice()
                        || (shape.len() == 4
                            && s.num_dims() == 2
                            && s.num_elements() == shape.iter().product::<usize>()) =>
                {
                    taken.insert(p);
                }
                Some(s) => homeless.push(format!(
                    "{key}: shape {shape:?} vs module {:?}",
                    s.as_slice()
                )),
                None => homeless.push(key.clone()),
            },
            KeyTarget::Ignore | KeyTarget::Other => {}
        }
    }
    let missing = params
        .keys()
        .filter(|p| !taken.contains(*p))
        .cloned()
        .collect();
    (missing, homeless)
}

fn assert_covered(
    what: &str,
    keys: &[(String, Vec<usize>)],
    params: HashMap<String, Shape>,
    map: &dyn Fn(&str) -> KeyTarget,
) {
    let (missing, homeless) = cover(keys, &params, map);
    assert!(
        missing.is_empty(),
        "{what}: {} params not covered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        homeless.is_empty(),
        "{what}: {} keys unused, e.g. {:?}",
        homeless.len(),
        &homeless[..homeless.len().min(5)]
    );
    assert!(!params.is_empty());
}

#[test]
fn full_size_diffusers_manifests_are_consumed_exactly() {
    let d = device();
    assert_covered(
        "text_encoder",
        &manifest("sd15-diffusers-text_encoder.json"),
        param_shapes(&ClipTextModel::<B>::new(&ClipConfig::default(), &d)),
        &weights::clip_key,
    );
    assert_covered(
        "unet",
        &manifest("sd15-diffusers-unet.json"),
        param_shapes(&UNet2DConditionModel::<B>::new(&UNetConfig::default(), &d)),
        &weights::unet_key,
    );
    assert_covered(
        "vae",
        &manifest("sd15-diffusers-vae.json"),
        param_shapes(&AutoencoderKL::<B>::new(&VaeConfig::default(), true, &d)),
        &weights::vae_key,
    );
}

#[test]
fn full_size_ldm_manifest_is_consumed_exactly() {
    let d = device();
    let keys = manifest("sd15-ldm.json");
    let (unet_cfg, vae_cfg) = (UNetConfig::default(), VaeConfig::default());
    assert_covered(
        "ldm clip",
        &keys,
        param_shapes(&ClipTextModel::<B>::new(&ClipConfig::default(), &d)),
        &weights::ldm_clip_key,
    );
    assert_covered(
        "ldm unet",
        &keys,
        param_shapes(&UNet2DConditionModel::<B>::new(&unet_cfg, &d)),
        &weights::ldm_unet_key(&unet_cfg),
    );
    assert_covered(
        "ldm vae",
        &keys,
        param_shapes(&AutoencoderKL::<B>::new(&vae_cfg, true, &d)),
        &weights::ldm_vae_key(&vae_cfg),
    );
    // Every key is claimed by a component or is a listed extra.
    let unet_map = weights::ldm_unet_key(&unet_cfg);
    let vae_map = weights::ldm_vae_key(&vae_cfg);
    let stray: Vec<_> = keys
        .iter()
        .filter(|(k, _)| {
            [weights::ldm_clip_key(k), unet_map(k), vae_map(k)]
                .iter()
                .all(|t| matches!(t, KeyTarget::Other))
        })
        .collect();
    assert!(stray.is_empty(), "unclaimed ldm keys: {stray:?}");
}

#[test]
fn tiny_fixtures_load_with_nothing_missing_or_unused() {
    for rel in ["", "sd15-tiny-fp16.safetensors", "sd15-tiny-fp16.ckpt"] {
        let path = sd_tiny().join(rel);
        if !path.exists() {
            continue;
        }
        let m = StableDiffusion::<B>::load(&path, true, &device()).expect("loads");
        let r = &m.parts.report;
        assert!(r.missing.is_empty(), "{rel}: missing {:?}", r.missing);
        assert!(r.unused.is_empty(), "{rel}: unused {:?}", r.unused);
        assert!(r.applied > 100, "{rel}: only {} tensors applied", r.applied);
        if !rel.is_empty() {
            // The ldm extras are reported as ignored, by name.
            assert!(
                r.ignored.iter().any(|k| k == "alphas_cumprod"),
                "{rel}: {:?}",
                r.ignored
            );
            assert!(r.ignored.iter().any(|k| k == "model_ema.num_updates"));
        }
    }
}

/// Needs `models/make_sd15_fixtures.py --full` (8 GB in `.cache/sd15-random`, never in CI).
#[test]
#[ignore]
fn full_size_random_checkpoints_load_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/sd15-random");
    for rel in [
        "",
        "sd15-random.safetensors",
        "sd15-random-fp16.safetensors",
    ] {
        let m = StableDiffusion::<B>::load(&root.join(rel), true, &device()).expect("loads");
        assert!(
            m.parts.report.is_clean(),
            "{rel}: {:?} {:?}",
            m.parts.report.missing,
            m.parts.report.unused
        );
    }
}
