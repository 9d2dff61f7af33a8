//! Which models to serve: `--model ID=PATH` entries, real diffusers folders under the models
//! directory, or, when there are none, the tiny demo models from `models/fixtures/`.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::{EngineError, Family, ModelSpec, dalle_loader, sd15_loader};
use crate::models::dalle_mini;
use crate::precision::Placement;

/// Printed when only demo models are served.
pub const DEMO_HELP: &str = "To serve real Stable Diffusion 1.5 weights, put a diffusers folder under models/, e.g.\n  \
hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json 'scheduler/*' 'tokenizer/*' \
text_encoder/config.json text_encoder/model.safetensors unet/config.json unet/diffusion_pytorch_model.safetensors \
vae/config.json vae/diffusion_pytorch_model.safetensors --local-dir models/sd15\n\
or pass --model ID=PATH (a diffusers folder or a .safetensors/.ckpt file), then restart.";

/// The models found, and whether they are only the demo fallback.
#[derive(Debug)]
pub struct Discovery {
    pub specs: Vec<ModelSpec>,
    pub demo: bool,
}

/// A real diffusers SD folder: `model_index.json` plus `unet/`.
pub fn is_diffusers_folder(p: &Path) -> bool {
    p.join("model_index.json").is_file() && p.join("unet").is_dir()
}

fn sd15_spec(id: &str, path: &Path, device: Placement, demo: bool) -> ModelSpec {
    ModelSpec {
        id: id.to_string(),
        family: Family::Sd15,
        device: device.to_string(),
        source: path.display().to_string(),
        demo,
        edits_unsupported: None,
        loader: sd15_loader(path.to_path_buf(), device),
    }
}

const DALLE_EDITS: &str =
    "DALL·E models cannot edit images; use a Stable Diffusion model for /v1/images/edits";

fn dalle_spec(id: &str, path: &Path, device: Placement, demo: bool) -> ModelSpec {
    ModelSpec {
        id: id.to_string(),
        family: Family::DalleMini,
        device: device.to_string(),
        source: path.display().to_string(),
        demo,
        edits_unsupported: Some(DALLE_EDITS.into()),
        loader: dalle_loader(path.to_path_buf(), device),
    }
}

/// The spec for `path`: DALL·E when its files say so, else Stable Diffusion.
fn spec_for(id: &str, path: &Path, device: Placement, demo: bool) -> ModelSpec {
    if path.is_dir() && dalle_mini::detect(path).is_some() {
        dalle_spec(id, path, device, demo)
    } else {
        sd15_spec(id, path, device, demo)
    }
}

/// Explicit models first (in the order given), then every diffusers folder directly under
/// `models_dir` except `fixtures/` (id = folder name); with neither, the demo models.
pub fn discover(
    models_dir: &Path,
    explicit: &[(String, PathBuf)],
    device: impl Into<Placement>,
) -> Result<Discovery, EngineError> {
    let device = device.into();
    let mut specs = Vec::new();
    for (id, path) in explicit {
        if !path.exists() {
            return Err(EngineError::Invalid {
                param: Some("--model".into()),
                message: format!("--model {id}={}: no such file or folder", path.display()),
            });
        }
        specs.push(spec_for(id, path, device, false));
    }
    if let Ok(entries) = std::fs::read_dir(models_dir) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                (is_diffusers_folder(p) || dalle_mini::detect(p).is_some())
                    && !crate::download::is_incomplete_download(p)
            })
            .collect();
        found.sort();
        for p in found {
            let Some(id) = p.file_name().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            if id == "fixtures" || specs.iter().any(|s| s.id == id) {
                continue;
            }
            info!(model = %id, path = %p.display(), "found model");
            specs.push(spec_for(&id, &p, device, false));
        }
    } else {
        warn!(dir = %models_dir.display(), "models directory not found");
    }
    if !specs.is_empty() {
        return Ok(Discovery { specs, demo: false });
    }
    // Fall back to the fixtures next to the models dir, then to the ones in the source tree.
    let candidates = [
        models_dir.join("fixtures/sd15-tiny"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/sd15-tiny"),
    ];
    let Some(tiny) = candidates.iter().find(|p| is_diffusers_folder(p)) else {
        return Err(EngineError::Invalid {
            param: None,
            message: format!(
                "no models under {} and no demo fixtures found.\n{DEMO_HELP}",
                models_dir.display()
            ),
        });
    };
    specs.push(sd15_spec("sd15-demo", tiny, device, true));
    let dalle_tiny = [
        models_dir.join("fixtures/dalle-tiny/flax"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/dalle-tiny/flax"),
    ];
    if let Some(p) = dalle_tiny.iter().find(|p| dalle_mini::detect(p).is_some()) {
        specs.push(dalle_spec("dalle-mini-demo", p, device, true));
    }
    Ok(Discovery { specs, demo: true })
}
