//! OpenAI's named choices that have no knob of the same name in kiln's models, and what each
//! one does here: `quality` picks SD's step count, `input_fidelity` an edit's strength, and a
//! variation is an image-to-image job with its own strength. DALL·E has one quality and no
//! edits, so it refuses what it cannot do rather than ignoring it.

use super::invalid;
use crate::engine::EngineError;
use crate::models::Family;
use crate::models::family::sd15_defaults;

/// The API's `quality`: `low`, `medium`, `high`, and the spellings of older models
/// (`standard` = medium, `hd` = high); `auto` = medium.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Quality {
    Low,
    #[default]
    Medium,
    High,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Low => "low",
            Quality::Medium => "medium",
            Quality::High => "high",
        }
    }

    /// `None` for absent or empty.
    pub fn parse(v: Option<&str>) -> Result<Option<Self>, EngineError> {
        let Some(s) = v.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Some(Quality::Low)),
            "medium" | "standard" | "auto" => Ok(Some(Quality::Medium)),
            "high" | "hd" => Ok(Some(Quality::High)),
            _ => Err(invalid(
                "quality",
                format!("unknown quality `{s}`: expected low, medium, high, standard, hd or auto"),
            )),
        }
    }

    /// The denoising steps this tier stands for when the request gives none; `Err` where the
    /// family has only one quality.
    pub fn steps(self, family: Family) -> Result<Option<u32>, EngineError> {
        match (family, self) {
            (Family::Sd15, q) => Ok(Some(sd15_defaults::quality_steps(q) as u32)),
            (Family::DalleMini, Quality::Medium) => Ok(None),
            (Family::DalleMini, q) => Err(EngineError::Unsupported {
                param: Some("quality".into()),
                message: format!(
                    "DALL·E Mini/Mega has one quality (`medium`): it always samples 256 image \
                     tokens, so there is no `{}` to give",
                    q.as_str()
                ),
            }),
        }
    }
}

/// The API's `input_fidelity` (edits): how closely the result keeps the input image. kiln reads
/// it as the default strength of an SD edit; an explicit `strength` wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFidelity {
    Low,
    High,
}

impl InputFidelity {
    pub fn parse(v: Option<&str>) -> Result<Option<Self>, EngineError> {
        let Some(s) = v.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match s.to_ascii_lowercase().as_str() {
            "low" => Ok(Some(InputFidelity::Low)),
            "high" => Ok(Some(InputFidelity::High)),
            _ => Err(invalid(
                "input_fidelity",
                format!("unknown input_fidelity `{s}`: expected low or high"),
            )),
        }
    }
}

/// The strength an SD edit runs at: `strength` when given; else a variation's, else the
/// fidelity's (`high`), else `None` (the pipeline's img2img or inpainting default).
pub fn edit_strength(
    strength: Option<f64>,
    fidelity: Option<InputFidelity>,
    variation: bool,
) -> Option<f64> {
    strength.or(match (variation, fidelity) {
        (true, _) => Some(sd15_defaults::VARIATION_STRENGTH),
        (false, Some(InputFidelity::High)) => Some(sd15_defaults::HIGH_FIDELITY_STRENGTH),
        (false, _) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_names_and_steps() {
        assert_eq!(Quality::parse(Some("HD")).unwrap(), Some(Quality::High));
        assert_eq!(Quality::parse(Some("auto")).unwrap(), Some(Quality::Medium));
        assert_eq!(Quality::parse(Some(" ")).unwrap(), None);
        assert!(Quality::parse(Some("ultra")).is_err());
        let sd = |q: Quality| q.steps(Family::Sd15).unwrap().unwrap();
        assert!(sd(Quality::Low) < sd(Quality::Medium) && sd(Quality::Medium) < sd(Quality::High));
        assert_eq!(sd(Quality::Medium) as usize, sd15_defaults::STEPS);
        assert_eq!(Quality::Medium.steps(Family::DalleMini).unwrap(), None);
        assert!(Quality::High.steps(Family::DalleMini).is_err());
    }

    #[test]
    fn edit_strength_order() {
        let high = Some(InputFidelity::High);
        assert_eq!(edit_strength(Some(0.3), high, true), Some(0.3));
        assert_eq!(
            edit_strength(None, high, true),
            Some(sd15_defaults::VARIATION_STRENGTH)
        );
        assert_eq!(
            edit_strength(None, high, false),
            Some(sd15_defaults::HIGH_FIDELITY_STRENGTH)
        );
        assert_eq!(edit_strength(None, Some(InputFidelity::Low), false), None);
    }
}
