//! LoRAs for SD 1.5, applied per request to the UNet and the text encoder.
//!
//! A request's LoRAs (files with weights) give an adapted copy of the two models with the
//! deltas merged into the weights (`adapted`): a denoising step then costs exactly what a base
//! step costs, and the base model is never written, so nothing carries over to the next
//! request. Building a copy costs one read of the adapted base weights plus a rank-r matmul
//! per module; copies are kept for later requests with the same files and weights (`cache`),
//! under a bound on the bytes they replaced.
//!
//! File formats: see `format`.

mod adapted;
mod cache;
mod format;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use tracing::info;

pub use adapted::Adapted;
pub use cache::LoraCache;
pub use format::{LoraFormat, Part};

use super::pipeline::StableDiffusion;
use crate::error::Result;

/// Default bound on the memory the kept LoRA variants of one model may take (bytes of the
/// parameters they replace). An LCM-LoRA-shaped variant (rank 64 on 278 UNet modules) replaces
/// 3269 MiB of an f32 full-size model (measured; half that in f16), so 4 GiB keeps one such
/// variant, or many attention-only ones.
pub const DEFAULT_CACHE_BYTES: usize = 4 << 30;

/// One LoRA of a request: a file and its weight (1 = as trained; negative weights subtract).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub weight: f32,
}

/// What a LoRA file holds (for listings and up-front checks).
#[derive(Debug, Clone)]
pub struct LoraInfo {
    /// Key layouts found (a file normally has one).
    pub formats: Vec<LoraFormat>,
    /// The largest rank of its modules.
    pub rank: usize,
    pub unet_modules: usize,
    pub text_encoder_modules: usize,
    /// Modules adapting k×k convolutions (LoCon), k > 1.
    pub conv_modules: usize,
}

/// Reads a LoRA file's keys and shapes without a model. Errors name the file and the first
/// offending key: not a LoRA, an SDXL LoRA, unsupported kinds (LoHa, LoKr, DoRA), factors
/// without partner or of mismatched rank.
pub fn inspect(path: &Path) -> Result<LoraInfo> {
    Ok(info(&format::parse(path)?))
}

fn info(f: &format::LoraFile) -> LoraInfo {
    let count = |p: Part| f.modules.iter().filter(|m| m.part == p).count();
    LoraInfo {
        formats: f.formats.iter().copied().collect(),
        rank: f.modules.iter().map(|m| m.rank()).max().unwrap_or(0),
        unet_modules: count(Part::Unet),
        text_encoder_modules: count(Part::TextEncoder),
        conv_modules: f
            .modules
            .iter()
            .filter(|m| m.down.shape.len() == 4 && m.down.shape[2..].iter().any(|&k| k > 1))
            .count(),
    }
}

impl<B: Backend> StableDiffusion<B> {
    /// [`inspect`], and every module matched to a weight of this model with fitting shapes
    /// (an error names the file, the key, and both shapes).
    pub fn check_lora(&self, path: &Path) -> Result<LoraInfo> {
        let file = format::parse(path)?;
        adapted::Names::of(&self.parts, self.device()).resolve(&file)?;
        Ok(info(&file))
    }

    /// The text encoder and UNet for a request's LoRAs: `None` without any (use the base
    /// model), else the kept or newly built adapted copy.
    pub fn lora_variant(&self, loras: &[LoraSpec]) -> Result<Option<Adapted<B>>> {
        self.lora_cache.get_or_build(loras, || {
            let t0 = Instant::now();
            let files = adapted::open_all(loras)?;
            let names = adapted::Names::of(&self.parts, self.device());
            let a = adapted::build(&self.parts, &names, &files, self.device())?;
            info!(
                loras = files.len(),
                secs = t0.elapsed().as_secs_f32(),
                mib = a.bytes as f64 / (1 << 20) as f64,
                "LoRA variant built"
            );
            Ok(a)
        })
    }

    /// Bounds the bytes the kept LoRA variants may take (default [`DEFAULT_CACHE_BYTES`]);
    /// 0 keeps none (every request with LoRAs builds its variant).
    pub fn set_lora_cache_limit(&mut self, bytes: usize) {
        self.lora_cache = LoraCache::new(bytes);
    }

    /// How many LoRA variants are kept, and the bytes they take.
    pub fn lora_cache_usage(&self) -> (usize, usize) {
        self.lora_cache.usage()
    }
}
