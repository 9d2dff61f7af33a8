//! What a finished job hands back besides its images: the tokens the model consumed and
//! produced (the API's `usage`), and the images the safety checker withheld.
//!
//! The moderation rule lives here, once, for the server and the CLI: a flagged image is never
//! handed back; when every image of a job is flagged the job fails with
//! [`EngineError::Blocked`]; when only some are, the others are returned and the withheld ones
//! are listed by index and seed (the server says so in the response, the CLI on stderr).

use super::{EngineError, GeneratedImage};

/// Tokens, counted in each family's own units (the README's "usage" section says what they
/// mean for each family).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens the text encoder read (negative prompt included), without padding.
    pub text_tokens: u32,
    /// Positions of the input image the model consumed (edits and variations).
    pub image_tokens: u32,
    /// Image positions the model produced, over all `n` images.
    pub output_tokens: u32,
}

impl TokenUsage {
    pub fn input_tokens(&self) -> u32 {
        self.text_tokens + self.image_tokens
    }

    pub fn total_tokens(&self) -> u32 {
        self.input_tokens() + self.output_tokens
    }
}

/// How strictly the safety checker judges a job's images (the API's `moderation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Moderation {
    /// The checker's own thresholds, as diffusers applies them.
    #[default]
    Auto,
    /// Less strict: see [`Moderation::adjustment`].
    Low,
}

impl Moderation {
    /// diffusers' `adjustment`, added to every concept score before the `> 0` test (it ships
    /// 0.0; a positive value is stricter). `low` lowers every score by 0.02, so an image is only
    /// flagged where its cosine similarity to a concept clears the concept's threshold by more
    /// than 0.02 — on the order of the 0.01 diffusers itself adds for special-care hits.
    pub fn adjustment(self) -> f32 {
        match self {
            Moderation::Auto => 0.0,
            Moderation::Low => -0.02,
        }
    }
}

impl std::str::FromStr for Moderation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Moderation::Auto),
            "low" => Ok(Moderation::Low),
            other => Err(format!(
                "unknown moderation `{other}`: expected `auto` or `low`"
            )),
        }
    }
}

/// An image the safety checker withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withheld {
    /// Its index among the job's `n` images.
    pub index: usize,
    pub seed: u64,
}

/// A finished job: the images that may be returned, in order, and what was withheld.
#[derive(Debug, Clone, Default)]
pub struct JobOutput {
    pub images: Vec<GeneratedImage>,
    pub withheld: Vec<Withheld>,
    pub usage: TokenUsage,
}

impl JobOutput {
    /// Splits `images` by `flagged` (one flag per image): the flagged ones are dropped and
    /// listed; all of them flagged is [`EngineError::Blocked`].
    pub fn moderated(
        images: Vec<GeneratedImage>,
        flagged: &[bool],
        usage: TokenUsage,
    ) -> Result<Self, EngineError> {
        if flagged.len() != images.len() {
            return Err(EngineError::Failed(format!(
                "the safety checker judged {} of {} images",
                flagged.len(),
                images.len()
            )));
        }
        let n = images.len();
        let mut out = JobOutput {
            usage,
            ..Self::default()
        };
        for (index, (g, &bad)) in images.into_iter().zip(flagged).enumerate() {
            if bad {
                out.withheld.push(Withheld {
                    index,
                    seed: g.seed,
                });
            } else {
                out.images.push(g);
            }
        }
        if out.images.is_empty() && n > 0 {
            return Err(EngineError::Blocked { images: n });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(seed: u64) -> GeneratedImage {
        GeneratedImage::new(image::RgbImage::new(8, 8), seed)
    }

    #[test]
    fn flagged_images_are_withheld_and_listed() {
        let usage = TokenUsage {
            text_tokens: 5,
            image_tokens: 0,
            output_tokens: 3,
        };
        let out = JobOutput::moderated(
            vec![img(10), img(11), img(12)],
            &[false, true, false],
            usage,
        )
        .expect("two pass");
        let seeds: Vec<u64> = out.images.iter().map(|g| g.seed).collect();
        assert_eq!(seeds, [10, 12]);
        assert_eq!(out.withheld, [Withheld { index: 1, seed: 11 }]);
        assert_eq!(out.usage.total_tokens(), 8);
    }

    #[test]
    fn all_flagged_is_blocked() {
        let e = JobOutput::moderated(vec![img(1), img(2)], &[true, true], TokenUsage::default())
            .expect_err("blocked");
        assert!(matches!(e, EngineError::Blocked { images: 2 }));
    }

    #[test]
    fn moderation_names() {
        assert_eq!("LOW".parse::<Moderation>(), Ok(Moderation::Low));
        assert!("strict".parse::<Moderation>().is_err());
        assert!(Moderation::Low.adjustment() < Moderation::Auto.adjustment());
    }
}
