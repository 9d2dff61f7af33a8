//! Architecture configs, read from the diffusers/transformers `config.json` files when present,
//! with the published SD 1.5 values as defaults
//! (<https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/tree/main>).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::models::config::{
    MAX_CHANNELS, MAX_GROUPS, MAX_HEADS, MAX_LAYERS, MAX_LEVELS, MAX_POSITIONS, MAX_SAMPLE,
    MAX_VOCAB, all_in_range, config_err, in_range, positive, read_json,
};

type Check = std::result::Result<(), String>;

/// Image channels every pipeline reads and writes (RGB).
const RGB: usize = 3;

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

    fn validate(&self) -> Check {
        all_in_range(
            "block_out_channels",
            &self.block_out_channels,
            1,
            MAX_CHANNELS,
            MAX_LEVELS,
        )?;
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err("`block_out_channels`, `down_block_types` and `up_block_types` must have the same length".into());
        }
        for t in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(
                t.as_str(),
                "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D"
            ) {
                return Err(format!("block type `{t}` is not part of the SD 1.x UNet"));
            }
        }
        in_range("in_channels", self.in_channels, 1, MAX_CHANNELS)?;
        in_range("out_channels", self.out_channels, 1, MAX_CHANNELS)?;
        in_range("layers_per_block", self.layers_per_block, 1, MAX_LAYERS)?;
        in_range(
            "transformer_layers_per_block",
            self.transformer_layers_per_block,
            1,
            MAX_LAYERS,
        )?;
        in_range(
            "cross_attention_dim",
            self.cross_attention_dim,
            1,
            MAX_CHANNELS,
        )?;
        match self.num_attention_heads {
            Some(h) => in_range("num_attention_heads", h, 1, MAX_HEADS)?,
            None => in_range("attention_head_dim", self.attention_head_dim, 1, MAX_HEADS)?,
        }
        in_range("norm_num_groups", self.norm_num_groups, 1, MAX_GROUPS)?;
        positive("norm_eps", self.norm_eps, 1.0)?;
        let heads = match self.num_attention_heads {
            Some(_) => "num_attention_heads",
            None => "attention_head_dim",
        };
        divides(
            &self.block_out_channels,
            self.norm_num_groups,
            "norm_num_groups",
        )?;
        divides(&self.block_out_channels, self.heads(), heads)?;
        // The sinusoid's exponent divides by half the embedding width minus the shift.
        let half = (self.block_out_channels[0] / 2) as f64;
        if !(self.freq_shift.is_finite() && self.freq_shift >= 0.0 && self.freq_shift < half) {
            return Err(format!(
                "`freq_shift` is {}; it must be at least 0 and below {half}",
                self.freq_shift
            ));
        }
        for (field, v, want) in [
            ("downsample_padding", self.downsample_padding as f64, 1.0),
            ("mid_block_scale_factor", self.mid_block_scale_factor, 1.0),
            ("resnet_out_scale_factor", self.resnet_out_scale_factor, 1.0),
            ("conv_in_kernel", self.conv_in_kernel as f64, 3.0),
            ("conv_out_kernel", self.conv_out_kernel as f64, 3.0),
        ] {
            if v != want {
                return Err(format!(
                    "`{field}` is {v}; only SD 1.x's {want} is supported"
                ));
            }
        }
        Ok(())
    }
}

/// Checks every width in `block_out_channels` divides by `by` (named `field`).
fn divides(widths: &[usize], by: usize, field: &str) -> Check {
    match widths.iter().find(|&&c| !c.is_multiple_of(by)) {
        Some(c) => Err(format!(
            "`block_out_channels` entry {c} does not divide by `{field}` {by}"
        )),
        None => Ok(()),
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

    fn validate(&self) -> Check {
        all_in_range(
            "block_out_channels",
            &self.block_out_channels,
            1,
            MAX_CHANNELS,
            MAX_LEVELS,
        )?;
        in_range("in_channels", self.in_channels, RGB, RGB)?;
        in_range("out_channels", self.out_channels, RGB, RGB)?;
        in_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)?;
        in_range("layers_per_block", self.layers_per_block, 1, MAX_LAYERS)?;
        in_range("norm_num_groups", self.norm_num_groups, 1, MAX_GROUPS)?;
        divides(
            &self.block_out_channels,
            self.norm_num_groups,
            "norm_num_groups",
        )?;
        positive("scaling_factor", self.scaling_factor, 100.0)?;
        // Tiled decoding cuts latents into tiles of sample_size / scale_factor cells.
        let f = self.scale_factor();
        in_range("sample_size", self.sample_size, 8 * f, MAX_SAMPLE)?;
        if !self.sample_size.is_multiple_of(f) {
            return Err(format!(
                "`sample_size` {} does not divide by the VAE's scale factor {f}",
                self.sample_size
            ));
        }
        Ok(())
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

    fn validate(&self) -> Check {
        in_range("in_channels", self.in_channels, RGB, RGB)?;
        in_range("out_channels", self.out_channels, RGB, RGB)?;
        in_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)?;
        for (what, ch, blocks) in [
            (
                "encoder",
                &self.encoder_block_out_channels,
                &self.num_encoder_blocks,
            ),
            (
                "decoder",
                &self.decoder_block_out_channels,
                &self.num_decoder_blocks,
            ),
        ] {
            all_in_range(
                &format!("{what}_block_out_channels"),
                ch,
                1,
                MAX_CHANNELS,
                MAX_LEVELS,
            )?;
            all_in_range(
                &format!("num_{what}_blocks"),
                blocks,
                1,
                MAX_LAYERS,
                MAX_LEVELS,
            )?;
            // diffusers builds every block and stage conv as c -> c: other widths do not run.
            if ch.len() != blocks.len() || ch.iter().any(|&c| c != ch[0]) {
                return Err(format!(
                    "`{what}_block_out_channels` must be one width per stage (`num_{what}_blocks`), got {ch:?} and {blocks:?}"
                ));
            }
        }
        if self.act_fn != "relu" || self.upsample_fn != "nearest" {
            return Err(format!(
                "only `act_fn` \"relu\" with `upsample_fn` \"nearest\" is supported, got {:?} / {:?}",
                self.act_fn, self.upsample_fn
            ));
        }
        // The encoder halves the size with stride-2 convs: the decoder must double it back.
        in_range(
            "upsampling_scaling_factor",
            self.upsampling_scaling_factor,
            2,
            2,
        )?;
        positive("scaling_factor", self.scaling_factor, 100.0)
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

    fn validate(&self) -> Check {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!("`hidden_act` `{}` not supported", self.hidden_act));
        }
        in_range("vocab_size", self.vocab_size, 1, MAX_VOCAB)?;
        in_range("hidden_size", self.hidden_size, 1, MAX_CHANNELS)?;
        in_range("intermediate_size", self.intermediate_size, 1, MAX_CHANNELS)?;
        in_range("num_hidden_layers", self.num_hidden_layers, 1, MAX_LAYERS)?;
        in_range(
            "num_attention_heads",
            self.num_attention_heads,
            1,
            MAX_HEADS,
        )?;
        // Every prompt chunk is CHUNK_LEN tokens between BOS and EOS.
        let ids = super::prompt::CHUNK_LEN + 2;
        in_range(
            "max_position_embeddings",
            self.max_position_embeddings,
            ids,
            MAX_POSITIONS,
        )?;
        positive("layer_norm_eps", self.layer_norm_eps, 1.0)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} does not divide by `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}
