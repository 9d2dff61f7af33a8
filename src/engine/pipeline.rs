//! The one trait every image pipeline implements, the job it receives and what it returns.
//!
//! Pipelines run on an engine worker thread (see `worker.rs`), never on the async runtime.
//! Adding a model family: an adapter file next to `sd15.rs` implementing [`ImagePipeline`], a
//! [`Family`] variant, and a branch in `registry.rs` that builds its [`super::ModelSpec`].

use image::{GrayImage, RgbImage};

use super::EngineError;
use crate::schedulers::SchedulerKind;

/// Model families the server knows how to validate requests for. A family listed here is not
/// necessarily served: only models registered with a pipeline are (`registry.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x (txt2img; img2img/inpaint arrive with issue 6).
    Sd15,
    /// DALL·E Mini/Mega: fixed native 256x256, no edits.
    DalleMini,
}

impl Family {
    pub fn id(self) -> &'static str {
        match self {
            Family::Sd15 => "stable-diffusion-1.5",
            Family::DalleMini => "dalle-mini",
        }
    }

    /// A family that always renders at one size; other requested sizes are produced by resizing.
    pub fn native_size(self) -> Option<(u32, u32)> {
        match self {
            Family::Sd15 => None,
            Family::DalleMini => Some((256, 256)),
        }
    }
}

/// The starting image of an edit. `mask` uses the diffusers convention (white = repaint); the
/// server converts OpenAI's alpha-0-means-edit masks before building the job.
#[derive(Debug, Clone)]
pub struct InitImage {
    pub image: RgbImage,
    pub mask: Option<GrayImage>,
}

/// DALL·E sampling knobs (ignored by other families).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DalleParams {
    pub cond_scale: Option<f64>,
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub top_p: Option<f64>,
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
    pub init: Option<InitImage>,
    pub dalle: DalleParams,
    /// How many intermediate previews the client wants (OpenAI `partial_images`, 0–3).
    pub previews: usize,
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
            init: None,
            dalle: DalleParams::default(),
            previews: 0,
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
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
    pub preview: Option<RgbImage>,
}

#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub image: RgbImage,
    pub seed: u64,
}

/// A loaded model. `progress` is called after each step; returning `false` cancels the job
/// (the pipeline then returns `Err(EngineError::Cancelled)`).
///
/// Not `Send`: a pipeline is built by its loader on the worker thread that owns it and never
/// leaves it, so device handles that are not thread-safe are fine.
pub trait ImagePipeline {
    fn family(&self) -> Family;
    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError>;
}
