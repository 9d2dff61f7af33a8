//! Text-to-image with classifier-free guidance, as diffusers' `StableDiffusionPipeline`.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use tracing::{debug, info};

use super::loader::{Components, Sd15Layout, load};
use super::lora::{DEFAULT_CACHE_BYTES, LoraCache};
use super::prompt::{PromptSyntax, PromptVocab};
use super::request::GenerateRequest;
use super::textual_inversion::Embeddings;
use crate::error::{Error, Result};
use crate::noise;
use crate::schedulers::SchedulerOptions;

pub struct GenerateOutput<B: Backend> {
    /// Decoded images `[n, 3, H, W]`, about [-1, 1].
    pub images: Tensor<B, 4>,
    /// Final denoised latents `[n, C, H/8, W/8]`, before the VAE scaling.
    pub latents: Tensor<B, 4>,
    pub seeds: Vec<u64>,
}

/// A loaded SD 1.5 model.
pub struct StableDiffusion<B: Backend> {
    pub parts: Components<B>,
    /// Textual-inversion embeddings, indexed for the tokenizer (see `prompt::encode`).
    pub(super) prompt_vocab: PromptVocab,
    device: B::Device,
    pub(super) lora_cache: LoraCache<B>,
}

impl<B: Backend> StableDiffusion<B> {
    pub fn load(path: &std::path::Path, with_encoder: bool, device: &B::Device) -> Result<Self> {
        Self::load_as(path, with_encoder, device, DType::F32)
    }

    /// Loads with UNet and text encoder computing in `dtype` (see [`crate::precision`]).
    pub fn load_as(
        path: &std::path::Path,
        with_encoder: bool,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let layout = Sd15Layout::detect(path)?;
        let parts = load(&layout, with_encoder, device, dtype)?;
        info!(path = %path.display(), ?dtype, secs = t0.elapsed().as_secs_f32(), "SD 1.5 loaded");
        Ok(Self {
            prompt_vocab: PromptVocab::new(&parts.tokenizer, Embeddings::default())?,
            parts,
            device: device.clone(),
            lora_cache: LoraCache::new(DEFAULT_CACHE_BYTES),
        })
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Latent channels and the pixel/latent ratio.
    pub fn latent_shape(&self, width: usize, height: usize) -> [usize; 3] {
        let f = self.parts.vae_config.scale_factor();
        [self.parts.unet_config.out_channels, height / f, width / f]
    }

    /// `text` in plain syntax → `[1, 77·k, D]` hidden states; up to 75 tokens this is
    /// diffusers' `encode_prompt` (one chunk, `[1, 77, D]`).
    pub fn encode_prompt(&self, text: &str, clip_skip: usize) -> Result<Tensor<B, 3>> {
        self.encode_prompt_as(text, PromptSyntax::Plain, clip_skip)
    }

    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let f = self.parts.vae_config.scale_factor();
        if req.width == 0 || req.height == 0 || req.width % f != 0 || req.height % f != 0 {
            return Err(Error::invalid(format!(
                "width and height must be positive multiples of {f}, got {}x{}",
                req.width, req.height
            )));
        }
        self.check_vae(req.vae)?;
        if req.n == 0 {
            return Err(Error::invalid("n must be at least 1"));
        }
        if !(1..=2).contains(&req.clip_skip) {
            return Err(Error::invalid(format!(
                "clip_skip must be 1 or 2, got {}",
                req.clip_skip
            )));
        }
        if !req.guidance_scale.is_finite() {
            return Err(Error::invalid("guidance_scale must be a finite number"));
        }
        let inpaint_unet =
            self.parts.unet_config.in_channels != self.parts.unet_config.out_channels;
        match &req.condition {
            None if inpaint_unet => {
                return Err(Error::invalid(
                    "this is an inpainting checkpoint (9-channel UNet): it needs an image and a mask",
                ));
            }
            Some(c) if inpaint_unet && c.mask.is_none() => {
                return Err(Error::invalid(
                    "this is an inpainting checkpoint (9-channel UNet): it needs a mask",
                ));
            }
            Some(c) => {
                if (c.image.width() as usize, c.image.height() as usize) != (req.width, req.height)
                    || c.mask.as_ref().is_some_and(|m| {
                        (m.width() as usize, m.height() as usize) != (req.width, req.height)
                    })
                {
                    return Err(Error::invalid(format!(
                        "the init image and mask must be {}x{} (resize them first)",
                        req.width, req.height
                    )));
                }
                if !(req.strength > 0.0 && req.strength <= 1.0) {
                    return Err(Error::invalid(format!(
                        "strength must be in (0, 1], got {}",
                        req.strength
                    )));
                }
                if ((req.steps as f64 * req.strength) as usize) < 1 {
                    return Err(Error::invalid(format!(
                        "strength {} × steps {} leaves no denoising step",
                        req.strength, req.steps
                    )));
                }
            }
            None => {}
        }
        if let Some(l) = &req.noise.init_latents {
            let [c, h, w] = self.latent_shape(req.width, req.height);
            if l.len() != req.n * c * h * w {
                return Err(Error::invalid(format!(
                    "init latents have {} values; [n={}, {c}, {h}, {w}] needs {}",
                    l.len(),
                    req.n,
                    req.n * c * h * w
                )));
            }
        }
        if let Some(noise) = &req.noise.step_noise {
            let [c, h, w] = self.latent_shape(req.width, req.height);
            if let Some(bad) = noise.iter().find(|v| v.len() != req.n * c * h * w) {
                return Err(Error::invalid(format!(
                    "step noise has {} values; [n={}, {c}, {h}, {w}] needs {}",
                    bad.len(),
                    req.n,
                    req.n * c * h * w
                )));
            }
        }
        Ok(())
    }

    /// Denoises from seeded noise (or `init_latents`) and decodes. `progress(step, total)` is
    /// called after every step, and again with `step == total` before each image (or VAE tile)
    /// is decoded; returning `false` cancels.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<GenerateOutput<B>> {
        self.generate_observed(req, &mut |step, total, _| progress(step, total))
    }

    /// [`generate`](Self::generate) whose callback also sees the latents after each step (for
    /// streaming previews, see [`preview`](Self::preview)).
    pub fn generate_observed(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(usize, usize, &Tensor<B, 4>) -> bool,
    ) -> Result<GenerateOutput<B>> {
        self.validate(req)?;
        let n = req.n;
        let [c, h, w] = self.latent_shape(req.width, req.height);
        let opts = SchedulerOptions { eta: req.eta };
        let mut scheduler =
            req.scheduler
                .build_with::<B>(&self.parts.scheduler_config, req.steps, &opts)?;

        // The request's LoRAs, merged into a copy; the base model is never changed.
        let variant = self.lora_variant(&req.loras)?;
        let (text_encoder, unet) = match &variant {
            Some(v) => (&v.text_encoder, &v.unet),
            None => (&self.parts.text_encoder, &self.parts.unet),
        };

        let t0 = Instant::now();
        let guided = req.guidance_scale > 1.0;
        let context = if guided {
            let (cond, uncond) = self.encode_pair_by(
                text_encoder,
                &req.prompt,
                &req.negative_prompt,
                req.prompt_syntax,
                req.clip_skip,
            )?;
            Tensor::cat(vec![uncond.repeat_dim(0, n), cond.repeat_dim(0, n)], 0)
        } else {
            self.encode_prompt_by(text_encoder, &req.prompt, req.prompt_syntax, req.clip_skip)?
                .repeat_dim(0, n)
        };
        info!(secs = t0.elapsed().as_secs_f32(), "text encoded");
        let context = unet.text_context(&context);

        let mut rng = noise::BatchNoise::new(req.seed, n);
        let prepared = self.prepare_latents(req, scheduler.as_ref(), &mut rng)?;
        let (mut latents, begin, blend, extra) = (
            prepared.latents,
            prepared.begin,
            prepared.blend,
            prepared.extra_channels,
        );
        let device = self.device.clone();
        let mut given = req.noise.step_noise.clone().unwrap_or_default().into_iter();
        let mut step_noise = move || {
            let v = given.next().unwrap_or_else(|| rng.draw(c * h * w));
            Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), &device)
        };

        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len();
        let t_loop = Instant::now();
        for (i, &t) in timesteps.iter().enumerate().skip(begin) {
            let ts = Instant::now();
            // With guidance the UNet runs the latents against both contexts (`forward_copies`),
            // whose keys and values the cross-attentions project once, at the first step.
            let input = scheduler.scale_model_input(latents.clone(), i);
            let input = match &extra {
                Some(e) => Tensor::cat(vec![input, e.clone()], 1),
                None => input,
            };
            let eps = unet.forward_in(input, if guided { 2 } else { 1 }, t, &context);
            let eps = if guided {
                let uncond = eps.clone().narrow(0, 0, n);
                let text = eps.narrow(0, n, n);
                uncond.clone() + (text - uncond) * req.guidance_scale
            } else {
                eps
            };
            latents = scheduler.step(eps, i, latents, &mut step_noise);
            if let Some(b) = &blend {
                // Outside the mask, keep the init image noised to the next step's level.
                let known = if i + 1 < total {
                    scheduler.add_noise(b.image_latents.clone(), b.noise.clone(), i + 1)
                } else {
                    b.image_latents.clone()
                };
                latents = known * (b.mask.clone().neg() + 1.0) + latents * b.mask.clone();
            }
            debug!(
                step = i + 1,
                total,
                timestep = t,
                secs = ts.elapsed().as_secs_f32(),
                "denoising step"
            );
            if !progress(i + 1 - begin, total - begin, &latents) {
                return Err(Error::Cancelled);
            }
        }
        info!(
            steps = total,
            secs = t_loop.elapsed().as_secs_f32(),
            "denoised"
        );
        drop(context);

        // The decode asks again (step = total) before each image or tile, so that a cancel
        // does not wait for every image to be decoded.
        let last = total - begin;
        let images = self.decode_checked(latents.clone(), req.vae, req.vae_tiling, &mut || {
            progress(last, last, &latents)
        })?;
        let seeds = (0..n as u64).map(|k| req.seed.wrapping_add(k)).collect();
        Ok(GenerateOutput {
            images,
            latents,
            seeds,
        })
    }
}
