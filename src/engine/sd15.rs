//! Adapter: `kiln::models::sd15::StableDiffusion<B>` behind [`ImagePipeline`].

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::loras::take_lora_tags;
use super::{
    AddOns, EngineError, Family, GeneratedImage, ImageJob, ImagePipeline, Loader, Progress,
    TokenUsage,
};
use crate::backend::{BackendTask, dispatch};
use crate::image_io::{self, params::Parameters};
use crate::models::family::sd15_defaults;
use crate::models::sd15::{GenerateRequest, LoraSpec, SafetyChecker, StableDiffusion, img2img};
use crate::precision::Placement;

pub struct Sd15Pipeline<B: Backend> {
    model: StableDiffusion<B>,
    /// Written into the images' infotext as the model.
    name: String,
    /// Judges every image and preview when present (`--safety-checker`).
    checker: Option<SafetyChecker<B>>,
}

impl<B: Backend> Sd15Pipeline<B> {
    pub fn new(model: StableDiffusion<B>, name: impl Into<String>) -> Self {
        Self {
            model,
            name: name.into(),
            checker: None,
        }
    }

    /// Runs `checker` on this model's images from now on.
    pub fn with_checker(mut self, checker: Option<SafetyChecker<B>>) -> Self {
        self.checker = checker;
        self
    }

    /// Whether the checker flags `images` at `job`'s moderation; all pass without one.
    fn flags(&self, job: &ImageJob, images: &[&image::RgbImage]) -> Result<Vec<bool>, EngineError> {
        let Some(checker) = &self.checker else {
            return Ok(vec![false; images.len()]);
        };
        let verdicts = checker.check(images, job.moderation.adjustment())?;
        Ok(verdicts.iter().map(|v| v.nsfw).collect())
    }

    /// The model request of `job`: the job's options, the family's defaults for the rest.
    pub fn request(job: &ImageJob) -> Result<GenerateRequest, EngineError> {
        // Edits: img2img, or inpainting with a mask (255 = repaint). diffusers defaults
        // strength to 0.8 for img2img and 1.0 for inpainting.
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
        let inpaint = job.init.as_ref().is_some_and(|i| i.mask.is_some());
        let strength = job.strength.unwrap_or(if inpaint {
            sd15_defaults::INPAINT_STRENGTH
        } else {
            sd15_defaults::STRENGTH
        });
        let x = &job.extras;
        Ok(GenerateRequest {
            // `<lora:…>` tags were read into `job.loras` by `into_job`; the text encoder sees
            // the prompt without them (the infotext keeps the prompt as written).
            prompt: take_lora_tags(&job.prompt)?.0,
            negative_prompt: job.negative_prompt.clone(),
            prompt_syntax: job.prompt_syntax,
            steps: job.steps.unwrap_or(sd15_defaults::STEPS),
            guidance_scale: job.guidance_scale.unwrap_or(sd15_defaults::GUIDANCE_SCALE),
            scheduler: job.scheduler.unwrap_or(sd15_defaults::SCHEDULER),
            width: job.width as usize,
            height: job.height as usize,
            n: job.n,
            seed: job.seed,
            clip_skip: job.clip_skip.unwrap_or(sd15_defaults::CLIP_SKIP),
            eta: job.eta,
            condition,
            strength,
            sample_vae: !x.vae_mean,
            vae: job.vae,
            vae_tiling: Default::default(),
            noise: x.noise.clone(),
            loras: job
                .loras
                .iter()
                .map(|l| LoraSpec {
                    path: l.path.clone(),
                    weight: l.weight,
                })
                .collect(),
        })
    }
}

/// A1111's infotext of image `seed` made by `req` for `job` with the model `name`: the prompt
/// as written, `<lora:…>` tags included, as A1111 writes it.
fn infotext(job: &ImageJob, req: &GenerateRequest, name: &str, seed: u64) -> Parameters {
    Parameters {
        prompt: job.prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        steps: req.steps,
        sampler: req.scheduler.a1111_label().to_string(),
        cfg_scale: req.guidance_scale,
        seed,
        width: req.width,
        height: req.height,
        model: name.to_string(),
        clip_skip: req.clip_skip,
        denoising_strength: req.condition.as_ref().map(|_| req.strength),
    }
}

/// A LoRA that does not fit the model, named as the request named it (a library name, never
/// the server's path); other errors as they are.
fn lora_error(job: &ImageJob, e: crate::Error) -> EngineError {
    match e {
        crate::Error::Lora { path, message } => {
            let name = job.loras.iter().find(|l| l.path == path);
            let name = name.map_or_else(|| path.display().to_string(), |l| l.name.clone());
            EngineError::Invalid {
                param: Some("loras".into()),
                message: format!("LoRA `{name}`: {message}"),
            }
        }
        other => other.into(),
    }
}

/// Each image's final latents as (shape `[C, h, w]`, values), read from the device once.
fn latents_per_image<B: Backend>(
    latents: Tensor<B, 4>,
) -> Result<Vec<(Vec<usize>, Vec<f32>)>, EngineError> {
    let [_, c, h, w] = latents.dims();
    let values = crate::nn::host_f32(latents)
        .map_err(|e| EngineError::Failed(format!("reading latents: {e}")))?;
    Ok(values
        .chunks(c * h * w)
        .map(|one| (vec![c, h, w], one.to_vec()))
        .collect())
}

impl<B: Backend> ImagePipeline for Sd15Pipeline<B> {
    fn family(&self) -> Family {
        Family::Sd15
    }

    fn device_memory(&self) -> Option<crate::backend::DeviceMemory> {
        crate::backend::device_memory::<B>(self.model.device())
    }

    fn moderate(
        &mut self,
        job: &ImageJob,
        images: &[GeneratedImage],
    ) -> Result<Vec<bool>, EngineError> {
        let rgb: Vec<&image::RgbImage> = images.iter().map(|g| &g.image).collect();
        self.flags(job, &rgb)
    }

    /// Text: the prompt's tokens, and the negative prompt's when guidance reads it
    /// (`guidance_scale > 1`). Image: one per latent position (8×8 pixels) of the input an
    /// edit encodes; output: one per latent position of each image the UNet denoised.
    fn usage(&self, job: &ImageJob) -> Result<TokenUsage, EngineError> {
        let syntax = job.prompt_syntax;
        let guided = job.guidance_scale.unwrap_or(sd15_defaults::GUIDANCE_SCALE) > 1.0;
        let prompt = take_lora_tags(&job.prompt)?.0;
        let mut text = self.model.prompt_tokens(&prompt, syntax)?;
        if guided {
            text += self.model.prompt_tokens(&job.negative_prompt, syntax)?;
        }
        let [_, h, w] = self
            .model
            .latent_shape(job.width as usize, job.height as usize);
        let positions = (h * w) as u32;
        Ok(TokenUsage {
            text_tokens: text as u32,
            image_tokens: if job.init.is_some() { positions } else { 0 },
            output_tokens: positions * job.n as u32,
        })
    }

    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        let req = Self::request(job)?;
        // After the last step the model asks again before each image or tile it decodes.
        let mut denoised = false;
        let out = self
            .model
            .generate_observed(&req, &mut |step, total, latents| {
                let decoding = denoised;
                denoised |= step == total;
                // Streaming previews of image 0: TAESD when loaded, else the latent colour map.
                // With a safety checker, a preview it flags (or cannot judge) is not sent.
                let preview = (!decoding && job.preview_steps(total).contains(&step))
                    .then(|| self.model.preview(latents, 0).ok())
                    .flatten()
                    .filter(|p| self.flags(job, &[p]).is_ok_and(|f| f == [false]));
                progress(Progress {
                    step,
                    total,
                    preview,
                    decoding,
                })
            })
            .map_err(|e| lora_error(job, e))?;
        let latents: Vec<Option<_>> = if job.extras.keep_latents {
            latents_per_image(out.latents)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; out.seeds.len()]
        };
        let images = image_io::to_rgb8(out.images)?;
        Ok(images
            .into_iter()
            .zip(out.seeds)
            .zip(latents)
            .map(|((image, seed), latents)| {
                let mut g = GeneratedImage::new(image, seed);
                g.params = Some(infotext(job, &req, &self.name, seed));
                g.latents = latents;
                g
            })
            .collect())
    }
}

struct LoadSd15 {
    path: PathBuf,
    name: String,
    place: Placement,
    edits: bool,
    addons: AddOns,
}

impl BackendTask for LoadSd15 {
    type Output = Result<Box<dyn ImagePipeline>, EngineError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let dtype = self
            .place
            .precision
            .resolve::<B>(self.place.device, &device)?;
        let mut model = StableDiffusion::<B>::load_as(&self.path, self.edits, &device, dtype)?;
        self.addons.attach(&mut model, &device, dtype)?;
        let checker = self.addons.safety_checker::<B>(&self.path, &device)?;
        Ok(Box::new(
            Sd15Pipeline::new(model, self.name).with_checker(checker),
        ))
    }
}

/// Loads the SD 1.5 model at `path` (diffusers folder or single file) on `device`; `edits`
/// keeps the VAE encoder that img2img and inpainting need. `name` is the model in infotexts.
pub fn sd15_loader(
    path: PathBuf,
    name: String,
    place: Placement,
    edits: bool,
    addons: AddOns,
) -> Loader {
    Arc::new(move || {
        let task = LoadSd15 {
            path: path.clone(),
            name: name.clone(),
            place,
            edits,
            addons: addons.clone(),
        };
        dispatch(place.device, task)?
    })
}
