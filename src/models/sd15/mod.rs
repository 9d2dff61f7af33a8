//! Stable Diffusion 1.5: CLIP ViT-L/14 text encoder, UNet2DConditionModel, AutoencoderKL,
//! one file per diffusers/transformers module.

pub mod attention;
pub mod clip;
pub mod config;
pub mod embeddings;
pub mod img2img;
pub mod loader;
pub mod pipeline;
pub mod prompt;
pub mod request;
pub mod resnet;
pub mod textual_inversion;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod weights;

pub use img2img::ImageCondition;
pub use loader::Sd15Layout;
pub use pipeline::{GenerateOutput, StableDiffusion, latent_preview};
pub use prompt::PromptSyntax;
pub use request::{GenerateRequest, NoiseOverrides};
pub use textual_inversion::{Embedding, EmbeddingInfo, Embeddings};
