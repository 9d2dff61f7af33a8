//! diffusers' `StableDiffusionSafetyChecker`: the CLIP ViT-L/14 image embedding, projected
//! (`visual_projection`), compared by cosine with 17 concept and 3 "special care" embeddings
//! against per-embedding thresholds. Field names follow the checkpoint keys of
//! `safety_checker/model.safetensors`; images are prepared by [`ClipImageProcessor`] as
//! `feature_extractor/preprocessor_config.json` says.

use std::borrow::Borrow;
use std::path::Path;
use std::time::Instant;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use image::RgbImage;
use tracing::info;

use super::clip_image_processor::ClipImageProcessor;
use super::clip_vision::ClipVisionModel;
use super::config::{ImageProcessorConfig, SafetyCheckerConfig};
use super::loader::{component_file, config_or_default};
use super::weights::safety_checker_key;
use crate::error::{Error, Result};
use crate::nn::{Linear, WeightLayout, host_f32};
use crate::weights::{TensorFile, load_into_as, require_complete};

/// diffusers hard-codes these counts (`torch.ones(17, projection_dim)`, `torch.ones(3, …)`).
pub const CONCEPTS: usize = 17;
pub const SPECIAL_CONCEPTS: usize = 3;
/// What a special-care hit adds to the concept thresholds' adjustment (diffusers' `0.01`).
pub const SPECIAL_CARE_ADJUSTMENT: f32 = 0.01;
/// Images per forward pass. A ViT-L/14 batch of 4 holds 4 × 257 tokens of 1024 floats per
/// layer, a few MB; larger batches gain nothing on the CPU.
const BATCH: usize = 4;

pub const SAFETY_DIR: &str = "safety_checker";
pub const FEATURE_EXTRACTOR_DIR: &str = "feature_extractor";
const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";
const WEIGHT_STEMS: [&str; 2] = ["model", "pytorch_model"];

#[derive(Module, Debug)]
pub struct StableDiffusionSafetyChecker<B: Backend> {
    pub vision_model: ClipVisionModel<B>,
    pub visual_projection: Linear<B>,
    pub concept_embeds: Param<Tensor<B, 2>>,
    pub special_care_embeds: Param<Tensor<B, 2>>,
    pub concept_embeds_weights: Param<Tensor<B, 1>>,
    pub special_care_embeds_weights: Param<Tensor<B, 1>>,
}

impl<B: Backend> StableDiffusionSafetyChecker<B> {
    pub fn new(cfg: &SafetyCheckerConfig, device: &B::Device) -> Self {
        let (d, p) = (cfg.vision_config.hidden_size, cfg.projection_dim);
        let zeros = |shape: [usize; 2]| Initializer::Zeros.init(shape, device);
        Self {
            vision_model: ClipVisionModel::new(&cfg.vision_config, device),
            visual_projection: Linear::new(d, p, false, WeightLayout::InOut, device),
            concept_embeds: zeros([CONCEPTS, p]),
            special_care_embeds: zeros([SPECIAL_CONCEPTS, p]),
            concept_embeds_weights: Initializer::Zeros.init([CONCEPTS], device),
            special_care_embeds_weights: Initializer::Zeros.init([SPECIAL_CONCEPTS], device),
        }
    }

    /// `image_embeds` `[B, projection_dim]` of `pixel_values` `[B, 3, S, S]`.
    pub fn image_embeds(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        self.visual_projection
            .forward(self.vision_model.forward(pixel_values))
    }

    /// diffusers' `cosine_distance(image_embeds, embeds)`: cosines of the L2-normalised rows
    /// (norms floored at 1e-12, as `F.normalize`), `[B, n]`.
    pub fn cosine_distance(image_embeds: Tensor<B, 2>, embeds: Tensor<B, 2>) -> Tensor<B, 2> {
        let unit = |x: Tensor<B, 2>| {
            let n = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
            x / n
        };
        unit(image_embeds).matmul(unit(embeds).transpose())
    }
}

/// The checker's verdict on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyVerdict {
    /// Some concept score is above 0 (diffusers' `has_nsfw_concept`: the pipeline blacks the
    /// image out).
    pub nsfw: bool,
    /// Per concept, `cosine − threshold + adjustment`, rounded to 3 decimals as diffusers does
    /// before comparing with 0.
    pub concept_scores: Vec<f32>,
    pub special_scores: Vec<f32>,
    /// Some special-care score is above 0, which made the concept checks stricter by 0.01.
    pub special_care: bool,
}

/// `round(x, 3)` on a float32 as NumPy does it (scale, round half to even, unscale, in f32).
fn round3(x: f32) -> f32 {
    (x * 1000.0).round_ties_even() / 1000.0
}

/// diffusers' per-image loop of `StableDiffusionSafetyChecker.forward`, with its hard-coded
/// `adjustment = 0.0` made a parameter: each special-care score uses the adjustment as it
/// stands (a hit raises it to `adjustment + 0.01` for the later scores), then every concept
/// score. Scores are f32 as NumPy computes them (a float32 minus Python floats).
pub fn verdict(
    concept_cos: &[f32],
    special_cos: &[f32],
    concept_weights: &[f32],
    special_weights: &[f32],
    adjustment: f32,
) -> SafetyVerdict {
    let mut adj = adjustment;
    let mut special_care = false;
    let special_scores = special_cos
        .iter()
        .zip(special_weights)
        .map(|(c, w)| {
            let s = round3(c - w + adj);
            if s > 0.0 {
                special_care = true;
                adj = adjustment + SPECIAL_CARE_ADJUSTMENT;
            }
            s
        })
        .collect();
    let concept_scores: Vec<f32> = concept_cos
        .iter()
        .zip(concept_weights)
        .map(|(c, w)| round3(c - w + adj))
        .collect();
    SafetyVerdict {
        nsfw: concept_scores.iter().any(|s| *s > 0.0),
        concept_scores,
        special_scores,
        special_care,
    }
}

/// The loaded checker and its image preprocessing.
pub struct SafetyChecker<B: Backend> {
    pub model: StableDiffusionSafetyChecker<B>,
    pub processor: ClipImageProcessor,
    pub config: SafetyCheckerConfig,
    concept_weights: Vec<f32>,
    special_weights: Vec<f32>,
}

impl<B: Backend> SafetyChecker<B> {
    /// Whether `root` (a diffusers SD 1.5 folder) has a safety checker: `safety_checker/` with
    /// `config.json` and a weight file, and `feature_extractor/preprocessor_config.json`.
    pub fn is_installed(root: &Path) -> bool {
        let sc = root.join(SAFETY_DIR);
        sc.join("config.json").is_file()
            && component_file(&sc, &WEIGHT_STEMS).is_ok()
            && root
                .join(FEATURE_EXTRACTOR_DIR)
                .join(PREPROCESSOR_CONFIG)
                .is_file()
    }

    /// Loads `root/safety_checker/` (`model.safetensors`, else `model.fp16.safetensors`, …) in
    /// f32, with the configs of `safety_checker/config.json` and
    /// `feature_extractor/preprocessor_config.json` (SD 1.5's where a file is absent). A tensor
    /// the checker lacks, or one the file lacks, is an error naming the file and the key.
    pub fn load(root: &Path, device: &B::Device) -> Result<Self> {
        let t0 = Instant::now();
        let sc = root.join(SAFETY_DIR);
        if !sc.is_dir() {
            return Err(Error::io(
                &sc,
                "no such folder (no safety checker installed)",
            ));
        }
        let config = config_or_default(&sc.join("config.json"), SafetyCheckerConfig::load)?;
        let image_size = config.vision_config.image_size;
        let pre = root.join(FEATURE_EXTRACTOR_DIR).join(PREPROCESSOR_CONFIG);
        let pre_cfg = if pre.is_file() {
            ImageProcessorConfig::load(&pre, image_size)?
        } else {
            let d = ImageProcessorConfig::default();
            d.validate(image_size).map_err(|message| Error::Config {
                path: pre.clone(),
                message: format!("absent, and SD 1.5's defaults do not fit: {message}"),
            })?;
            d
        };
        let path = component_file(&sc, &WEIGHT_STEMS)?;
        let file = TensorFile::open(&path)?;
        let (model, report) = load_into_as(
            StableDiffusionSafetyChecker::new(&config, device),
            &file,
            &safety_checker_key,
            DType::F32,
        )?;
        require_complete(&report, &path)?;
        if let Some(key) = report.unused.first() {
            return Err(Error::Tensor {
                path,
                key: key.clone(),
                message: "not a safety checker (StableDiffusionSafetyChecker) parameter".into(),
            });
        }
        let concept_weights = host_f32(model.concept_embeds_weights.val())?;
        let special_weights = host_f32(model.special_care_embeds_weights.val())?;
        info!(path = %path.display(), secs = t0.elapsed().as_secs_f32(), "safety checker loaded");
        Ok(Self {
            model,
            processor: ClipImageProcessor::new(pre_cfg)?,
            config,
            concept_weights,
            special_weights,
        })
    }

    /// `pixel_values` `[n, 3, S, S]` of `images`, as `CLIPImageProcessor` makes them.
    pub fn pixel_values<I: Borrow<RgbImage>>(
        &self,
        images: &[I],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let s = self.config.vision_config.image_size;
        let mut values = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            values.extend(self.processor.preprocess(img.borrow())?);
        }
        // f32 whatever the backend's default float: the weights are loaded as f32.
        Ok(Tensor::from_data(
            TensorData::new(values, [images.len(), 3, s, s]),
            (device, DType::F32),
        ))
    }

    /// One verdict per image; `adjustment` is added to every score before the comparison
    /// with 0 (0.0: diffusers' standard thresholds; negative: less strict).
    /// Takes images or references to them (`&[RgbImage]`, `&[&RgbImage]`): a caller never
    /// copies its images to have them judged.
    pub fn check<I: Borrow<RgbImage>>(
        &self,
        images: &[I],
        adjustment: f32,
    ) -> Result<Vec<SafetyVerdict>> {
        if !adjustment.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "safety checker adjustment {adjustment} is not a finite number"
            )));
        }
        let device = self.model.concept_embeds.val().device();
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(BATCH) {
            let embeds = self.model.image_embeds(self.pixel_values(chunk, &device)?);
            let cos = |e: &Param<Tensor<B, 2>>| {
                host_f32(StableDiffusionSafetyChecker::cosine_distance(
                    embeds.clone(),
                    e.val(),
                ))
            };
            let concept = cos(&self.model.concept_embeds)?;
            let special = cos(&self.model.special_care_embeds)?;
            if let Some(bad) = concept.iter().chain(&special).find(|v| !v.is_finite()) {
                return Err(Error::Numerical(format!(
                    "safety checker: a cosine is {bad}"
                )));
            }
            for i in 0..chunk.len() {
                out.push(verdict(
                    &concept[i * CONCEPTS..][..CONCEPTS],
                    &special[i * SPECIAL_CONCEPTS..][..SPECIAL_CONCEPTS],
                    &self.concept_weights,
                    &self.special_weights,
                    adjustment,
                ));
            }
        }
        Ok(out)
    }
}
