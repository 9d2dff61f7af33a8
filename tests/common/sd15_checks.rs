//! The SD 1.5 parity checks against the committed diffusers/transformers references, generic
//! over the backend: `sd15_parity.rs` runs them on the CPU, `wgpu_parity.rs` on wgpu. Included
//! with `#[path]` by crates that also declare `mod common`.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use kiln::image_io::to_u8;
use kiln::models::sd15::{GenerateRequest, NoiseOverrides, StableDiffusion};
use kiln::schedulers::SchedulerKind;

use crate::common::{
    assert_close, assert_close_scaled, max_abs_diff, reference, sd_tiny, tensor_on, values,
};

pub const PROMPT: &str = "a photograph of an astronaut riding a horse";

pub fn model<B: Backend>(with_encoder: bool, device: &B::Device) -> StableDiffusion<B> {
    StableDiffusion::<B>::load(&sd_tiny(), with_encoder, device).expect("tiny model loads")
}

/// Token ids, then the prompt's and the empty prompt's embeddings.
pub fn text_encoder<B: Backend>(device: &B::Device, tol: f32) {
    let m = model::<B>(false, device);
    let ids = m.parts.tokenizer.encode(PROMPT).unwrap().ids;
    let (_, want_ids) = reference("text_encoder.safetensors", "prompt_ids");
    assert_eq!(ids.iter().map(|&i| i as f32).collect::<Vec<_>>(), want_ids);
    for (key, prompt) in [("prompt_embeds", PROMPT), ("uncond_embeds", "")] {
        let (_, want) = reference("text_encoder.safetensors", key);
        let got = values(m.encode_prompt(prompt, 1).unwrap());
        assert_close(key, &got, &want, tol);
    }
}

pub fn unet<B: Backend>(device: &B::Device, tol: f32) {
    let m = model::<B>(false, device);
    let (ss, sample) = reference("unet.safetensors", "sample");
    let (_, t) = reference("unet.safetensors", "timestep");
    let (cs, ctx) = reference("unet.safetensors", "encoder_hidden_states");
    let (_, want) = reference("unet.safetensors", "out");
    let out = m.parts.unet.forward(
        tensor_on::<B, 4>(&ss, sample, device),
        t[0] as f64,
        &tensor_on::<B, 3>(&cs, ctx, device),
    );
    assert_close("unet out", &values(out), &want, tol);
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
    let m = model::<B>(true, device);
    let (s, z) = reference("vae.safetensors", "decode_in");
    let (_, want) = reference("vae.safetensors", "decode_out");
    let got = values(m.parts.vae.decode(tensor_on::<B, 4>(&s, z, device)));
    assert_close("vae decode", &got, &want, tol);

    let (s, x) = reference("vae.safetensors", "encode_in");
    let (mean, logvar) = m
        .parts
        .vae
        .encode(tensor_on::<B, 4>(&s, x, device))
        .expect("encoder was loaded");
    let (_, want) = reference("vae.safetensors", "encode_mean");
    assert_close("vae encode mean", &values(mean), &want, tol);
    let (_, want) = reference("vae.safetensors", "encode_logvar");
    assert_close("vae encode logvar", &values(logvar), &want, tol);
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
    let m = model::<B>(false, device);
    let (shape, noise) = reference(file, "init_noise");
    assert_eq!(shape[0], n);
    let req = GenerateRequest {
        prompt: PROMPT.into(),
        negative_prompt: negative.into(),
        steps: 4,
        guidance_scale: 7.5,
        scheduler,
        width: shape[3] * 8,
        height: shape[2] * 8,
        n,
        seed: 0,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            ..Default::default()
        },
        clip_skip: 1,
        ..Default::default()
    };
    let out = m.generate(&req, &mut |_, _| true).expect("generation runs");
    let (_, want) = reference(file, "final_latents");
    assert_close_scaled(
        &format!("{file} final latents"),
        &values(out.latents),
        &want,
        tol,
    );
    let (_, want_img) = reference(file, "image");
    let got_img = values(out.images);
    assert_close_scaled(&format!("{file} image"), &got_img, &want_img, tol);
    // Pixels: the reference `pixels` are NHWC uint8; ours are derived from the NCHW image.
    let (ps, want_px) = reference(file, "pixels");
    let (h, w) = (ps[1], ps[2]);
    let mut worst = 0i32;
    for k in 0..n {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let got = to_u8(got_img[((k * 3 + c) * h + y) * w + x]) as i32;
                    let want = want_px[((k * h + y) * w + x) * 3 + c] as i32;
                    worst = worst.max((got - want).abs());
                }
            }
        }
    }
    assert!(worst <= 1, "{file}: pixels differ by {worst}/255");
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
    let (shape, noise) = reference("pipeline_ddim4.safetensors", "init_noise");
    let req = GenerateRequest {
        prompt: PROMPT.into(),
        steps: 4,
        guidance_scale: 7.5,
        scheduler: SchedulerKind::Ddim,
        width: shape[3] * 8,
        height: shape[2] * 8,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            ..Default::default()
        },
        ..Default::default()
    };
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
    let (_, want_img) = reference("pipeline_ddim4.safetensors", "image");
    assert_close_scaled("f16 image", &image, &want_img, tol);
    let (_, want) = reference("pipeline_ddim4.safetensors", "final_latents");
    assert_close_scaled("f16 final latents", &latents, &want, tol);
    let (latents32, _) = pipeline_in::<B>(device, DType::F32);
    assert!(
        crate::common::max_abs_diff(&latents, &latents32) > 0.0,
        "f16 run equals f32"
    );
}
