//! The `usage` object of image responses and completed stream events, from the engine's
//! [`TokenUsage`](crate::engine::TokenUsage).

use poem_openapi::Object;

/// Tokens the request consumed and produced, in each family's own units (README "Usage"):
/// SD: CLIP prompt tokens, and one image token per 8×8-pixel latent position; DALL·E: BART
/// prompt tokens, and 256 image tokens per image.
#[derive(Object, Debug, Clone, Default)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub total_tokens: u32,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens_details: OutputTokensDetails,
}

#[derive(Object, Debug, Clone, Default)]
pub struct InputTokensDetails {
    pub text_tokens: u32,
    /// An edit's or variation's input image.
    pub image_tokens: u32,
}

#[derive(Object, Debug, Clone, Default)]
pub struct OutputTokensDetails {
    /// Always 0: kiln's models produce no text.
    pub text_tokens: u32,
    pub image_tokens: u32,
}

impl From<crate::engine::TokenUsage> for Usage {
    fn from(u: crate::engine::TokenUsage) -> Self {
        Self {
            input_tokens: u.input_tokens(),
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens(),
            input_tokens_details: InputTokensDetails {
                text_tokens: u.text_tokens,
                image_tokens: u.image_tokens,
            },
            output_tokens_details: OutputTokensDetails {
                text_tokens: 0,
                image_tokens: u.output_tokens,
            },
        }
    }
}
