//! The family catalog: every fact about a model family that more than one layer needs: its
//! native size and size rule, whether it edits images, its default parameters, which request
//! options apply to it, and its download recipe id (which family a folder or file holds is
//! `detect.rs`, the one place that asks the loaders). The CLI, the server, the engine's registry
//! and `kiln models`/`kiln download` all ask here; the model modules read their defaults here.
//!
//! Adding a family: a variant of [`Family`] (and of [`ModelKind`] per published checkpoint),
//! then the compiler lists every `match` below that needs a line.

/// The architectures kiln implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x: txt2img, img2img, inpainting.
    Sd15,
    /// DALL·E Mini and Mega (one architecture, two widths): fixed native 256x256, no edits.
    DalleMini,
}

/// Stable Diffusion 1.5's default parameters (the server's and the CLI's).
pub mod sd15_defaults {
    use crate::schedulers::SchedulerKind;

    /// The Prem SD service's default: diffusers' 50 is too slow for an interactive API, and
    /// PNDM at 25 steps is already converged for SD 1.5.
    pub const STEPS: usize = 25;
    pub const GUIDANCE_SCALE: f64 = 7.5;
    /// SD 1.5's own `scheduler_config.json` class.
    pub const SCHEDULER: SchedulerKind = SchedulerKind::Pndm;
    /// diffusers' img2img default.
    pub const STRENGTH: f64 = 0.8;
    /// diffusers' inpainting default: the masked area is repainted from pure noise.
    pub const INPAINT_STRENGTH: f64 = 1.0;
    /// Its training size.
    pub const SIZE: u32 = 512;
    /// 1 = the last CLIP layer (A1111's "Clip skip" 1).
    pub const CLIP_SKIP: usize = 1;
    /// A variation's strength (`/v1/images/variations`): the input's composition and colours
    /// stay, its details are repainted.
    pub const VARIATION_STRENGTH: f64 = 0.6;
    /// An edit's strength with `input_fidelity: high` (img2img and inpainting alike), where
    /// diffusers' defaults are 0.8 and 1.0.
    pub const HIGH_FIDELITY_STRENGTH: f64 = 0.5;

    /// The steps of each `quality` tier: `medium` is [`STEPS`]; `low` about half for drafts;
    /// `high` diffusers' own default of 50.
    pub fn quality_steps(q: crate::engine::Quality) -> usize {
        match q {
            crate::engine::Quality::Low => 12,
            crate::engine::Quality::Medium => STEPS,
            crate::engine::Quality::High => 50,
        }
    }
}

/// DALL·E Mini/Mega's default sampling parameters: dalle-mini's inference notebook.
pub mod dalle_defaults {
    /// Super-conditioning scale (min-dalle uses 16).
    pub const COND_SCALE: f32 = 10.0;
    pub const TEMPERATURE: f32 = 1.0;
    /// min-dalle uses 256.
    pub const TOP_K: usize = 50;
    /// 1 = nucleus sampling off.
    pub const TOP_P: f32 = 1.0;
}

/// Request options that only one family reads. A request that sets one for the other family
/// is refused (nothing a user sends is dropped silently). Names are the server's field names;
/// the CLI's flags are the same with dashes.
const SD_ONLY: &[&str] = &[
    "negative_prompt",
    "input_fidelity",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "strength",
    "eta",
    "clip_skip",
    "loras",
    "prompt_syntax",
    "vae",
];
const DALLE_ONLY: &[&str] = &[
    "cond_scale",
    "temperature",
    "top_k",
    "top_p",
    "tokenization",
];

impl Family {
    /// The id `/v1/models` reports as `family`.
    pub fn id(self) -> &'static str {
        match self {
            Family::Sd15 => "stable-diffusion-1.5",
            Family::DalleMini => "dalle-mini",
        }
    }

    /// Human name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Family::Sd15 => "Stable Diffusion",
            Family::DalleMini => "DALL·E Mini/Mega",
        }
    }

    /// A family that always renders at one size; other sizes are made by resizing its output.
    pub fn native_size(self) -> Option<(u32, u32)> {
        match self {
            Family::Sd15 => None,
            Family::DalleMini => Some((256, 256)),
        }
    }

    /// The size of a request that names none: the native size, or SD's training size (or the
    /// largest multiple of 8 within `max_side`, where that is smaller).
    pub fn default_size(self, max_side: u32) -> (u32, u32) {
        let sd = sd15_defaults::SIZE.min(max_side / 8 * 8).max(64);
        self.native_size().unwrap_or((sd, sd))
    }

    /// Whether `width x height` is a size this family can deliver, with the reason when not.
    pub fn check_size(self, width: u32, height: u32, max_side: u32) -> Result<(), String> {
        let min = match self {
            // One latent pixel; whether the UNet copes is the model's check.
            Family::Sd15 => 8,
            // The output of a native-size family is a resize: any sensible size works.
            Family::DalleMini => 16,
        };
        if width < min || height < min || width > max_side || height > max_side {
            return Err(format!(
                "each side must be between {min} and {max_side} pixels"
            ));
        }
        if self == Family::Sd15 && !(width.is_multiple_of(8) && height.is_multiple_of(8)) {
            return Err("Stable Diffusion sizes must be multiples of 8".into());
        }
        Ok(())
    }

    /// `None` when the family edits images; else why it cannot.
    pub fn edits_unsupported(self) -> Option<&'static str> {
        match self {
            Family::Sd15 => None,
            Family::DalleMini => {
                Some("DALL·E models cannot edit images; use a Stable Diffusion model for edits")
            }
        }
    }

    /// The first option in `given` that this family does not read, and the family that does.
    pub fn foreign_option<'a>(self, given: &[&'a str]) -> Option<(&'a str, Family)> {
        let (foreign, owner) = match self {
            Family::Sd15 => (DALLE_ONLY, Family::DalleMini),
            Family::DalleMini => (SD_ONLY, Family::Sd15),
        };
        given
            .iter()
            .copied()
            .find(|g| foreign.contains(g))
            .map(|g| (g, owner))
    }
}

/// The add-on folders of a models directory, SD 1.5's: LoRAs (`--lora-dir`), textual-inversion
/// embeddings (`--embeddings-dir`) and TAESD, the tiny autoencoder.
pub const LORAS_DIR: &str = "loras";
pub const EMBEDDINGS_DIR: &str = "embeddings";
pub const TAESD_DIR: &str = "taesd";

/// Folders of a models directory that hold something other than models: the repository's
/// test fixtures and key manifests, and the add-on folders.
pub const NOT_MODEL_DIRS: [&str; 5] = [
    "fixtures",
    "manifests",
    LORAS_DIR,
    EMBEDDINGS_DIR,
    TAESD_DIR,
];

/// What a model folder or file holds: one per published checkpoint, and the ids `kiln download`
/// takes (its recipe ids) and `kiln-source.json` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Sd15,
    DalleMini,
    DalleMega,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::Sd15, ModelKind::DalleMini, ModelKind::DalleMega];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Sd15 => "sd15",
            ModelKind::DalleMini => "dalle-mini",
            ModelKind::DalleMega => "dalle-mega",
        }
    }

    pub fn family(self) -> Family {
        match self {
            ModelKind::Sd15 => Family::Sd15,
            ModelKind::DalleMini | ModelKind::DalleMega => Family::DalleMini,
        }
    }

    /// DALL·E Mega is the 2048-wide DalleBart, Mini the 1024-wide one.
    pub fn of_dalle_width(d_model: usize) -> Self {
        if d_model >= 2048 {
            ModelKind::DalleMega
        } else {
            ModelKind::DalleMini
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let ids: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown model `{s}`; known: {}", ids.join(", "))
            })
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rules() {
        assert_eq!(Family::Sd15.default_size(2048), (512, 512));
        assert_eq!(Family::Sd15.default_size(300), (296, 296));
        assert_eq!(Family::DalleMini.default_size(2048), (256, 256));
        assert!(Family::Sd15.check_size(512, 768, 1024).is_ok());
        assert!(Family::Sd15.check_size(500, 512, 1024).is_err());
        assert!(Family::Sd15.check_size(2048, 512, 1024).is_err());
        assert!(Family::DalleMini.check_size(100, 30, 1024).is_ok());
    }

    #[test]
    fn kinds_round_trip_and_options_belong_to_one_family() {
        for k in ModelKind::ALL {
            assert_eq!(k.as_str().parse::<ModelKind>(), Ok(k));
        }
        assert!("sdxl".parse::<ModelKind>().is_err());
        assert_eq!(ModelKind::of_dalle_width(2048), ModelKind::DalleMega);
        assert_eq!(
            Family::Sd15.foreign_option(&["seed", "top_k"]),
            Some(("top_k", Family::DalleMini))
        );
        assert_eq!(Family::DalleMini.foreign_option(&["prompt", "n"]), None);
        assert_eq!(
            Family::DalleMini.foreign_option(&["strength"]),
            Some(("strength", Family::Sd15))
        );
    }
}
