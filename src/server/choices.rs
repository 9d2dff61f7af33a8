//! The OpenAI Images API's named choices that kiln reads, as the spec lists them. What each one
//! does is the engine's (`engine/params/choices.rs`, `engine/output.rs`); `background` is the
//! server's own, checked in [`check_background`].

use poem_openapi::Enum;

use super::error::ApiError;

/// `quality`: `low`, `medium`, `high`; `standard` (= medium) and `hd` (= high) as DALL·E 3 names
/// them; `auto` = medium. Stable Diffusion: the step count when `num_inference_steps` is not
/// given (12, 25, 50). DALL·E Mini/Mega: one quality, `medium`; `low`/`high` are refused.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum QualityParam {
    Auto,
    Low,
    Medium,
    High,
    Standard,
    Hd,
}

/// The quality tier a response was made at.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum QualityTier {
    Low,
    Medium,
    High,
}

impl From<crate::engine::Quality> for QualityTier {
    fn from(q: crate::engine::Quality) -> Self {
        match q {
            crate::engine::Quality::Low => QualityTier::Low,
            crate::engine::Quality::Medium => QualityTier::Medium,
            crate::engine::Quality::High => QualityTier::High,
        }
    }
}

/// `background`: kiln's models paint opaque images, so `transparent` is refused (400).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[oai(rename_all = "lowercase")]
pub enum Background {
    #[default]
    Auto,
    Opaque,
    Transparent,
}

/// `moderation` (when the server runs the SD safety checker): `auto` its standard threshold,
/// `low` a less strict one (README "Moderation").
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ModerationParam {
    Auto,
    Low,
}

/// `input_fidelity` (edits): `high` keeps more of the input (SD: strength 0.5 when `strength` is
/// not given), `low` is the default (diffusers' 0.8, inpainting 1.0).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum InputFidelityParam {
    Low,
    High,
}

impl QualityParam {
    /// The name the engine parses (`engine::Quality::parse`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Standard => "standard",
            Self::Hd => "hd",
        }
    }
}

impl ModerationParam {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Low => "low",
        }
    }
}

impl InputFidelityParam {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::High => "high",
        }
    }
}

/// `transparent` cannot be made: refused with the reason. `style` (DALL·E 3's `vivid` /
/// `natural`) has no counterpart in kiln's models: refused too rather than ignored.
pub fn check_background(
    background: Option<Background>,
    style: Option<&str>,
) -> Result<(), ApiError> {
    if background == Some(Background::Transparent) {
        return Err(ApiError::invalid(
            "background",
            "`background: transparent` is not supported: Stable Diffusion 1.5 and DALL·E Mini \
             paint every pixel (they have no alpha channel to generate); use `opaque` or `auto`",
        )
        .code("unsupported"));
    }
    if let Some(s) = style.map(str::trim).filter(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "style",
            format!(
                "`style: {s}` is a DALL·E 3 option; kiln's models have no style setting \
                 (describe the style in the prompt)"
            ),
        )
        .code("unsupported"));
    }
    Ok(())
}
