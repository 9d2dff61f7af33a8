//! Bad input gives clear errors (never a panic): missing and truncated files, wrong-shape
//! tensors, unknown schedulers, sizes that are not multiples of 8.

mod common;

use std::path::Path;

use common::*;
use kiln::models::sd15::{GenerateRequest, NoiseOverrides, StableDiffusion};

/// The tiny SD folder without its own weights at the top level (kept: model_index.json).
fn copy_dir(from: &Path, to: &Path) {
    copy_tree(from, to, &|p| {
        p.parent() != Some(sd_tiny().as_path())
            || p.file_name() == Some("model_index.json".as_ref())
    });
}

fn load_err(path: &Path) -> String {
    match StableDiffusion::<B>::load(path, false, &device()) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_model_path_is_named() {
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&sd_tiny(), dir.path());
    let f = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
}

#[test]
fn wrong_shape_tensor_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&sd_tiny(), dir.path());
    let f = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
    let bad = vec![0u8; 4 * 7];
    for (name, view) in st.tensors() {
        if name == "conv_out.bias" {
            tensors.push((
                name,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![7], &bad)
                    .unwrap(),
            ));
        } else {
            tensors.push((name, view));
        }
    }
    std::fs::write(&f, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("conv_out.bias") && err.contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );
    assert!(err.contains("[7]"), "{err}");
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&sd_tiny(), dir.path());
    let f = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "decoder.conv_out.weight")
        .collect();
    std::fs::write(&f, safetensors::serialize(kept, None).unwrap()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("decoder.conv_out.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn bad_request_values_are_rejected() {
    let m = StableDiffusion::<B>::load(&sd_tiny(), false, &device()).unwrap();
    let ok = GenerateRequest {
        prompt: "x".into(),
        steps: 1,
        width: 64,
        height: 64,
        ..Default::default()
    };
    for (req, needle) in [
        (
            GenerateRequest {
                width: 60,
                ..ok.clone()
            },
            "multiples of 8",
        ),
        (
            GenerateRequest {
                height: 0,
                ..ok.clone()
            },
            "multiples of 8",
        ),
        (GenerateRequest { n: 0, ..ok.clone() }, "n must be"),
        (
            GenerateRequest {
                steps: 0,
                ..ok.clone()
            },
            "steps must be",
        ),
        (
            GenerateRequest {
                steps: 5000,
                ..ok.clone()
            },
            "steps must be",
        ),
        (
            GenerateRequest {
                clip_skip: 3,
                ..ok.clone()
            },
            "clip_skip",
        ),
        (
            GenerateRequest {
                noise: NoiseOverrides {
                    init_latents: Some(vec![0.0; 5]),
                    ..Default::default()
                },
                ..ok.clone()
            },
            "init latents",
        ),
    ] {
        let err = m
            .generate(&req, &mut |_, _| true)
            .err()
            .expect("rejected")
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}
