//! Adapter: `kiln::models::sd15::StableDiffusion<B>` behind [`ImagePipeline`].

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::Backend;

use super::{EngineError, Family, GeneratedImage, ImageJob, ImagePipeline, Loader, Progress};
use crate::backend::{BackendTask, dispatch};
use crate::image_io;
use crate::models::sd15::{GenerateRequest, StableDiffusion, img2img, latent_preview};
use crate::precision::Placement;

/// Prem's SD service default; the CLI's 50 is too slow for an interactive API.
pub const DEFAULT_STEPS: usize = 25;

pub struct Sd15Pipeline<B: Backend> {
    model: StableDiffusion<B>,
}

impl<B: Backend> Sd15Pipeline<B> {
    pub fn new(model: StableDiffusion<B>) -> Self {
        Self { model }
    }
}

impl<B: Backend> ImagePipeline for Sd15Pipeline<B> {
    fn family(&self) -> Family {
        Family::Sd15
    }

    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        let defaults = GenerateRequest::default();
        // Edits: img2img, or inpainting with a mask (white = repaint; the server converts
        // OpenAI's transparent-means-edit masks). diffusers defaults strength to 0.8 for img2img
        // and 1.0 for inpainting.
        let condition = match &job.init {
            Some(init) => {
                let img = image::DynamicImage::ImageRgb8(init.image.clone());
                Some(img2img::prepare(
                    &img,
                    init.mask.as_ref(),
                    job.width as usize,
                    job.height as usize,
                )?)
            }
            None => None,
        };
        let strength =
            job.strength
                .unwrap_or(if job.init.as_ref().is_some_and(|i| i.mask.is_some()) {
                    1.0
                } else {
                    defaults.strength
                });
        let req = GenerateRequest {
            prompt: job.prompt.clone(),
            negative_prompt: job.negative_prompt.clone(),
            steps: job.steps.unwrap_or(DEFAULT_STEPS),
            guidance_scale: job.guidance_scale.unwrap_or(defaults.guidance_scale),
            scheduler: job.scheduler.unwrap_or(defaults.scheduler),
            width: job.width as usize,
            height: job.height as usize,
            n: job.n,
            seed: job.seed,
            init_latents: None,
            clip_skip: defaults.clip_skip,
            condition,
            strength,
            ..defaults
        };
        let scale = self.model.parts.vae_config.scale_factor() as u32;
        let out = self
            .model
            .generate_observed(&req, &mut |step, total, latents| {
                // Streaming previews come from the latents (no VAE), for image 0.
                let preview = job
                    .preview_steps(total)
                    .contains(&step)
                    .then(|| latent_preview(latents, 0, scale).ok())
                    .flatten();
                progress(Progress {
                    step,
                    total,
                    preview,
                })
            })?;
        let images = image_io::to_rgb8(out.images)?;
        Ok(images
            .into_iter()
            .zip(out.seeds)
            .map(|(image, seed)| GeneratedImage { image, seed })
            .collect())
    }
}

struct LoadSd15 {
    path: PathBuf,
    place: Placement,
}

impl BackendTask for LoadSd15 {
    type Output = Result<Box<dyn ImagePipeline>, EngineError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        // The VAE encoder is kept for edits (img2img/inpainting).
        let dtype = self
            .place
            .precision
            .resolve::<B>(self.place.device, &device)?;
        let model = StableDiffusion::<B>::load_as(&self.path, true, &device, dtype)?;
        Ok(Box::new(Sd15Pipeline::new(model)))
    }
}

/// Loads the SD 1.5 model at `path` (diffusers folder or single file) on `device`.
pub fn sd15_loader(path: PathBuf, place: Placement) -> Loader {
    Arc::new(move || {
        let task = LoadSd15 {
            path: path.clone(),
            place,
        };
        dispatch(place.device, task)?
    })
}
