//! The SD 1.5 parity checks against the committed diffusers/transformers references, generic
//! over the backend: `sd15_parity.rs` runs them on the CPU, `wgpu_parity.rs` on wgpu. Included
//! with `#[path]` by crates that also declare `mod common`.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use kiln::doctor::sd15 as doctor;
use kiln::models::sd15::StableDiffusion;
use kiln::schedulers::SchedulerKind;

use crate::common::{
    assert_close, assert_close_scaled, assert_passes, fixtures, max_abs_diff, reference, sd_tiny,
    tensor_on, values,
};

pub const PROMPT: &str = doctor::PROMPT;

pub fn model<B: Backend>(with_encoder: bool, device: &B::Device) -> StableDiffusion<B> {
    StableDiffusion::<B>::load(&sd_tiny(), with_encoder, device).expect("tiny model loads")
}

/// Token ids, then the prompt's and the empty prompt's embeddings.
pub fn text_encoder<B: Backend>(device: &B::Device, tol: f32) {
    assert_passes(doctor::text_encoder(
        &fixtures(),
        &model::<B>(false, device),
        tol,
    ));
}

pub fn unet<B: Backend>(device: &B::Device, tol: f32) {
    assert_passes(doctor::unet(&fixtures(), &model::<B>(false, device), tol));
}

/// `forward_copies` (classifier-free guidance's shared prefix: the layers before the first
/// cross-attention run once) answers what the stacked batch answers, with contexts whose copies
/// differ.
pub fn unet_copies<B: Backend>(device: &B::Device, tol: f32) {
    let m = model::<B>(false, device);
    let (ss, sample) = reference("unet.safetensors", "sample");
    let (_, t) = reference("unet.safetensors", "timestep");
    let (cs, ctx) = reference("unet.safetensors", "encoder_hidden_states");
    let x = tensor_on::<B, 4>(&ss, sample, device);
    let ctx = tensor_on::<B, 3>(&cs, ctx, device);
    let contexts = Tensor::cat(vec![ctx.clone(), ctx.flip([0]) * 0.5], 0);
    let unet = &m.parts.unet;
    let t = t[0] as f64;
    let stacked = values(unet.forward(Tensor::cat(vec![x.clone(), x.clone()], 0), t, &contexts));
    let copies = values(unet.forward_copies(x, 2, t, &contexts));
    assert_close("unet copies vs stacked batch", &copies, &stacked, tol);
    let half = stacked.len() / 2;
    assert!(
        max_abs_diff(&stacked[..half], &stacked[half..]) > 1e-3,
        "the two contexts should give different predictions"
    );
}

pub fn vae_decode_and_encode<B: Backend>(device: &B::Device, tol: f32) {
    assert_passes(doctor::vae_decode_and_encode(
        &fixtures(),
        &model::<B>(true, device),
        tol,
    ));
}

/// Runs a 4-step pipeline from the reference's starting noise and checks the final latents,
/// the decoded image and its 8-bit pixels (within 1/255).
pub fn pipeline<B: Backend>(
    device: &B::Device,
    file: &str,
    scheduler: SchedulerKind,
    negative: &str,
    n: usize,
    tol: f32,
) {
    let checks = doctor::pipeline(
        &fixtures(),
        &model::<B>(false, device),
        file,
        scheduler,
        negative,
        n,
        tol,
    );
    assert_passes(checks);
}

/// The 4-step DDIM pipeline with UNet and text encoder computing in `dtype` (the VAE stays f32:
/// SD 1.5's `force_upcast`), from the reference's starting noise: (final latents, image).
pub fn pipeline_in<B: Backend>(device: &B::Device, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let m = StableDiffusion::<B>::load_as(&sd_tiny(), false, device, dtype).expect("loads");
    assert_eq!(m.parts.unet.conv_in.weight.val().dtype(), dtype);
    // Norms are in the activations' dtype: the weights' own, but f32 for bf16 on the CPU.
    let norm = &m.parts.text_encoder.text_model.final_layer_norm;
    assert_eq!(
        norm.weight.val().dtype(),
        kiln::nn::compute_dtype::<B>(dtype)
    );
    assert_eq!(m.parts.vae.post_quant_conv.weight.val().dtype(), DType::F32);
    let req = doctor::reference_request(&fixtures(), doctor::DDIM4, SchedulerKind::Ddim, "")
        .expect("the DDIM reference");
    let out = m.generate(&req, &mut |_, _| true).expect("generation runs");
    assert_eq!(out.latents.dtype(), DType::F32, "pipeline tensors stay f32");
    (values(out.latents), values(out.images))
}

/// [`pipeline_in`] bf16 (`--precision bf16`) against diffusers' fp32 run within `tol_fp32` of
/// its scale and against diffusers' bf16 run (UNet and text encoder in bf16) within `tol_bf16`;
/// the image against both as well.
pub fn bf16_pipeline<B: Backend>(device: &B::Device, tol_fp32: f32, tol_bf16: f32) {
    let (latents, image) = pipeline_in::<B>(device, DType::BF16);
    for (file, tol) in [
        ("pipeline_ddim4.safetensors", tol_fp32),
        ("pipeline_ddim4_bf16.safetensors", tol_bf16),
    ] {
        let (_, want) = reference(file, "final_latents");
        assert_close_scaled(
            &format!("bf16 final latents vs {file}"),
            &latents,
            &want,
            tol,
        );
        let (_, want_img) = reference(file, "image");
        assert_close_scaled(&format!("bf16 image vs {file}"), &image, &want_img, tol);
    }
}

/// [`pipeline_in`] f16 against diffusers' fp32 references within `tol` of their scale (the
/// image too), and not equal to the same run in f32 (f16 rounding must show).
pub fn f16_pipeline<B: Backend>(device: &B::Device, tol: f32) {
    let (latents, image) = pipeline_in::<B>(device, DType::F16);
    assert_passes(doctor::against_ddim4(
        &fixtures(),
        DType::F16,
        &latents,
        &image,
        tol,
    ));
    let (latents32, _) = pipeline_in::<B>(device, DType::F32);
    assert!(
        crate::common::max_abs_diff(&latents, &latents32) > 0.0,
        "f16 run equals f32"
    );
}
