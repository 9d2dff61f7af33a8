//! The ranges and relations every SD 1.x config value is checked against before use (limits in
//! `models/config.rs`), and the cross-checks between the components' configs.

use std::path::Path;

use super::{ClipConfig, TaesdConfig, UNetConfig, VaeConfig};
use crate::error::{Error, Result};
use crate::models::config::{
    MAX_CHANNELS, MAX_GROUPS, MAX_HEADS, MAX_LAYERS, MAX_LEVELS, MAX_POSITIONS, MAX_SAMPLE,
    MAX_VOCAB, all_in_range, in_range, positive,
};

type Check = std::result::Result<(), String>;

/// Image channels every pipeline reads and writes (RGB).
const RGB: usize = 3;

impl UNetConfig {
    pub(super) fn validate(&self) -> Check {
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

impl VaeConfig {
    pub(super) fn validate(&self) -> Check {
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
}

impl TaesdConfig {
    pub(super) fn validate(&self) -> Check {
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
}

impl ClipConfig {
    pub(super) fn validate(&self) -> Check {
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
        let ids = crate::models::sd15::prompt::CHUNK_LEN + 2;
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

/// Checks every width in `block_out_channels` divides by `by` (named `field`).
fn divides(widths: &[usize], by: usize, field: &str) -> Check {
    match widths.iter().find(|&&c| !c.is_multiple_of(by)) {
        Some(c) => Err(format!(
            "`block_out_channels` entry {c} does not divide by `{field}` {by}"
        )),
        None => Ok(()),
    }
}

/// The components must fit together: the UNet reads the text encoder's states and writes
/// the VAE's latents (plus mask and masked latents when it is an inpainting UNet).
pub fn components_agree(
    clip: &ClipConfig,
    u: &UNetConfig,
    vae: &VaeConfig,
    unet: &Path,
) -> Result<()> {
    let latent = vae.latent_channels;
    let message = if u.cross_attention_dim != clip.hidden_size {
        format!(
            "`cross_attention_dim` {} is not the text encoder's `hidden_size` {}",
            u.cross_attention_dim, clip.hidden_size
        )
    } else if u.out_channels != latent {
        format!(
            "`out_channels` {} is not the VAE's `latent_channels` {latent}",
            u.out_channels
        )
    } else if u.in_channels != latent && u.in_channels != 2 * latent + 1 {
        format!(
            "`in_channels` {} must be the VAE's `latent_channels` {latent} (or {} to inpaint)",
            u.in_channels,
            2 * latent + 1
        )
    } else {
        return Ok(());
    };
    Err(Error::Config {
        path: unet.into(),
        message,
    })
}
