//! Which models to serve: `--model ID=PATH` entries, real diffusers folders under the models
//! directory, or, when there are none, the tiny demo models from `models/fixtures/`.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::{AddOns, EngineError, Family, Loader, ServedModel, dalle_loader, sd15_loader};
use crate::models::ModelKind;
use crate::models::family::NOT_MODEL_DIRS;
use crate::precision::{Placement, Placements};

/// Printed when only demo models are served.
pub const DEMO_HELP: &str = "To serve real Stable Diffusion 1.5 weights, put a diffusers folder under models/: \
`kiln download sd15` fetches one, or\n  \
hf download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json 'scheduler/*' 'tokenizer/*' \
text_encoder/config.json text_encoder/model.safetensors unet/config.json unet/diffusion_pytorch_model.safetensors \
vae/config.json vae/diffusion_pytorch_model.safetensors safety_checker/config.json safety_checker/model.safetensors \
feature_extractor/preprocessor_config.json --local-dir models/sd15\n\
or pass --model ID=PATH (a diffusers folder or a .safetensors/.ckpt file), then restart.";

/// The models found, and whether they are only the demo fallback.
#[derive(Debug)]
pub struct Discovery {
    pub specs: Vec<ServedModel>,
    pub demo: bool,
}

/// How to load a `kind` model from `path`. `name` goes into the images' infotext; `edits`
/// keeps what edits need (SD's VAE encoder); an SD model also takes `addons`' embeddings and
/// TAESD.
pub fn loader_for(
    kind: ModelKind,
    path: &Path,
    name: &str,
    place: Placement,
    edits: bool,
    addons: &AddOns,
) -> Loader {
    match kind.family() {
        Family::Sd15 => sd15_loader(
            path.to_path_buf(),
            name.into(),
            place,
            edits,
            addons.clone(),
        ),
        Family::DalleMini => dalle_loader(path.to_path_buf(), place),
    }
}

/// One [`ServedModel`] per device of `places`: the model's replicas.
fn served(
    id: &str,
    kind: ModelKind,
    path: &Path,
    places: &Placements,
    demo: bool,
    addons: &AddOns,
) -> Vec<ServedModel> {
    places
        .iter()
        .map(|(label, place)| ServedModel {
            id: id.to_string(),
            family: kind.family(),
            device: label.to_string(),
            source: path.display().to_string(),
            demo,
            loader: loader_for(kind, path, id, place, true, addons),
        })
        .collect()
}

/// Explicit models first (in the order given), then every diffusers folder directly under
/// `models_dir` except the catalog's `NOT_MODEL_DIRS` (id = folder name); with neither, the demo
/// models. SD models load with `addons`. Every model gets one replica per device of `devices`
/// (in `specs`, a model's replicas follow each other).
pub fn discover(
    models_dir: &Path,
    explicit: &[(String, PathBuf)],
    devices: impl Into<Placements>,
    addons: &AddOns,
) -> Result<Discovery, EngineError> {
    let places = devices.into();
    let mut specs = Vec::new();
    for (id, path) in explicit {
        if !path.exists() {
            return Err(EngineError::Invalid {
                param: Some("--model".into()),
                message: format!("--model {id}={}: no such file or folder", path.display()),
            });
        }
        let kind = ModelKind::detect(path).ok_or_else(|| EngineError::Invalid {
            param: Some("--model".into()),
            message: format!(
                "--model {id}={}: not a model kiln recognises (an SD 1.5 diffusers folder or \
                 checkpoint, or a DALL·E Mini/Mega folder)",
                path.display()
            ),
        })?;
        specs.extend(served(id, kind, path, &places, false, addons));
    }
    if let Ok(entries) = std::fs::read_dir(models_dir) {
        let mut found: Vec<(PathBuf, ModelKind)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !crate::download::is_incomplete_download(p))
            .filter_map(|p| ModelKind::detect(&p).map(|k| (p, k)))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, kind) in found {
            let Some(id) = p.file_name().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            if NOT_MODEL_DIRS.contains(&id.as_str()) || specs.iter().any(|s| s.id == id) {
                continue;
            }
            info!(model = %id, kind = %kind, path = %p.display(), "found model");
            specs.extend(served(&id, kind, &p, &places, false, addons));
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
    let Some(tiny) = candidates
        .iter()
        .find(|p| p.is_dir() && ModelKind::detect(p) == Some(ModelKind::Sd15))
    else {
        return Err(EngineError::Invalid {
            param: None,
            message: format!(
                "no models under {} and no demo fixtures found.\n{DEMO_HELP}",
                models_dir.display()
            ),
        });
    };
    specs.extend(served(
        "sd15-demo",
        ModelKind::Sd15,
        tiny,
        &places,
        true,
        addons,
    ));
    let dalle_tiny = [
        models_dir.join("fixtures/dalle-tiny/flax"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/dalle-tiny/flax"),
    ];
    if let Some((p, kind)) = dalle_tiny.iter().find_map(|p| {
        ModelKind::detect(p)
            .filter(|k| k.family() == Family::DalleMini)
            .map(|k| (p, k))
    }) {
        specs.extend(served("dalle-mini-demo", kind, p, &places, true, addons));
    }
    Ok(Discovery { specs, demo: true })
}
