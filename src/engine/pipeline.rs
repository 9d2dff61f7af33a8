//! The one trait every image pipeline implements, the job it receives and what it returns.
//!
//! Pipelines run on an engine worker thread (see `worker.rs`) or, for `kiln generate`, on the
//! CLI's thread; never on the async runtime. Both call [`run`], so a job gives the same pixels
//! either way. Adding a model family: a [`Family`] in the catalog (`models/family.rs`), an
//! adapter file next to `sd15.rs` implementing [`ImagePipeline`], and its loader in
//! `registry.rs`.

use image::{GrayImage, RgbImage};

use super::EngineError;
use super::loras::ResolvedLora;
use super::output::{JobOutput, Moderation, TokenUsage};
use super::params::Quality;
use crate::image_io::{self, params::Parameters};
use crate::models::Family;
use crate::models::dalle_mini::Tokenization;
use crate::models::sd15::{NoiseOverrides, PromptSyntax, VaeChoice};
use crate::schedulers::SchedulerKind;

/// The starting image of an edit. `mask` uses the diffusers convention (255 = repaint), as
/// `image_io::mask` makes it from either convention.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: RgbImage,
    pub mask: Option<GrayImage>,
}

/// DALL·E sampling knobs (a job for another family that sets one is refused).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DalleParams {
    pub cond_scale: Option<f64>,
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
    pub tokenization: Option<Tokenization>,
}

/// What only the CLI and tests ask of a job; the server never sets it.
#[derive(Debug, Clone, Default)]
pub struct JobExtras {
    /// SD: given noise instead of the seeded streams (`--init-latents`; test hooks).
    pub noise: NoiseOverrides,
    /// SD: encode the init image to the mean of the VAE posterior instead of a sample.
    pub vae_mean: bool,
    /// Return each image's final latents (SD) or image tokens (DALL·E).
    pub keep_latents: bool,
    pub keep_tokens: bool,
}

/// One validated request for `n` images. Optional fields fall back to the pipeline's defaults.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub prompt: String,
    pub negative_prompt: String,
    pub n: usize,
    /// Requested output size; a family with a native size renders that and the engine resizes.
    pub width: u32,
    pub height: u32,
    /// Seed of image 0; image `k` uses `seed + k`.
    pub seed: u64,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub scheduler: Option<SchedulerKind>,
    pub strength: Option<f64>,
    /// SD: DDIM's η.
    pub eta: Option<f64>,
    /// SD: A1111's "Clip skip" (1 = last layer).
    pub clip_skip: Option<usize>,
    /// SD: LoRAs applied for this job only, from the `loras` option and the prompt's
    /// `<lora:…>` tags (which stay in `prompt`, as written, for the image's infotext).
    pub loras: Vec<ResolvedLora>,
    /// SD: how the prompts are read (A1111 emphasis and chunks, or plain).
    pub prompt_syntax: PromptSyntax,
    /// SD: the final decoder.
    pub vae: VaeChoice,
    pub init: Option<InitImage>,
    pub dalle: DalleParams,
    /// How many intermediate previews the client wants (OpenAI `partial_images`, 0–3).
    pub previews: usize,
    /// How strictly a pipeline with a safety checker judges the images (and previews).
    pub moderation: Moderation,
    /// The `quality` tier asked for (it set `steps` when those were not given).
    pub quality: Quality,
    pub extras: JobExtras,
}

impl ImageJob {
    /// A text-to-image job with every optional knob at its default.
    pub fn new(prompt: impl Into<String>, width: u32, height: u32, seed: u64) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            n: 1,
            width,
            height,
            seed,
            steps: None,
            guidance_scale: None,
            scheduler: None,
            strength: None,
            eta: None,
            clip_skip: None,
            loras: Vec::new(),
            prompt_syntax: PromptSyntax::default(),
            vae: VaeChoice::default(),
            init: None,
            dalle: DalleParams::default(),
            previews: 0,
            moderation: Moderation::default(),
            quality: Quality::default(),
            extras: JobExtras::default(),
        }
    }

    /// Steps at which a pipeline should attach a preview: `previews` steps spread evenly over
    /// `1..total` (the final image is never a preview).
    pub fn preview_steps(&self, total: usize) -> Vec<usize> {
        let k = self.previews.min(total.saturating_sub(1));
        (1..=k).map(|i| (i * total / (k + 1)).max(1)).collect()
    }
}

/// Reported after every denoising step; `preview` is only set at [`ImageJob::preview_steps`].
/// After the last step, pipelines report again before each image (or VAE tile) they decode,
/// with `decoding` set and `step == total`: not a new step, a chance to cancel the decode.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    pub preview: Option<RgbImage>,
    pub decoding: bool,
}

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub image: RgbImage,
    pub seed: u64,
    /// A1111's infotext of the settings used (SD), written into PNG files.
    pub params: Option<Parameters>,
    /// With [`JobExtras::keep_latents`]: the final latents `(shape [C, H/8, W/8], values)`.
    pub latents: Option<(Vec<usize>, Vec<f32>)>,
    /// With [`JobExtras::keep_tokens`]: DALL·E's image tokens.
    pub tokens: Option<Vec<u32>>,
}

impl GeneratedImage {
    pub fn new(image: RgbImage, seed: u64) -> Self {
        Self {
            image,
            seed,
            params: None,
            latents: None,
            tokens: None,
        }
    }
}

/// A loaded model. `progress` is called after each step and before each image (or tile) of
/// the final decode; returning `false` cancels the job (the pipeline then returns
/// `Err(EngineError::Cancelled)`).
///
/// Not `Send`: a pipeline is built by its loader on the worker thread that owns it and never
/// leaves it, so device handles that are not thread-safe are fine.
pub trait ImagePipeline {
    fn family(&self) -> Family;
    /// What the backend reports of its device's memory (GPU backends; `None` on the CPU).
    /// Called on the thread that runs the pipeline, whose stream's pools cubecl counts.
    fn device_memory(&self) -> Option<crate::backend::DeviceMemory> {
        None
    }
    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError>;
    /// The tokens `job` consumes and produces, in the family's own units (see [`TokenUsage`]).
    fn usage(&self, job: &ImageJob) -> Result<TokenUsage, EngineError>;
    /// One flag per image: `true` withholds it. A pipeline without a safety checker flags
    /// nothing.
    fn moderate(
        &mut self,
        _job: &ImageJob,
        images: &[GeneratedImage],
    ) -> Result<Vec<bool>, EngineError> {
        Ok(vec![false; images.len()])
    }
}

/// Runs `job` on `pipeline`, withholds what its safety checker flags (see
/// [`JobOutput::moderated`]) and brings every image to the size asked for (a family with a
/// native size renders that; see [`image_io::resize`]). The engine's workers and `kiln generate`
/// both come through here.
pub fn run(
    pipeline: &mut dyn ImagePipeline,
    job: &ImageJob,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<JobOutput, EngineError> {
    let usage = pipeline.usage(job)?;
    let images = pipeline.generate(job, progress)?;
    let flagged = pipeline.moderate(job, &images)?;
    let mut out = JobOutput::moderated(images, &flagged, usage)?;
    for g in &mut out.images {
        let img = std::mem::take(&mut g.image);
        g.image = image_io::resize(img, job.width, job.height);
    }
    Ok(out)
}
