//! Configurations: dalle-mini's `config.json` (DalleBartConfig) and the VQGAN's (vqgan-jax
//! `VQGANConfig`), with the published values as defaults.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::models::config::{
    MAX_CHANNELS, MAX_HEADS, MAX_LAYERS, MAX_LEVELS, MAX_POSITIONS, MAX_SAMPLE, MAX_VOCAB,
    all_in_range, config_err, in_range, positive, read_json,
};

/// The fields of dalle-mini's `DalleBartConfig` that change the computation. Flags of variants
/// that were never published (swinv2, cosine attention, …) are read only to be rejected.
#[derive(Debug, Clone, Deserialize)]
pub struct DalleBartConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub encoder_vocab_size: usize,
    /// Codebook entries the decoder can emit; its embedding and lm_head have one more row.
    pub image_vocab_size: usize,
    #[serde(default = "d_image_length")]
    pub image_length: usize,
    #[serde(default = "d_max_text_length")]
    pub max_text_length: usize,
    #[serde(default = "d_start")]
    pub decoder_start_token_id: u32,
    #[serde(default = "d_true")]
    pub normalize_text: bool,
    #[serde(default = "d_layernorm")]
    pub ln_type: String,
    #[serde(default = "d_normformer")]
    pub ln_positions: String,
    #[serde(default = "d_true")]
    pub use_glu: bool,
    #[serde(default)]
    pub use_bias: bool,
    #[serde(default)]
    pub force_ln_scale: bool,
    #[serde(default = "d_true")]
    pub use_final_ln_encoder: bool,
    #[serde(default = "d_true")]
    pub use_final_ln_decoder: bool,
    #[serde(default)]
    pub use_head_scale: bool,
    #[serde(default)]
    pub use_cosine_attention: bool,
    #[serde(default)]
    pub use_deepnet_scaling: bool,
    #[serde(default)]
    pub use_alibi: bool,
    #[serde(default)]
    pub use_swin_position_embeddings: bool,
    #[serde(default = "d_true")]
    pub use_absolute_position_embeddings: bool,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "d_one")]
    pub sinkhorn_iters: usize,
    #[serde(default = "d_gelu")]
    pub activation_function: String,
}

fn d_image_length() -> usize {
    256
}
fn d_max_text_length() -> usize {
    64
}
fn d_start() -> u32 {
    16384
}
fn d_true() -> bool {
    true
}
fn d_one() -> usize {
    1
}
fn d_layernorm() -> String {
    "layernorm".into()
}
fn d_normformer() -> String {
    "normformer".into()
}
fn d_gelu() -> String {
    "gelu".into()
}

/// LayerNorm epsilon of every DalleBart norm.
pub const LN_EPS: f64 = 1e-5;

impl DalleBartConfig {
    /// The published dalle-mini (mini-1) shapes.
    pub fn mini() -> Self {
        Self::published(1024, 12, 16, 2730, 50264, 16384)
    }

    /// The published dalle-mega (mega-1) shapes.
    pub fn mega() -> Self {
        Self::published(2048, 24, 32, 4096, 50272, 16415)
    }

    fn published(
        d: usize,
        layers: usize,
        heads: usize,
        ffn: usize,
        text: usize,
        image: usize,
    ) -> Self {
        let json = serde_json::json!({
            "d_model": d, "encoder_layers": layers, "decoder_layers": layers,
            "encoder_attention_heads": heads, "decoder_attention_heads": heads,
            "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn,
            "encoder_vocab_size": text, "image_vocab_size": image,
        });
        serde_json::from_value(json).expect("published config is valid")
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    /// Rows of the decoder embedding and lm_head.
    pub fn image_rows(&self) -> usize {
        self.image_vocab_size + 1
    }

    /// Only the published architecture is implemented; anything else is refused by name.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let unsupported = [
            (self.ln_type != "layernorm", "ln_type"),
            (self.ln_positions != "normformer", "ln_positions"),
            (!self.use_glu, "use_glu=false"),
            (self.use_bias, "use_bias=true"),
            (self.force_ln_scale, "force_ln_scale=true"),
            (
                !self.use_final_ln_encoder || !self.use_final_ln_decoder,
                "use_final_ln_*=false",
            ),
            (self.use_head_scale, "use_head_scale"),
            (self.use_cosine_attention, "use_cosine_attention"),
            (self.use_deepnet_scaling, "use_deepnet_scaling"),
            (self.use_alibi, "use_alibi"),
            (
                self.use_swin_position_embeddings,
                "use_swin_position_embeddings",
            ),
            (
                !self.use_absolute_position_embeddings,
                "use_absolute_position_embeddings=false",
            ),
            (self.scale_embedding, "scale_embedding"),
            (self.sinkhorn_iters != 1, "sinkhorn_iters"),
            (self.activation_function != "gelu", "activation_function"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(format!(
                "`{what}` is not supported (only the published normformer + GLU DalleBart is)"
            ));
        }
        in_range("d_model", self.d_model, 1, MAX_CHANNELS)?;
        in_range("encoder_layers", self.encoder_layers, 1, MAX_LAYERS)?;
        in_range("decoder_layers", self.decoder_layers, 1, MAX_LAYERS)?;
        in_range("encoder_ffn_dim", self.encoder_ffn_dim, 1, MAX_CHANNELS)?;
        in_range("decoder_ffn_dim", self.decoder_ffn_dim, 1, MAX_CHANNELS)?;
        in_range("encoder_vocab_size", self.encoder_vocab_size, 1, MAX_VOCAB)?;
        in_range("image_vocab_size", self.image_vocab_size, 1, MAX_VOCAB)?;
        in_range("image_length", self.image_length, 1, MAX_POSITIONS)?;
        // Every text row holds BOS and EOS.
        in_range("max_text_length", self.max_text_length, 2, MAX_POSITIONS)?;
        for (heads, name) in [
            (self.encoder_attention_heads, "encoder"),
            (self.decoder_attention_heads, "decoder"),
        ] {
            in_range(&format!("{name}_attention_heads"), heads, 1, MAX_HEADS)?;
            if !self.d_model.is_multiple_of(heads) {
                return Err(format!(
                    "`d_model` {} is not divisible by `{name}_attention_heads` {heads}",
                    self.d_model
                ));
            }
        }
        if self.decoder_start_token_id as usize >= self.image_rows() {
            return Err(format!(
                "`decoder_start_token_id` {} is outside the {} image rows",
                self.decoder_start_token_id,
                self.image_rows()
            ));
        }
        Ok(())
    }
}

/// The VQGAN decoder's configuration (vqgan-jax `VQGANConfig` field names).
#[derive(Debug, Clone, Deserialize)]
pub struct VqganConfig {
    #[serde(default = "d_ch")]
    pub ch: usize,
    #[serde(default = "d_ch_mult")]
    pub ch_mult: Vec<usize>,
    #[serde(default = "d_res_blocks")]
    pub num_res_blocks: usize,
    #[serde(default = "d_attn_res")]
    pub attn_resolutions: Vec<usize>,
    #[serde(default = "d_z")]
    pub z_channels: usize,
    #[serde(default = "d_z")]
    pub embed_dim: usize,
    #[serde(default = "d_n_embed")]
    pub n_embed: usize,
    #[serde(default = "d_resolution")]
    pub resolution: usize,
    #[serde(default = "d_out_ch")]
    pub out_ch: usize,
    /// GroupNorm epsilon: 1e-6 in taming and vqgan-jax (min-dalle uses torch's 1e-5).
    #[serde(default = "d_gn_eps")]
    pub groupnorm_eps: f64,
}

fn d_ch() -> usize {
    128
}
fn d_ch_mult() -> Vec<usize> {
    vec![1, 1, 2, 2, 4]
}
fn d_res_blocks() -> usize {
    2
}
fn d_attn_res() -> Vec<usize> {
    vec![16]
}
fn d_z() -> usize {
    256
}
fn d_n_embed() -> usize {
    16384
}
fn d_resolution() -> usize {
    256
}
fn d_out_ch() -> usize {
    3
}
fn d_gn_eps() -> f64 {
    1e-6
}

/// GroupNorm groups in every taming VQGAN norm.
pub const GROUPS: usize = 32;

impl Default for VqganConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

impl VqganConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        in_range("ch", self.ch, 1, MAX_CHANNELS)?;
        all_in_range("ch_mult", &self.ch_mult, 1, MAX_CHANNELS, MAX_LEVELS)?;
        for m in &self.ch_mult {
            let c = m.saturating_mul(self.ch);
            if c > MAX_CHANNELS || !c.is_multiple_of(GROUPS) {
                return Err(format!(
                    "`ch` {} × `ch_mult` entry {m} = {c} channels: at most {MAX_CHANNELS}, in {GROUPS} groups",
                    self.ch
                ));
            }
        }
        in_range("num_res_blocks", self.num_res_blocks, 1, MAX_LAYERS)?;
        in_range("z_channels", self.z_channels, 1, MAX_CHANNELS)?;
        in_range("embed_dim", self.embed_dim, 1, MAX_CHANNELS)?;
        in_range("n_embed", self.n_embed, 1, MAX_VOCAB)?;
        in_range("out_ch", self.out_ch, 3, 3)?;
        in_range("resolution", self.resolution, 1, MAX_SAMPLE)?;
        positive("groupnorm_eps", self.groupnorm_eps, 1.0)?;
        let up = 1 << (self.ch_mult.len() - 1);
        if !self.resolution.is_multiple_of(up) {
            return Err(format!(
                "`resolution` {} is not divisible by the upsampling factor {up}",
                self.resolution
            ));
        }
        // The decoder runs at grid · 2^k for each level k.
        let sizes: Vec<usize> = (0..self.ch_mult.len()).map(|k| self.grid() << k).collect();
        if let Some(r) = self.attn_resolutions.iter().find(|r| !sizes.contains(r)) {
            return Err(format!(
                "`attn_resolutions` entry {r} is not a resolution the decoder runs at ({sizes:?})"
            ));
        }
        Ok(())
    }

    /// Side of the token grid (16 for f16 at 256 px).
    pub fn grid(&self) -> usize {
        self.resolution >> (self.ch_mult.len() - 1)
    }
}
