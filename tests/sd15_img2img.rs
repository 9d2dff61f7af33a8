//! img2img and inpainting (4-channel latent blending and the 9-channel inpainting UNet) against
//! diffusers' pipelines, with diffusers' VAE-sample and start noise injected; both mask
//! conventions.

mod common;

use common::*;
use kiln::image_io::mask::{self, MaskConvention};
use kiln::models::sd15::img2img;
use kiln::models::sd15::{GenerateRequest, NoiseOverrides, StableDiffusion};
use kiln::schedulers::SchedulerKind;

const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn refs(name: &str) -> std::path::PathBuf {
    sd_tiny().join("refs").join(name)
}

fn open(name: &str) -> image::DynamicImage {
    image::open(refs(name)).expect("fixture image")
}

fn request(
    cond: img2img::ImageCondition,
    strength: f64,
    noise: Vec<f32>,
    vae_noise: Vec<Vec<f32>>,
) -> GenerateRequest {
    GenerateRequest {
        prompt: PROMPT.into(),
        steps: 4,
        scheduler: SchedulerKind::Ddim,
        width: 96,
        height: 128,
        condition: Some(cond),
        strength,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            vae_noise: Some(vae_noise),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn check(m: &StableDiffusion<B>, req: &GenerateRequest, file: &str, prefix: &str) {
    let out = m.generate(req, &mut |_, _| true).expect("runs");
    let (_, want) = reference(file, &format!("{prefix}final_latents"));
    assert_close_scaled(
        &format!("{file} {prefix}final latents"),
        &values(out.latents),
        &want,
        1e-4,
    );
    let (_, want) = reference(file, &format!("{prefix}image"));
    let got = values(out.images);
    assert_close_scaled(&format!("{file} {prefix}image"), &got, &want, 1e-4);
    let (_, px) = reference(file, &format!("{prefix}pixels"));
    let (h, w) = (128, 96);
    let worst = (0..h * w * 3)
        .map(|i| {
            let (y, x, c) = (i / (w * 3), (i / 3) % w, i % 3);
            (kiln::image_io::to_u8(got[(c * h + y) * w + x]) as i32 - px[i] as i32).abs()
        })
        .max()
        .unwrap_or(0);
    assert!(worst <= 1, "{file} {prefix}: pixels differ by {worst}/255");
}

#[test]
fn img2img_matches_diffusers_at_two_strengths_and_with_the_mean() {
    let m = StableDiffusion::<B>::load(&sd_tiny(), true, &device()).unwrap();
    let input = open("img2img_input.png");
    let cond = img2img::prepare(&input, None, 96, 128).unwrap();
    let (_, want) = reference("img2img.safetensors", "init_image");
    assert_close(
        "init image tensor",
        &values(img2img::image_tensor::<B>(&cond.image, &device())),
        &want,
        1e-6,
    );
    for (prefix, strength, sample) in [
        ("s075.", 0.75, true),
        ("s050.", 0.5, true),
        ("s075_mean.", 0.75, false),
    ] {
        let (_, noise) = reference("img2img.safetensors", &format!("{prefix}noise"));
        let (_, z) = reference("img2img.safetensors", &format!("{prefix}vae_sample_noise"));
        let req = GenerateRequest {
            sample_vae: sample,
            ..request(cond.clone(), strength, noise, vec![z])
        };
        check(&m, &req, "img2img.safetensors", prefix);
    }
}

#[test]
fn inpainting_with_the_base_unet_matches_diffusers() {
    let m = StableDiffusion::<B>::load(&sd_tiny(), true, &device()).unwrap();
    let mask = mask::mask_from_image(&open("inpaint_mask.png"), MaskConvention::White);
    let cond = img2img::prepare(&open("img2img_input.png"), Some(&mask), 96, 128).unwrap();
    let (_, noise) = reference("inpaint_base.safetensors", "noise");
    let (_, z) = reference("inpaint_base.safetensors", "image_vae_noise");
    check(
        &m,
        &request(cond, 1.0, noise, vec![z]),
        "inpaint_base.safetensors",
        "",
    );
}

#[test]
fn inpainting_with_the_9_channel_unet_matches_diffusers() {
    // The fixture keeps only the 9-channel UNet; the rest comes from the base tiny model.
    let dir = tempfile::tempdir().unwrap();
    let inpaint = fixture("sd15-tiny-inpaint");
    for (part, from) in [
        ("unet", &inpaint),
        ("scheduler", &inpaint),
        ("text_encoder", &sd_tiny()),
        ("vae", &sd_tiny()),
        ("tokenizer", &sd_tiny()),
    ] {
        std::os::unix::fs::symlink(from.join(part), dir.path().join(part)).unwrap();
    }
    let m = StableDiffusion::<B>::load(dir.path(), true, &device()).unwrap();
    assert_eq!(m.parts.unet_config.in_channels, 9);
    let mask = mask::mask_from_image(&open("inpaint_mask.png"), MaskConvention::White);
    let cond = img2img::prepare(&open("img2img_input.png"), Some(&mask), 96, 128).unwrap();
    let (_, noise) = reference("inpaint_9ch.safetensors", "noise");
    let (_, z) = reference("inpaint_9ch.safetensors", "masked_image_vae_noise");
    check(
        &m,
        &request(cond.clone(), 1.0, noise, vec![z]),
        "inpaint_9ch.safetensors",
        "",
    );

    // The inpainting UNet refuses text-to-image and an image without a mask.
    let t2i = GenerateRequest {
        prompt: "x".into(),
        steps: 1,
        width: 32,
        height: 32,
        ..Default::default()
    };
    assert!(
        m.generate(&t2i, &mut |_, _| true)
            .err()
            .unwrap()
            .to_string()
            .contains("9-channel")
    );
}

#[test]
fn both_mask_conventions_and_the_image_alpha_give_the_same_mask() {
    let white = mask::mask_from_image(&open("inpaint_mask.png"), MaskConvention::White);
    let rgba = open("inpaint_mask_rgba.png");
    assert_eq!(
        mask::mask_from_image(&rgba, MaskConvention::Transparent),
        white
    );
    assert_eq!(mask::mask_from_image(&rgba, MaskConvention::Auto), white);
    // OpenAI style: no separate mask, the image's own transparent pixels are the edit area.
    assert_eq!(
        mask::mask_from_transparency(&rgba).expect("has transparent pixels"),
        white
    );
    // Reading the RGBA file by luminance is the classic inverted/wrong-mask bug: it differs.
    assert_ne!(mask::mask_from_image(&rgba, MaskConvention::White), white);
    // The latent mask samples the top-left pixel of each 8×8 block.
    let (_, want) = reference("inpaint_base.safetensors", "mask_latent");
    let full = img2img::mask_tensor::<B>(&white, &device());
    assert_eq!(values(img2img::latent_mask(full, 16, 12)), want);
}

#[test]
fn strength_and_mask_errors_are_clear() {
    let m = StableDiffusion::<B>::load(&sd_tiny(), true, &device()).unwrap();
    let cond = img2img::prepare(&open("img2img_input.png"), None, 96, 128).unwrap();
    let base = GenerateRequest {
        prompt: "x".into(),
        steps: 4,
        width: 96,
        height: 128,
        condition: Some(cond),
        ..Default::default()
    };
    for (req, needle) in [
        (
            GenerateRequest {
                strength: 0.0,
                ..base.clone()
            },
            "strength must be",
        ),
        (
            GenerateRequest {
                strength: 1.5,
                ..base.clone()
            },
            "strength must be",
        ),
        (
            GenerateRequest {
                strength: 0.1,
                ..base.clone()
            },
            "leaves no denoising step",
        ),
        (
            GenerateRequest {
                width: 64,
                ..base.clone()
            },
            "must be 64x128",
        ),
    ] {
        let err = m
            .generate(&req, &mut |_, _| true)
            .err()
            .expect("rejected")
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
    let no_encoder = StableDiffusion::<B>::load(&sd_tiny(), false, &device()).unwrap();
    let err = no_encoder
        .generate(
            &GenerateRequest {
                strength: 0.5,
                ..base
            },
            &mut |_, _| true,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("without the VAE encoder"), "{err}");
}
