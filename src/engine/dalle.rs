//! Adapter: `kiln::models::dalle_mini::DalleMini<B>` behind [`ImagePipeline`]. DALL·E renders
//! its native size (256×256 for the published VQGAN); the worker resizes to the size asked for.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use image::RgbImage;

use super::{
    EngineError, Family, GeneratedImage, ImageJob, ImagePipeline, Loader, Progress, TokenUsage,
};
use crate::backend::{BackendTask, dispatch};
use crate::models::dalle_mini::tokenizer::PAD;
use crate::models::dalle_mini::{DalleMini, DalleRequest};
use crate::models::family::dalle_defaults;
use crate::precision::Placement;

pub struct DallePipeline<B: Backend> {
    model: DalleMini<B>,
    device: B::Device,
}

impl<B: Backend> DallePipeline<B> {
    /// The model request of `job`: the job's options, the family's defaults for the rest.
    pub fn request(job: &ImageJob) -> DalleRequest {
        let d = &job.dalle;
        DalleRequest {
            prompt: job.prompt.clone(),
            n: job.n,
            seed: job.seed,
            cond_scale: d
                .cond_scale
                .map_or(dalle_defaults::COND_SCALE, |v| v as f32),
            temperature: d
                .temperature
                .map_or(dalle_defaults::TEMPERATURE, |v| v as f32),
            top_k: d.top_k.map_or(dalle_defaults::TOP_K, |v| v as usize),
            top_p: d.top_p.map_or(dalle_defaults::TOP_P, |v| v as f32),
            tokenization: d.tokenization.unwrap_or_default(),
        }
    }
}

impl<B: Backend> ImagePipeline for DallePipeline<B> {
    fn family(&self) -> Family {
        Family::DalleMini
    }

    fn device_memory(&self) -> Option<crate::backend::DeviceMemory> {
        crate::backend::device_memory::<B>(&self.device)
    }

    /// Text: the BART encoder's tokens of the prompt (start and end included, padding not).
    /// Output: the image tokens the decoder sampled, 256 (16×16 VQGAN codes) per image.
    fn usage(&self, job: &ImageJob) -> Result<TokenUsage, EngineError> {
        let req = Self::request(job);
        let [_, cond] = self
            .model
            .text_rows(&req.prompt, req.tokenization, req.seed)?;
        let text = cond.iter().filter(|&&id| id != PAD).count();
        Ok(TokenUsage {
            text_tokens: text as u32,
            image_tokens: 0,
            output_tokens: (self.model.config.image_length * job.n) as u32,
        })
    }

    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        let req = Self::request(job);
        // After the last token the model asks again before each image the VQGAN decodes.
        let mut sampled = false;
        let out = self.model.generate(&req, &mut |step, total| {
            let decoding = sampled;
            sampled |= step == total;
            progress(Progress {
                step,
                total,
                preview: None,
                decoding,
            })
        })?;
        let (w, h) = (out.width as u32, out.height as u32);
        out.rgb8
            .into_iter()
            .zip(out.seeds)
            .zip(out.tokens)
            .map(|((rgb, seed), tokens)| {
                let image = RgbImage::from_raw(w, h, rgb).ok_or_else(|| {
                    EngineError::from(crate::Error::Image(
                        "the VQGAN returned a buffer of the wrong size".into(),
                    ))
                })?;
                let mut g = GeneratedImage::new(image, seed);
                g.tokens = job.extras.keep_tokens.then_some(tokens);
                Ok(g)
            })
            .collect()
    }
}

struct LoadDalle {
    path: PathBuf,
    place: Placement,
}

impl BackendTask for LoadDalle {
    type Output = Result<Box<dyn ImagePipeline>, EngineError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let mut dtype = self
            .place
            .precision
            .resolve::<B>(self.place.device, &device)?;
        if crate::nn::compute_dtype::<B>(dtype) != dtype {
            // bf16 on the CPU is SD's: DALL·E's decode steps are bound by reading the weights,
            // which it already does in f16 as the file has them (half the bytes of f32).
            tracing::info!(path = %self.path.display(), "DALL·E on the CPU ignores bf16: it computes in f32 from its f16 weights");
            dtype = burn::tensor::DType::F32;
        }
        Ok(Box::new(DallePipeline {
            model: DalleMini::<B>::load_as(&self.path, None, &device, dtype)?,
            device,
        }))
    }
}

/// Loads the DALL·E Mini/Mega folder at `path` on `device`.
pub fn dalle_loader(path: PathBuf, place: Placement) -> Loader {
    Arc::new(move || {
        let task = LoadDalle {
            path: path.clone(),
            place,
        };
        dispatch(place.device, task)?
    })
}
