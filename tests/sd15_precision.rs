//! f16 compute (`--precision f16`): UNet and text encoder in f16, the VAE kept in f32
//! (`force_upcast`), checked against diffusers' fp32 run of the tiny model. Flex computes f16
//! on the CPU, so the GPU code path is exercised here without a GPU.

mod common;

use burn::tensor::DType;
use common::*;
use kiln::models::sd15::{GenerateRequest, StableDiffusion};
use kiln::schedulers::SchedulerKind;

const PROMPT: &str = "a photograph of an astronaut riding a horse";

/// f16 keeps ~3 significant digits; after 4 steps of a random-weight UNet the latents stay
/// within 1e-2 of fp32 relative to their scale (measured: see the test's stderr).
const F16_TOL: f32 = 1e-2;

fn run(dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let m = StableDiffusion::<B>::load_as(&sd_tiny(), false, &device(), dtype).expect("loads");
    assert_eq!(m.parts.unet.conv_in.weight.val().dtype(), dtype);
    assert_eq!(
        m.parts
            .text_encoder
            .text_model
            .final_layer_norm
            .weight
            .val()
            .dtype(),
        dtype
    );
    // SD 1.5's VAE config has force_upcast (the default): the VAE stays f32.
    assert_eq!(m.parts.vae.post_quant_conv.weight.val().dtype(), DType::F32);
    let (shape, noise) = reference("pipeline_ddim4.safetensors", "init_noise");
    let req = GenerateRequest {
        prompt: PROMPT.into(),
        steps: 4,
        guidance_scale: 7.5,
        scheduler: SchedulerKind::Ddim,
        width: shape[3] * 8,
        height: shape[2] * 8,
        init_latents: Some(noise),
        ..Default::default()
    };
    let out = m.generate(&req, &mut |_, _| true).expect("generation runs");
    assert_eq!(out.latents.dtype(), DType::F32, "pipeline tensors stay f32");
    (values(out.latents), values(out.images))
}

#[test]
fn f16_unet_and_clip_match_fp32_reference_within_f16_tolerance() {
    let (latents, image) = run(DType::F16);
    let (_, want) = reference("pipeline_ddim4.safetensors", "final_latents");
    assert_close_scaled("f16 final latents", &latents, &want, F16_TOL);
    let (_, want_img) = reference("pipeline_ddim4.safetensors", "image");
    assert_close_scaled("f16 image", &image, &want_img, F16_TOL);
    // Not a copy of the f32 path: f16 rounding must show.
    let (latents32, _) = run(DType::F32);
    assert!(
        max_abs_diff(&latents, &latents32) > 0.0,
        "f16 run equals f32"
    );
}
