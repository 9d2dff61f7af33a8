//! SD 1.5 against diffusers/transformers on the tiny model (`models/make_sd15_fixtures.py`):
//! CLIP, the UNet, the VAE both ways and a 4-step pipeline in f32; the pipeline in f16.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::{Check, F16_TOL, F32_TOL, Fixtures, Measure, Recorder, values};
use crate::error::{Error, Result};
use crate::image_io::to_u8;
use crate::models::sd15::{GenerateRequest, NoiseOverrides, StableDiffusion};
use crate::schedulers::SchedulerKind;

/// The prompt of every SD reference.
pub const PROMPT: &str = "a photograph of an astronaut riding a horse";
/// The 4-step DDIM pipeline reference (diffusers' fp32 run).
pub const DDIM4: &str = "pipeline_ddim4.safetensors";

const FAMILY: &str = "sd15";

/// What `kiln doctor` checks in `dtype`: every component and the DDIM pipeline in f32, the
/// f16 pipeline in f16.
pub fn all<B: Backend>(fx: &Fixtures, device: &B::Device, dtype: DType) -> Result<Vec<Check>> {
    match dtype {
        DType::F32 => {
            // One load (with the VAE encoder) serves every check.
            let m = StableDiffusion::<B>::load(&fx.sd15(), true, device)?;
            let mut checks = text_encoder(fx, &m, F32_TOL)?;
            checks.extend(unet(fx, &m, F32_TOL)?);
            checks.extend(vae_decode_and_encode(fx, &m, F32_TOL)?);
            let ddim = SchedulerKind::Ddim;
            checks.extend(pipeline(fx, &m, DDIM4, ddim, "", 1, F32_TOL)?);
            Ok(checks)
        }
        DType::F16 => f16_pipeline::<B>(fx, device, F16_TOL),
        other => Err(Error::invalid(format!("no SD 1.5 checks in {other:?}"))),
    }
}

fn tensor<B: Backend, const D: usize>(
    shape: &[usize],
    v: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, shape.to_vec()), device)
}

/// Token ids, then the prompt's and the empty prompt's embeddings.
pub fn text_encoder<B: Backend>(
    fx: &Fixtures,
    m: &StableDiffusion<B>,
    tol: f32,
) -> Result<Vec<Check>> {
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let file = "text_encoder.safetensors";
    let ids: Vec<f32> = m
        .parts
        .tokenizer
        .encode(PROMPT)?
        .ids
        .iter()
        .map(|&i| i as f32)
        .collect();
    rec.exact("clip token ids", &ids, &fx.sd15_ref(file, "prompt_ids")?.1);
    for (key, prompt) in [("prompt_embeds", PROMPT), ("uncond_embeds", "")] {
        let got = values(m.encode_prompt(prompt, 1)?)?;
        rec.close(
            format!("clip {key}"),
            Measure::MaxAbsDiff,
            &got,
            &fx.sd15_ref(file, key)?.1,
            tol,
        );
    }
    Ok(rec.checks)
}

pub fn unet<B: Backend>(fx: &Fixtures, m: &StableDiffusion<B>, tol: f32) -> Result<Vec<Check>> {
    let device = m.device();
    let file = "unet.safetensors";
    let (ss, sample) = fx.sd15_ref(file, "sample")?;
    let (_, t) = fx.sd15_ref(file, "timestep")?;
    let (cs, ctx) = fx.sd15_ref(file, "encoder_hidden_states")?;
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let out = m.parts.unet.forward(
        tensor::<B, 4>(&ss, sample, device),
        f64::from(t[0]),
        &tensor::<B, 3>(&cs, ctx, device),
    );
    rec.close(
        "unet",
        Measure::MaxAbsDiff,
        &values(out)?,
        &fx.sd15_ref(file, "out")?.1,
        tol,
    );
    Ok(rec.checks)
}

/// `m` must be loaded with its VAE encoder.
pub fn vae_decode_and_encode<B: Backend>(
    fx: &Fixtures,
    m: &StableDiffusion<B>,
    tol: f32,
) -> Result<Vec<Check>> {
    let device = m.device();
    let file = "vae.safetensors";
    let (s, z) = fx.sd15_ref(file, "decode_in")?;
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let got = values(m.parts.vae.decode(tensor::<B, 4>(&s, z, device)))?;
    rec.close(
        "vae decode",
        Measure::MaxAbsDiff,
        &got,
        &fx.sd15_ref(file, "decode_out")?.1,
        tol,
    );
    let (s, x) = fx.sd15_ref(file, "encode_in")?;
    let (mean, logvar) = m
        .parts
        .vae
        .encode(tensor::<B, 4>(&s, x, device))
        .ok_or_else(|| Error::invalid("the VAE encoder did not load"))?;
    for (key, got) in [("encode_mean", mean), ("encode_logvar", logvar)] {
        rec.close(
            format!("vae {key}"),
            Measure::MaxAbsDiff,
            &values(got)?,
            &fx.sd15_ref(file, key)?.1,
            tol,
        );
    }
    Ok(rec.checks)
}

/// The request of a pipeline reference `file`: 4 steps, CFG 7.5, its starting noise.
pub fn reference_request(
    fx: &Fixtures,
    file: &str,
    scheduler: SchedulerKind,
    negative: &str,
) -> Result<GenerateRequest> {
    let (shape, noise) = fx.sd15_ref(file, "init_noise")?;
    Ok(GenerateRequest {
        prompt: PROMPT.into(),
        negative_prompt: negative.into(),
        steps: 4,
        guidance_scale: 7.5,
        scheduler,
        width: shape[3] * 8,
        height: shape[2] * 8,
        n: shape[0],
        seed: 0,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            ..Default::default()
        },
        clip_skip: 1,
        ..Default::default()
    })
}

/// A 4-step pipeline from the reference's starting noise: the final latents and the decoded
/// image (relative to their scale), and the 8-bit pixels (within 1/255). `n` images.
pub fn pipeline<B: Backend>(
    fx: &Fixtures,
    m: &StableDiffusion<B>,
    file: &str,
    scheduler: SchedulerKind,
    negative: &str,
    n: usize,
    tol: f32,
) -> Result<Vec<Check>> {
    let req = reference_request(fx, file, scheduler, negative)?;
    if req.n != n {
        return Err(Error::invalid(format!(
            "{file} holds {} images, not {n}",
            req.n
        )));
    }
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let out = m.generate(&req, &mut |_, _| true)?;
    let name = file.trim_end_matches(".safetensors");
    let latents = values(out.latents)?;
    rec.close(
        format!("{name} latents"),
        Measure::RelativeDiff,
        &latents,
        &fx.sd15_ref(file, "final_latents")?.1,
        tol,
    );
    let image = values(out.images)?;
    rec.close(
        format!("{name} image"),
        Measure::RelativeDiff,
        &image,
        &fx.sd15_ref(file, "image")?.1,
        tol,
    );
    // The reference pixels are NHWC; the image is NCHW.
    let (ps, want) = fx.sd15_ref(file, "pixels")?;
    let (h, w) = (ps[1], ps[2]);
    let mut got = Vec::with_capacity(want.len());
    for k in 0..n {
        for y in 0..h {
            for x in 0..w {
                got.extend((0..3).map(|c| {
                    image
                        .get(((k * 3 + c) * h + y) * w + x)
                        .map_or(0, |&v| to_u8(v))
                }));
            }
        }
    }
    let want: Vec<u8> = want.iter().map(|&v| v as u8).collect();
    rec.pixels(format!("{name} pixels"), &got, &want, 1.0);
    Ok(rec.checks)
}

/// The DDIM reference's pipeline with UNet and text encoder loaded in `dtype` (the VAE stays
/// f32, SD 1.5's `force_upcast`): (final latents, image).
pub fn pipeline_in<B: Backend>(
    fx: &Fixtures,
    device: &B::Device,
    dtype: DType,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let m = StableDiffusion::<B>::load_as(&fx.sd15(), false, device, dtype)?;
    let req = reference_request(fx, DDIM4, SchedulerKind::Ddim, "")?;
    let out = m.generate(&req, &mut |_, _| true)?;
    Ok((values(out.latents)?, values(out.images)?))
}

/// The f16 pipeline against diffusers' fp32 references, within `tol` of their scale.
pub fn f16_pipeline<B: Backend>(fx: &Fixtures, device: &B::Device, tol: f32) -> Result<Vec<Check>> {
    let t0 = std::time::Instant::now();
    let (latents, image) = pipeline_in::<B>(fx, device, DType::F16)?;
    let mut checks = against_ddim4(fx, DType::F16, &latents, &image, tol)?;
    checks[0].seconds = t0.elapsed().as_secs_f64();
    Ok(checks)
}

/// A DDIM run's final latents and image (computed in `dtype`) against diffusers' fp32
/// references, within `tol` of their scale.
pub fn against_ddim4(
    fx: &Fixtures,
    dtype: DType,
    latents: &[f32],
    image: &[f32],
    tol: f32,
) -> Result<Vec<Check>> {
    let mut rec = Recorder::new(FAMILY, dtype);
    let name = DDIM4.trim_end_matches(".safetensors");
    rec.close(
        format!("{name} latents"),
        Measure::RelativeDiff,
        latents,
        &fx.sd15_ref(DDIM4, "final_latents")?.1,
        tol,
    );
    rec.close(
        format!("{name} image"),
        Measure::RelativeDiff,
        image,
        &fx.sd15_ref(DDIM4, "image")?.1,
        tol,
    );
    Ok(rec.checks)
}
