//! Weight loading: every key of the real SD 1.5 layouts is consumed (manifests of the full-size
//! files in `models/manifests/`), the tiny fixtures load with nothing missing or unused, and bad
//! files give errors that name the file and the tensor.

mod common;

use std::collections::{BTreeSet, HashMap};

use burn::tensor::Shape;
use common::*;
use kiln::models::sd15::clip::ClipTextModel;
use kiln::models::sd15::config::{ClipConfig, SafetyCheckerConfig, UNetConfig, VaeConfig};
use kiln::models::sd15::safety_checker::StableDiffusionSafetyChecker;
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
fn full_size_safety_checker_manifest_is_consumed_exactly() {
    let params = || {
        param_shapes(&StableDiffusionSafetyChecker::<B>::new(
            &SafetyCheckerConfig::default(),
            &device(),
        ))
    };
    let keys = manifest("sd15-diffusers-safety_checker.json");
    assert_covered(
        "safety_checker",
        &keys,
        params(),
        &weights::safety_checker_key,
    );
    // The same tensors as transformers ≥ 5 writes them: `vision_model.*`, no position_ids.
    let v5: Vec<_> = keys
        .iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(k, s)| {
            (
                k.replace("vision_model.vision_model.", "vision_model."),
                s.clone(),
            )
        })
        .collect();
    assert_covered(
        "safety_checker (transformers 5 names)",
        &v5,
        params(),
        &weights::safety_checker_key,
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

/// A diffusers folder whose UNet is only the bf16 variant (`diffusion_pytorch_model.bf16.safetensors`,
/// as `save_pretrained(variant="bf16")` names it); the rest links to the tiny fixture.
fn bf16_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for part in [
        "text_encoder",
        "vae",
        "tokenizer",
        "scheduler",
        "model_index.json",
    ] {
        std::os::unix::fs::symlink(sd_tiny().join(part), dir.path().join(part)).unwrap();
    }
    std::fs::create_dir(dir.path().join("unet")).unwrap();
    for file in ["config.json", "diffusion_pytorch_model.bf16.safetensors"] {
        std::os::unix::fs::symlink(
            sd_tiny().join("unet").join(file),
            dir.path().join("unet").join(file),
        )
        .unwrap();
    }
    dir
}

fn unet_out(m: &StableDiffusion<B>) -> Vec<f32> {
    let (ss, sample) = reference("unet.safetensors", "sample");
    let (_, t) = reference("unet.safetensors", "timestep");
    let (cs, ctx) = reference("unet.safetensors", "encoder_hidden_states");
    values(m.parts.unet.forward(
        tensor::<4>(&ss, sample),
        t[0] as f64,
        &tensor::<3>(&cs, ctx),
    ))
}

#[test]
fn bf16_variant_loads_as_the_fp32_model_with_bf16_rounded_weights() {
    use kiln::weights::TensorFile;

    let bf16_dir = bf16_folder();
    let m =
        StableDiffusion::<B>::load(bf16_dir.path(), false, &device()).expect("bf16 folder loads");
    let r = &m.parts.report;
    assert!(r.is_clean(), "{:?} {:?}", r.missing, r.unused);
    assert!(
        r.files
            .iter()
            .any(|f| f.ends_with("unet/diffusion_pytorch_model.bf16.safetensors")),
        "the bf16 variant was not the file loaded: {:?}",
        r.files
    );

    // Next to the full-precision file the variant is only a fallback, as diffusers without `variant=`.
    let full = StableDiffusion::<B>::load(&sd_tiny(), false, &device()).unwrap();
    assert!(
        full.parts
            .report
            .files
            .iter()
            .any(|f| f.ends_with("unet/diffusion_pytorch_model.safetensors")),
        "{:?}",
        full.parts.report.files
    );

    // The file holds exactly the fp32 weights rounded to bf16 (nearest even, as torch's .to()).
    let bf16 =
        TensorFile::open(&sd_tiny().join("unet/diffusion_pytorch_model.bf16.safetensors")).unwrap();
    let fp32 =
        TensorFile::open(&sd_tiny().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(
        bf16.keys().collect::<Vec<_>>(),
        fp32.keys().collect::<Vec<_>>()
    );
    let mut rounded = Vec::new();
    let mut changed = 0usize;
    for key in fp32.keys() {
        assert_eq!(bf16.tensors[key].dtype, burn::tensor::DType::BF16, "{key}");
        let (shape, full) = fp32.read_f32(key).unwrap();
        let want: Vec<f32> = full
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        changed += full.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(bf16.read_f32(key).unwrap().1, want, "{key}");
        rounded.push((key.to_string(), shape, want));
    }
    assert!(
        changed > 1000,
        "bf16 rounding changed only {changed} weights"
    );

    // Running it equals running the fp32 model loaded from those rounded weights, bit for bit.
    let fp32_dir = bf16_folder();
    let unet = fp32_dir.path().join("unet");
    std::fs::remove_file(unet.join("diffusion_pytorch_model.bf16.safetensors")).unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = rounded
        .into_iter()
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(k, s, b)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap();
        (k.as_str(), view)
    });
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(unet.join("diffusion_pytorch_model.safetensors"), file).unwrap();
    let reference_model = StableDiffusion::<B>::load(fp32_dir.path(), false, &device()).unwrap();
    let got = unet_out(&m);
    assert_eq!(max_abs_diff(&got, &unet_out(&reference_model)), 0.0);

    // Against the fp32 weights themselves bf16's 8-bit mantissa shows: |out| ≤ 1.45 here and the
    // error is about 1e-2, i.e. a few bf16 ulps of the output.
    let (_, want) = reference("unet.safetensors", "out");
    let d = max_abs_diff(&got, &want);
    eprintln!("bf16 unet vs fp32 diffusers reference: max |diff| = {d:e}");
    assert!(d > 0.0 && d < 5e-2, "bf16 unet vs fp32: max |diff| = {d:e}");
}
