//! Checkpoint key → module path rules for SD 1.5, for the two layouts people have: the diffusers
//! folder (`unet/`, `vae/`, `text_encoder/`) and the CompVis/ldm single file
//! (`v1-5-pruned-emaonly.safetensors` / `.ckpt`).
//!
//! Module fields are named after the diffusers keys, so the diffusers layout maps almost 1:1;
//! ldm keys are translated to diffusers keys first (the inverse of diffusers'
//! `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint`).

use std::path::PathBuf;

use crate::weights::KeyTarget;

use super::config::{UNetConfig, VaeConfig};

/// Ldm single-file prefixes of the three components.
pub const LDM_UNET: &str = "model.diffusion_model.";
pub const LDM_VAE: &str = "first_stage_model.";
pub const LDM_CLIP: &str = "cond_stage_model.transformer.";

/// Keys a real SD 1.x checkpoint carries that inference does not use. Listed one by one so that
/// anything else left over is reported as unused rather than silently skipped.
const LDM_SCHEDULE_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
];

/// Expected-unused keys of an ldm file: the schedule buffers above, the EMA copy of the UNet
/// (`model_ema.*` in the non-"emaonly" files), the VAE's training loss (`first_stage_model.loss.*`),
/// and CLIP's `position_ids` buffer.
pub fn ldm_ignored(key: &str) -> bool {
    LDM_SCHEDULE_BUFFERS.contains(&key)
        || key.starts_with("model_ema.")
        || key.starts_with("first_stage_model.loss.")
        || key.ends_with("embeddings.position_ids")
}

/// The files the text encoder and the UNet were read from and their key layout, kept so that a
/// LoRA variant can re-read base weights through the same key maps (see `lora`).
#[derive(Debug, Clone)]
pub struct WeightSources {
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    /// One CompVis/ldm file (`SingleFile`) rather than diffusers component files.
    pub ldm: bool,
}

impl WeightSources {
    pub fn text_encoder_map(&self) -> fn(&str) -> KeyTarget {
        if self.ldm { ldm_clip_key } else { clip_key }
    }

    pub fn unet_map<'a>(&self, cfg: &'a UNetConfig) -> Box<dyn Fn(&str) -> KeyTarget + 'a> {
        if self.ldm {
            Box::new(ldm_unet_key(cfg))
        } else {
            Box::new(unet_key)
        }
    }
}

/// diffusers key → module path: the only renames are `ff.net.0`/`ff.net.2` (Rust fields cannot
/// be numbers) and the pre-0.14 diffusers VAE attention names.
pub fn diffusers_to_path(key: &str) -> String {
    let k = key
        .replace(".ff.net.0.", ".ff.net_0.")
        .replace(".ff.net.2.", ".ff.net_2.");
    let k = k
        .replace(".attentions.0.query.", ".attentions.0.to_q.")
        .replace(".attentions.0.key.", ".attentions.0.to_k.")
        .replace(".attentions.0.value.", ".attentions.0.to_v.")
        .replace(".attentions.0.proj_attn.", ".attentions.0.to_out.0.");
    k
}

/// Key mapper for a diffusers `text_encoder/` file. transformers ≥ 5 writes keys without the
/// `text_model.` prefix; both are accepted.
pub fn clip_key(key: &str) -> KeyTarget {
    if key.ends_with("embeddings.position_ids") {
        return KeyTarget::Ignore;
    }
    if key.starts_with("text_model.") {
        KeyTarget::Param(key.to_string())
    } else if ["embeddings.", "encoder.", "final_layer_norm."]
        .iter()
        .any(|p| key.starts_with(p))
    {
        KeyTarget::Param(format!("text_model.{key}"))
    } else {
        KeyTarget::Param(key.to_string())
    }
}

/// Key mapper for `safety_checker/model.safetensors`. The published file (transformers 4.x)
/// nests the vision tower as `vision_model.vision_model.*` and carries the int64
/// `…embeddings.position_ids` buffer (ignored); transformers ≥ 5 writes `vision_model.*`
/// without the inner prefix. Both are accepted.
pub fn safety_checker_key(key: &str) -> KeyTarget {
    if key.ends_with("embeddings.position_ids") {
        return KeyTarget::Ignore;
    }
    match key.strip_prefix("vision_model.") {
        Some(rest)
            if [
                "embeddings.",
                "pre_layrnorm.",
                "encoder.",
                "post_layernorm.",
            ]
            .iter()
            .any(|p| rest.starts_with(p)) =>
        {
            KeyTarget::Param(format!("vision_model.vision_model.{rest}"))
        }
        _ => KeyTarget::Param(key.to_string()),
    }
}

pub fn unet_key(key: &str) -> KeyTarget {
    KeyTarget::Param(diffusers_to_path(key))
}

pub fn vae_key(key: &str) -> KeyTarget {
    KeyTarget::Param(diffusers_to_path(key))
}

/// Key mapper for the CLIP part of an ldm file.
pub fn ldm_clip_key(key: &str) -> KeyTarget {
    match key.strip_prefix(LDM_CLIP) {
        Some(rest) => clip_key(rest),
        None if ldm_ignored(key) => KeyTarget::Ignore,
        None => KeyTarget::Other,
    }
}

/// Key mapper for the UNet part of an ldm file.
pub fn ldm_unet_key(cfg: &UNetConfig) -> impl Fn(&str) -> KeyTarget + '_ {
    move |key| match key.strip_prefix(LDM_UNET) {
        Some(rest) => match ldm_unet_to_diffusers(rest, cfg) {
            Some(k) => KeyTarget::Param(diffusers_to_path(&k)),
            None => KeyTarget::Param(format!("<unrecognised ldm key>.{rest}")),
        },
        None => KeyTarget::Other,
    }
}

/// Key mapper for the VAE part of an ldm file.
pub fn ldm_vae_key(cfg: &VaeConfig) -> impl Fn(&str) -> KeyTarget + '_ {
    move |key| match key.strip_prefix(LDM_VAE) {
        Some(_) if ldm_ignored(key) => KeyTarget::Ignore,
        Some(rest) => match ldm_vae_to_diffusers(rest, cfg.block_out_channels.len()) {
            Some(k) => KeyTarget::Param(diffusers_to_path(&k)),
            None => KeyTarget::Param(format!("<unrecognised ldm key>.{rest}")),
        },
        None => KeyTarget::Other,
    }
}

fn sub(rest: &str, table: &[(&str, &str)]) -> String {
    for (from, to) in table {
        if rest == *from || rest.starts_with(&format!("{from}.")) {
            return format!("{to}{}", &rest[from.len()..]);
        }
    }
    rest.to_string()
}

const RESNET_LDM: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// `input_blocks.4.1.proj_in.weight` → `down_blocks.1.attentions.0.proj_in.weight`, etc.
pub fn ldm_unet_to_diffusers(key: &str, cfg: &UNetConfig) -> Option<String> {
    let simple = [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    for (from, to) in simple {
        if let Some(rest) = key.strip_prefix(from).filter(|r| r.starts_with('.')) {
            return Some(format!("{to}{rest}"));
        }
    }
    let per = cfg.layers_per_block + 1;
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    let [group, idx, sub_idx, rest] = parts[..] else {
        return None;
    };
    let idx: usize = idx.parse().ok()?;
    match group {
        "input_blocks" => {
            let (i, j) = ((idx.checked_sub(1)?) / per, (idx - 1) % per);
            if j == cfg.layers_per_block {
                let rest = rest.strip_prefix("op.")?;
                return Some(format!("down_blocks.{i}.downsamplers.0.conv.{rest}"));
            }
            match sub_idx {
                "0" => Some(format!(
                    "down_blocks.{i}.resnets.{j}.{}",
                    sub(rest, RESNET_LDM)
                )),
                "1" => Some(format!("down_blocks.{i}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        "middle_block" => match idx {
            0 | 2 => Some(format!(
                "mid_block.resnets.{}.{}",
                idx / 2,
                sub(&format!("{sub_idx}.{rest}"), RESNET_LDM)
            )),
            1 => Some(format!("mid_block.attentions.0.{sub_idx}.{rest}")),
            _ => None,
        },
        "output_blocks" => {
            let (i, j) = (idx / per, idx % per);
            let attn = cfg.up_block_types.get(i)?.starts_with("CrossAttn");
            match (sub_idx, attn) {
                ("0", _) => Some(format!(
                    "up_blocks.{i}.resnets.{j}.{}",
                    sub(rest, RESNET_LDM)
                )),
                ("1", true) => Some(format!("up_blocks.{i}.attentions.{j}.{rest}")),
                ("1", false) | ("2", true) => Some(format!("up_blocks.{i}.upsamplers.0.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `decoder.up.3.block.0.nin_shortcut.weight` → `decoder.up_blocks.0.resnets.0.conv_shortcut.weight`, etc.
pub fn ldm_vae_to_diffusers(key: &str, levels: usize) -> Option<String> {
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return Some(key.to_string());
    }
    let (part, rest) = key.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    const RES: &[(&str, &str)] = &[("nin_shortcut", "conv_shortcut")];
    const ATTN: &[(&str, &str)] = &[
        ("norm", "group_norm"),
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("proj_out", "to_out.0"),
    ];
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return Some(key.to_string());
    }
    if let Some(r) = rest.strip_prefix("norm_out.") {
        return Some(format!("{part}.conv_norm_out.{r}"));
    }
    if let Some(r) = rest.strip_prefix("mid.") {
        let (blk, r) = r.split_once('.')?;
        return match blk {
            "block_1" => Some(format!("{part}.mid_block.resnets.0.{}", sub(r, RES))),
            "block_2" => Some(format!("{part}.mid_block.resnets.1.{}", sub(r, RES))),
            "attn_1" => Some(format!("{part}.mid_block.attentions.0.{}", sub(r, ATTN))),
            _ => None,
        };
    }
    let (dir, r) = rest.split_once('.')?;
    let (level, r) = r.split_once('.')?;
    let level: usize = level.parse().ok()?;
    let (name, i) = match (part, dir) {
        ("encoder", "down") => ("down_blocks", level),
        ("decoder", "up") => ("up_blocks", levels.checked_sub(level + 1)?),
        _ => return None,
    };
    if let Some(r) = r.strip_prefix("block.") {
        let (j, r) = r.split_once('.')?;
        return Some(format!("{part}.{name}.{i}.resnets.{j}.{}", sub(r, RES)));
    }
    if let Some(r) = r
        .strip_prefix("downsample.")
        .or_else(|| r.strip_prefix("upsample."))
    {
        let sampler = if dir == "down" {
            "downsamplers"
        } else {
            "upsamplers"
        };
        return Some(format!("{part}.{name}.{i}.{sampler}.0.{r}"));
    }
    None
}
