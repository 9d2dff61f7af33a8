//! Which model a folder or file holds. The one place the catalog asks the loaders' layout
//! rules (kept apart from `family.rs`, which the model modules read, so no import circle).

use std::path::Path;

use super::family::ModelKind;
use super::{dalle_mini, sd15};

impl ModelKind {
    /// What `path` holds: a DALL·E folder when its files say so (Mega by the `d_model` of its
    /// `config.json`; Mini without one), else Stable Diffusion when its loader recognises the
    /// layout (a diffusers folder, a single checkpoint, or a folder holding one).
    pub fn detect(path: &Path) -> Option<Self> {
        if path.is_dir() && dalle_mini::detect(path).is_some() {
            let d_model = std::fs::read_to_string(path.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("d_model")?.as_u64());
            return Some(
                d_model.map_or(ModelKind::DalleMini, |d| Self::of_dalle_width(d as usize)),
            );
        }
        sd15::Sd15Layout::detect(path)
            .is_ok()
            .then_some(ModelKind::Sd15)
    }
}
