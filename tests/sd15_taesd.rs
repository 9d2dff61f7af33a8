//! TAESD (diffusers `AutoencoderTiny`) against diffusers on a tiny random TAESD
//! (`models/make_sd15_vae_fixtures.py`): decode, encode, the SD pipeline decoding with it, the
//! previews, and the errors of a missing or wrong TAESD.
//!
//! Tolerance: max |diff| ≤ 1e-4 relative to max(1, max |reference|), fp32 on the CPU. TAESD is
//! about 25 plain convolutions deep; f32 reassociation in the convolution kernels gives ~1e-6.

mod common;
#[path = "common/sd15_checks.rs"]
mod sd15_checks;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use kiln::models::sd15::autoencoder_tiny::taesd_key;
use kiln::models::sd15::config::TaesdConfig;
use kiln::models::sd15::{
    AutoencoderTiny, GenerateRequest, NoiseOverrides, StableDiffusion, VaeChoice, latent_preview,
};
use kiln::schedulers::SchedulerKind;
use kiln::weights::{KeyTarget, TensorFile};

const TOL: f32 = 1e-4;

fn taesd_dir() -> PathBuf {
    fixture("taesd-tiny")
}

fn taesd_ref(key: &str) -> (Vec<usize>, Vec<f32>) {
    let f = TensorFile::open(&taesd_dir().join("refs.safetensors")).expect("TAESD refs");
    f.read_f32(key).expect("reference tensor")
}

fn taesd() -> AutoencoderTiny<B> {
    AutoencoderTiny::load(&taesd_dir(), &device(), DType::F32).expect("tiny TAESD loads")
}

fn with_taesd() -> StableDiffusion<B> {
    let mut m = sd15_checks::model::<B>(false, &device());
    m.set_taesd(Some(taesd()));
    m
}

#[test]
fn taesd_decode_and_encode_match_diffusers() {
    let t = taesd();
    let (s, z) = taesd_ref("decode_in");
    let (_, want) = taesd_ref("decode_out");
    let image = t.decode(tensor(&s, z));
    assert_eq!(image.dims(), [1, 3, 48, 80]);
    let got = values(image);
    assert_close_scaled("TAESD decode", &got, &want, TOL);

    // The encoder's input is the decoder's reference output.
    let (_, want) = taesd_ref("encode_out");
    let got = values(t.encode(tensor(&[1, 3, 48, 80], want_image())));
    assert_close_scaled("TAESD encode", &got, &want, TOL);
}

fn want_image() -> Vec<f32> {
    taesd_ref("decode_out").1
}

/// diffusers' `StableDiffusionPipeline` with `vae=AutoencoderTiny` divides the latents by
/// TAESD's own scaling factor (1.0), not SD's 0.18215; the pixels are `(x / 2 + 0.5)` clamped.
#[test]
fn pipeline_with_taesd_matches_diffusers() {
    let m = with_taesd();
    let (shape, noise) = reference("pipeline_ddim4.safetensors", "init_noise");
    let req = GenerateRequest {
        prompt: sd15_checks::PROMPT.into(),
        steps: 4,
        guidance_scale: 7.5,
        scheduler: SchedulerKind::Ddim,
        width: shape[3] * 8,
        height: shape[2] * 8,
        clip_skip: 1,
        vae: VaeChoice::Tiny,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = m.generate(&req, &mut |_, _| true).expect("generates");
    let got: Vec<f32> = values(out.images)
        .iter()
        .map(|x| (x / 2.0 + 0.5).clamp(0.0, 1.0))
        .collect();
    let (_, want) = taesd_ref("pipeline_image");
    assert_close_scaled("pipeline image with TAESD", &got, &want, TOL);
}

#[test]
fn taesd_without_taesd_loaded_is_a_clear_error() {
    let m = sd15_checks::model::<B>(false, &device());
    let req = GenerateRequest {
        prompt: "x".into(),
        steps: 1,
        width: 64,
        height: 64,
        vae: VaeChoice::Tiny,
        ..Default::default()
    };
    let err = m.validate(&req).expect_err("no TAESD").to_string();
    assert!(err.contains("kiln download taesd"), "{err}");
    let z = tensor::<4>(&[1, 4, 8, 8], vec![0.0; 256]);
    let err = m.decode_with(z, VaeChoice::Tiny, Default::default());
    assert!(err.is_err());
}

#[test]
fn previews_use_taesd_when_loaded() {
    let (s, z) = taesd_ref("decode_in");
    let latents = tensor::<4>(&s, z);
    let t = taesd();
    let want = kiln::image_io::to_rgb8(t.decode(latents.clone())).unwrap();
    let m = with_taesd();
    let got = m.preview(&latents, 0).expect("TAESD preview");
    assert_eq!((got.width(), got.height()), (80, 48));
    assert!(
        got == want[0],
        "the preview is TAESD's decode of the latents"
    );

    let plain = sd15_checks::model::<B>(false, &device());
    let cheap = plain.preview(&latents, 0).expect("latent preview");
    assert!(cheap == latent_preview(&latents, 0, 8).unwrap());
    assert_eq!((cheap.width(), cheap.height()), (80, 48));
    assert!(m.preview(&latents, 1).is_err(), "image 1 of a batch of 1");
}

#[test]
fn taesd_keys_map_onto_the_layers() {
    let path = |k: &str| match taesd_key(k) {
        KeyTarget::Param(p) => p,
        _ => panic!("{k} is TAESD's"),
    };
    assert_eq!(
        path("decoder.layers.14.conv.4.weight"),
        "decoder.layers.14.block.conv.2.weight"
    );
    assert_eq!(
        path("encoder.layers.0.bias"),
        "encoder.layers.0.conv2d.bias"
    );
    // An odd index inside a block is a ReLU: no such parameter, so the load reports it.
    assert_eq!(
        path("decoder.layers.2.conv.1.weight"),
        "decoder.layers.2.conv.1.weight"
    );
    assert_eq!("taesd".parse::<VaeChoice>().unwrap(), VaeChoice::Tiny);
    assert_eq!("Full".parse::<VaeChoice>().unwrap(), VaeChoice::Full);
    assert!("big".parse::<VaeChoice>().is_err());
}

/// The published config (`madebyollin/taesd`, = the defaults) builds diffusers' parameter count.
#[test]
fn published_config_has_taesd_size() {
    use burn::module::Module;
    let t = AutoencoderTiny::<B>::new(&TaesdConfig::default(), &device());
    assert_eq!(t.num_params(), 2_445_063);
    assert_eq!(t.decoder.num_params(), 1_222_531);
}

fn load_err(dir: &Path) -> String {
    match AutoencoderTiny::<B>::load(dir, &device(), DType::F32) {
        Ok(_) => panic!("{} loaded as TAESD", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_taesd_folders_give_errors_naming_file_and_key() {
    let err = load_err(Path::new("/nonexistent/taesd"));
    assert!(
        err.contains("/nonexistent/taesd") && err.contains("kiln download taesd"),
        "{err}"
    );

    // The SD VAE's folder is not a TAESD: its config says so, and so do its weights.
    let err = load_err(&sd_tiny().join("vae"));
    assert!(err.contains("config.json") && err.contains("silu"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    std::fs::copy(
        sd_tiny().join("vae/diffusion_pytorch_model.safetensors"),
        &weights,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(&weights.display().to_string()), "{err}");
    assert!(err.contains("decoder.layers.0.conv2d.weight"), "{err}");

    // A TAESD whose config asks for more blocks than the file has.
    std::fs::copy(
        taesd_dir().join("diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(taesd_dir().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["num_decoder_blocks"] = serde_json::json!([3, 2, 2, 1]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("decoder.layers"), "{err}");

    // Unequal widths cannot run (diffusers builds every conv c -> c).
    cfg["num_decoder_blocks"] = serde_json::json!([2, 2, 2, 1]);
    cfg["decoder_block_out_channels"] = serde_json::json!([16, 8, 8, 8]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("decoder_block_out_channels"),
        "{err}"
    );
}
