//! What one SD generation is asked to do: [`GenerateRequest`] (its defaults are the family
//! catalog's) and the [`NoiseOverrides`] the CLI and the tests give instead of seeded noise.

use std::str::FromStr;

use super::img2img::ImageCondition;
use super::lora::LoraSpec;
use super::prompt::PromptSyntax;
use super::vae_tiling::VaeTiling;
use crate::error::{Error, Result};
use crate::models::family::sd15_defaults;
use crate::schedulers::SchedulerKind;

/// One text-to-image request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    /// How both prompts are read: A1111 emphasis syntax (the default) or plain text.
    pub prompt_syntax: PromptSyntax,
    pub steps: usize,
    pub guidance_scale: f64,
    pub scheduler: SchedulerKind,
    pub width: usize,
    pub height: usize,
    pub n: usize,
    /// Image `k` starts from the noise of `seed + k`.
    pub seed: u64,
    /// A1111's "Clip skip": 1 = last CLIP layer, 2 = penultimate (diffusers' `clip_skip=1`).
    /// Applies to the negative prompt too, as in A1111 (diffusers skips for the prompt only).
    pub clip_skip: usize,
    /// DDIM's η (stochastic when > 0); an error with other schedulers.
    pub eta: Option<f64>,
    /// img2img / inpainting input, already at `width × height`.
    pub condition: Option<ImageCondition>,
    /// How much of the init image is repainted, 0 < s ≤ 1 (diffusers' default 0.8).
    pub strength: f64,
    /// Sample the VAE posterior for the init image (diffusers' default) rather than take its mean.
    pub sample_vae: bool,
    /// The decoder of the final images: the model's VAE, or TAESD (needs
    /// [`StableDiffusion::set_taesd`](super::StableDiffusion::set_taesd)).
    pub vae: VaeChoice,
    /// When the full VAE decodes and encodes in tiles.
    pub vae_tiling: VaeTiling,
    /// Given noise instead of the seeded streams (`kiln generate --init-latents`, and tests that
    /// feed diffusers' tensors).
    pub noise: NoiseOverrides,
    /// LoRAs applied to the UNet and the text encoder for this request only, each with its
    /// weight; the variant is kept for later requests with the same LoRAs (see `lora`).
    pub loras: Vec<LoraSpec>,
}

/// Which autoencoder decodes the final latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeChoice {
    /// The model's own `AutoencoderKL`.
    #[default]
    Full,
    /// TAESD (`AutoencoderTiny`): about 10× faster, slightly softer images.
    Tiny,
}

impl FromStr for VaeChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "taesd" | "tiny" => Ok(Self::Tiny),
            _ => Err(Error::invalid(format!(
                "vae must be \"full\" or \"taesd\", got `{s}`"
            ))),
        }
    }
}

/// Noise given instead of drawing it from the seeded per-image streams.
#[derive(Debug, Clone, Default)]
pub struct NoiseOverrides {
    /// Starting latents `[n, C, H/8, W/8]` (before the scheduler's sigma scaling): what
    /// diffusers' `latents=` argument does. With an init image, the noise added to its latents.
    pub init_latents: Option<Vec<f32>>,
    /// Noise for stochastic samplers, one `[n, C, H/8, W/8]` tensor per draw in order; once
    /// used up, the seeded streams go on.
    pub step_noise: Option<Vec<Vec<f32>>>,
    /// VAE posterior noise `[n, C, H/8, W/8]` per encode, in draw order.
    pub vae_noise: Option<Vec<Vec<f32>>>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            prompt_syntax: PromptSyntax::default(),
            steps: sd15_defaults::STEPS,
            guidance_scale: sd15_defaults::GUIDANCE_SCALE,
            scheduler: sd15_defaults::SCHEDULER,
            width: sd15_defaults::SIZE as usize,
            height: sd15_defaults::SIZE as usize,
            n: 1,
            seed: 0,
            clip_skip: sd15_defaults::CLIP_SKIP,
            eta: None,
            condition: None,
            strength: sd15_defaults::STRENGTH,
            sample_vae: true,
            vae: VaeChoice::Full,
            vae_tiling: VaeTiling::Auto,
            noise: NoiseOverrides::default(),
            loras: Vec::new(),
        }
    }
}
