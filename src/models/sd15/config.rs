//! Architecture configs, read from the diffusers/transformers `config.json` files when present,
//! with the published SD 1.5 values as defaults
//! (<https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/tree/main>).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::models::config::{config_err, read_json};

mod safety;
mod validate;

pub use safety::{ClipVisionConfig, ImageProcessorConfig, SafetyCheckerConfig, SizeSpec};
pub use validate::components_agree;

/// `unet/config.json` (UNet2DConditionModel).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    /// Legacy diffusers name: in SD 1.x this is the number of heads, not the head size.
    pub attention_head_dim: usize,
    pub num_attention_heads: Option<usize>,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub use_linear_projection: bool,
    pub transformer_layers_per_block: usize,
    /// Read only to refuse values other than SD 1.x's, which kiln's blocks hard-code.
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub resnet_out_scale_factor: f64,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            layers_per_block: 2,
            attention_head_dim: 8,
            num_attention_heads: None,
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            use_linear_projection: false,
            transformer_layers_per_block: 1,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            resnet_out_scale_factor: 1.0,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
        }
    }
}

impl UNetConfig {
    pub fn heads(&self) -> usize {
        self.num_attention_heads.unwrap_or(self.attention_head_dim)
    }

    pub fn down_has_attention(&self, i: usize) -> bool {
        self.down_block_types[i].starts_with("CrossAttn")
    }

    pub fn up_has_attention(&self, i: usize) -> bool {
        self.up_block_types[i].starts_with("CrossAttn")
    }

    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }
}

/// `vae/config.json` (AutoencoderKL).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    /// The image size it was trained on: diffusers' tile size when decoding in tiles
    /// (`tile_sample_min_size`). An int, or `[h, w]` of which diffusers uses the first.
    #[serde(deserialize_with = "size_or_pair")]
    pub sample_size: usize,
    /// The VAE overflows in f16 (black/NaN images): keep it in f32 when the rest runs in f16,
    /// as diffusers does for configs with `force_upcast` (default true).
    pub force_upcast: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            sample_size: 512,
            force_upcast: true,
        }
    }
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    /// Pixels per latent cell: 2^(levels − 1).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

fn size_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(usize),
        Pair(Vec<usize>),
    }
    match Size::deserialize(d)? {
        Size::One(s) => Ok(s),
        Size::Pair(v) => v
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("sample_size is an empty list")),
    }
}

/// `config.json` of a TAESD folder (diffusers `AutoencoderTiny`, `madebyollin/taesd`); the
/// defaults are the published ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TaesdConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    /// Stages of `AutoencoderTinyBlock`s; the encoder halves the size before every stage but
    /// the first, the decoder doubles it after every stage but the last.
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub upsampling_scaling_factor: usize,
    pub act_fn: String,
    pub upsample_fn: String,
    /// 1.0: TAESD reads and writes the latents the UNet sees (already scaled).
    pub scaling_factor: f64,
}

impl Default for TaesdConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            upsampling_scaling_factor: 2,
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            scaling_factor: 1.0,
        }
    }
}

impl TaesdConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    /// Pixels per latent cell of the decoder.
    pub fn scale_factor(&self) -> usize {
        self.upsampling_scaling_factor
            .pow(self.num_decoder_blocks.len().saturating_sub(1) as u32)
    }
}

/// `text_encoder/config.json` (transformers CLIPTextModel).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }
}
