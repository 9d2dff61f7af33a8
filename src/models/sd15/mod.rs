//! Stable Diffusion 1.5: CLIP ViT-L/14 text encoder, UNet2DConditionModel, AutoencoderKL (and
//! TAESD's AutoencoderTiny), the safety checker (CLIP ViT-L/14 vision tower), one file per
//! diffusers/transformers module.

pub mod attention;
pub mod autoencoder_tiny;
pub mod clip;
pub mod clip_image_processor;
pub mod clip_vision;
pub mod config;
mod decode;
pub mod embeddings;
pub mod img2img;
pub mod loader;
pub mod lora;
pub mod pipeline;
pub mod prompt;
pub mod request;
pub mod resnet;
pub mod safety_checker;
pub mod textual_inversion;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod vae_tiling;
pub mod weights;

pub use autoencoder_tiny::AutoencoderTiny;
pub use decode::latent_preview;
pub use img2img::ImageCondition;
pub use loader::Sd15Layout;
pub use lora::{LoraInfo, LoraSpec};
pub use pipeline::{GenerateOutput, StableDiffusion};
pub use prompt::PromptSyntax;
pub use request::{GenerateRequest, NoiseOverrides, VaeChoice};
pub use safety_checker::{SafetyChecker, SafetyVerdict};
pub use textual_inversion::{Embedding, EmbeddingInfo, Embeddings};
pub use vae_tiling::VaeTiling;
