//! Where an SD 1.5 model's add-ons live: the LoRA library, the textual-inversion embeddings
//! folder and TAESD. By default the folders of the models directory (`models/loras/`,
//! `models/embeddings/`, `models/taesd/`); `--lora-dir`, `--embeddings-dir` and `--taesd-dir`
//! move them.

use std::path::{Path, PathBuf};

use super::loras::LoraLibrary;
use crate::models::family::{EMBEDDINGS_DIR, LORAS_DIR, TAESD_DIR};

#[derive(Debug, Clone, Default)]
pub struct AddOns {
    pub loras: LoraLibrary,
    /// Read once when a model loads: every embedding file becomes a prompt word.
    pub embeddings_dir: Option<PathBuf>,
    /// Loaded with each SD model when the folder holds TAESD's files.
    pub taesd_dir: Option<PathBuf>,
}

impl AddOns {
    /// The add-on folders of `models_dir`.
    pub fn under(models_dir: &Path) -> Self {
        Self {
            loras: LoraLibrary::new(models_dir.join(LORAS_DIR)),
            embeddings_dir: Some(models_dir.join(EMBEDDINGS_DIR)),
            taesd_dir: Some(models_dir.join(TAESD_DIR)),
        }
    }
}
