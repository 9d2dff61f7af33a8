//! The add-on folder flags `kiln generate` and `kiln serve` share (SD 1.5's LoRAs, embeddings
//! and TAESD), read the same way by both.

use std::path::{Path, PathBuf};

use clap::Args;
use kiln::engine::{AddOns, LoraLibrary, SafetyMode};
use kiln::models::sd15::lora::DEFAULT_CACHE_BYTES;

#[derive(Args, Debug, Clone)]
pub struct AddOnArgs {
    /// LoRA folder: `NAME.safetensors` files, or `NAME/` folders holding one (default
    /// MODELS_DIR/loras).
    #[arg(long, env = "KILN_LORA_DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Textual-inversion embeddings folder; each file's stem becomes a prompt word (default
    /// MODELS_DIR/embeddings).
    #[arg(long, env = "KILN_EMBEDDINGS_DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// TAESD folder (`kiln download taesd`), for previews and `vae: taesd` (default
    /// MODELS_DIR/taesd).
    #[arg(long, env = "KILN_TAESD_DIR")]
    pub taesd_dir: Option<PathBuf>,
    /// Memory for LoRA-merged model variants kept for later requests with the same LoRAs, in
    /// MiB of replaced weights (0: merge on every request). An LCM-LoRA variant of an f32 SD
    /// 1.5 replaces about 3.2 GiB.
    #[arg(long, env = "KILN_LORA_CACHE_MIB", default_value_t = DEFAULT_CACHE_BYTES >> 20)]
    pub lora_cache_mib: usize,
    /// SD's safety checker: auto (run it where `safety_checker/` and `feature_extractor/` are
    /// installed, as diffusers does), on (an SD model without one fails to load), off. Flagged
    /// images are never returned or written.
    #[arg(long, env = "KILN_SAFETY_CHECKER", default_value = "auto")]
    pub safety_checker: SafetyMode,
    /// A folder with `safety_checker/` and `feature_extractor/` to use for every SD model
    /// (default: each model's own folder).
    #[arg(long, env = "KILN_SAFETY_CHECKER_DIR")]
    pub safety_checker_dir: Option<PathBuf>,
}

impl AddOnArgs {
    /// The folders, each defaulting to its place under `models_dir`.
    pub fn resolve(&self, models_dir: &Path) -> AddOns {
        let mut a = AddOns::under(models_dir);
        if let Some(d) = &self.lora_dir {
            a.loras = LoraLibrary::new(d);
        }
        if let Some(d) = &self.embeddings_dir {
            a.embeddings_dir = Some(d.clone());
        }
        if let Some(d) = &self.taesd_dir {
            a.taesd_dir = Some(d.clone());
        }
        a.lora_cache_bytes = self.lora_cache_mib << 20;
        a.safety = self.safety_checker;
        a.safety_dir = self.safety_checker_dir.clone();
        a
    }
}
