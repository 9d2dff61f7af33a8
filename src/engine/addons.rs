//! Where an SD 1.5 model's add-ons live: the LoRA library, the textual-inversion embeddings
//! folder and TAESD. By default the folders of the models directory (`models/loras/`,
//! `models/embeddings/`, `models/taesd/`); `--lora-dir`, `--embeddings-dir` and `--taesd-dir`
//! move them.

use std::path::{Path, PathBuf};

use super::loras::LoraLibrary;
use crate::models::family::{EMBEDDINGS_DIR, LORAS_DIR, TAESD_DIR};
use crate::models::sd15::lora::DEFAULT_CACHE_BYTES;

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
}
