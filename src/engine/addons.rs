//! Where an SD 1.5 model's add-ons live: the LoRA library, the textual-inversion embeddings
//! folder and TAESD. By default the folders of the models directory (`models/loras/`,
//! `models/embeddings/`, `models/taesd/`); `--lora-dir`, `--embeddings-dir` and `--taesd-dir`
//! move them.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use tracing::{info, warn};

use super::EngineError;
use super::loras::LoraLibrary;
use crate::models::family::{EMBEDDINGS_DIR, LORAS_DIR, TAESD_DIR};
use crate::models::sd15::lora::DEFAULT_CACHE_BYTES;
use crate::models::sd15::{AutoencoderTiny, Embeddings, StableDiffusion};

#[derive(Debug, Clone)]
pub struct AddOns {
    pub loras: LoraLibrary,
    /// Read once when a model loads: every embedding file becomes a prompt word.
    pub embeddings_dir: Option<PathBuf>,
    /// Loaded with each SD model when the folder holds TAESD's files.
    pub taesd_dir: Option<PathBuf>,
    /// Bound on the memory of the LoRA-merged model variants each SD model keeps for later
    /// requests (bytes of the weights they replace; 0 = rebuild every time).
    pub lora_cache_bytes: usize,
}

impl Default for AddOns {
    /// No folders: only what a request names by path (the CLI) can be used.
    fn default() -> Self {
        Self {
            loras: LoraLibrary::none(),
            embeddings_dir: None,
            taesd_dir: None,
            lora_cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl AddOns {
    /// The add-on folders of `models_dir`.
    pub fn under(models_dir: &Path) -> Self {
        Self {
            loras: LoraLibrary::new(models_dir.join(LORAS_DIR)),
            embeddings_dir: Some(models_dir.join(EMBEDDINGS_DIR)),
            taesd_dir: Some(models_dir.join(TAESD_DIR)),
            ..Self::default()
        }
    }

    /// Gives a freshly loaded SD model its add-ons: the LoRA cache bound, the embeddings and
    /// TAESD.
    pub fn attach<B: Backend>(
        &self,
        model: &mut StableDiffusion<B>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<(), EngineError> {
        model.set_lora_cache_limit(self.lora_cache_bytes);
        attach_embeddings(model, self.embeddings_dir.as_deref())?;
        attach_taesd(model, self.taesd_dir.as_deref(), device, dtype);
        Ok(())
    }
}

/// Every embedding file of `dir` becomes a prompt word. A file that cannot be used is logged by
/// name and skipped (one bad download must not take the model down); a missing folder is none.
fn attach_embeddings<B: Backend>(
    model: &mut StableDiffusion<B>,
    dir: Option<&Path>,
) -> Result<(), EngineError> {
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return Ok(());
    };
    // `load_dir` logs every file it skips, by name.
    let hidden = model.parts.clip_config.hidden_size;
    let (embeddings, _skipped) = Embeddings::load_dir(dir, hidden)?;
    model.set_embeddings(embeddings)?;
    Ok(())
}

/// TAESD from `dir` when it holds its weights: real previews and `vae: taesd`. A TAESD that
/// fails to load is logged and left out (the model still serves with latent previews).
fn attach_taesd<B: Backend>(
    model: &mut StableDiffusion<B>,
    dir: Option<&Path>,
    device: &B::Device,
    dtype: DType,
) {
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return;
    };
    match AutoencoderTiny::<B>::load(dir, device, dtype) {
        Ok(taesd) => {
            info!(dir = %dir.display(), "TAESD loaded: previews and `vae: taesd` use it");
            model.set_taesd(Some(taesd));
        }
        Err(e) => warn!(dir = %dir.display(), "TAESD not loaded: {e}"),
    }
}
