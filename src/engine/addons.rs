//! Where an SD 1.5 model's add-ons live: the LoRA library, the textual-inversion embeddings
//! folder and TAESD. By default the folders of the models directory (`models/loras/`,
//! `models/embeddings/`, `models/taesd/`); `--lora-dir`, `--embeddings-dir` and `--taesd-dir`
//! move them. The safety checker is the model's own (`safety_checker/` and `feature_extractor/`
//! beside its `unet/`), used as `--safety-checker` says; `--safety-checker-dir` points elsewhere.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use tracing::{info, warn};

use super::EngineError;
use super::loras::LoraLibrary;
use crate::models::family::{EMBEDDINGS_DIR, LORAS_DIR, TAESD_DIR};
use crate::models::sd15::lora::DEFAULT_CACHE_BYTES;
use crate::models::sd15::{AutoencoderTiny, Embeddings, SafetyChecker, StableDiffusion};

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
    /// Whether SD models run their safety checker on every image and preview.
    pub safety: SafetyMode,
    /// A folder with `safety_checker/` and `feature_extractor/` for every SD model; `None`:
    /// each model's own folder.
    pub safety_dir: Option<PathBuf>,
}

/// `--safety-checker`: `auto` runs it where its weights are installed (as diffusers'
/// `StableDiffusionPipeline` does by default), `on` refuses to load an SD model without one,
/// `off` never runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SafetyMode {
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for SafetyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(SafetyMode::Auto),
            "on" => Ok(SafetyMode::On),
            "off" => Ok(SafetyMode::Off),
            other => Err(format!(
                "unknown safety checker mode `{other}`: expected auto, on or off"
            )),
        }
    }
}

impl Default for AddOns {
    /// No folders: only what a request names by path (the CLI) can be used.
    fn default() -> Self {
        Self {
            loras: LoraLibrary::none(),
            embeddings_dir: None,
            taesd_dir: None,
            lora_cache_bytes: DEFAULT_CACHE_BYTES,
            safety: SafetyMode::default(),
            safety_dir: None,
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

    /// The safety checker of the SD model at `model_path` (a diffusers folder, or a single file
    /// whose folder holds the checker), as [`SafetyMode`] says. A checker that is there but
    /// does not load is an error in every mode but `off`: a model never serves unchecked
    /// because its checker is broken.
    pub fn safety_checker<B: Backend>(
        &self,
        model_path: &Path,
        device: &B::Device,
    ) -> Result<Option<SafetyChecker<B>>, EngineError> {
        if self.safety == SafetyMode::Off {
            return Ok(None);
        }
        let own = if model_path.is_dir() {
            model_path
        } else {
            model_path.parent().unwrap_or(Path::new("."))
        };
        let root = self.safety_dir.as_deref().unwrap_or(own);
        if !SafetyChecker::<B>::is_installed(root) {
            if self.safety == SafetyMode::On {
                return Err(EngineError::Failed(format!(
                    "--safety-checker on: no safety checker in {} (it needs safety_checker/ and \
                     feature_extractor/; `kiln download sd15` fetches them)",
                    root.display()
                )));
            }
            info!(dir = %root.display(), "no safety checker installed: images are not checked");
            return Ok(None);
        }
        let checker = SafetyChecker::<B>::load(root, device)?;
        info!(dir = %root.display(), "safety checker on: flagged images and previews are withheld");
        Ok(Some(checker))
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
