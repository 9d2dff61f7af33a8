//! Checkpoint layouts and their key mappings onto the modules (whose names are min-dalle's).
//!
//! - min-dalle: `encoder.pt`, `decoder.pt` (keys = module paths; the absent scale-less LayerNorm
//!   weights are simply not parameters here) and `detoker.pt` (taming names).
//! - taming Lightning `.ckpt`: like `detoker.pt`, codebook at `quantize.embedding.weight`, plus an
//!   encoder and loss networks that decoding ignores.
//! - flax `flax_model.msgpack`: DalleBart with scanned layers (leading layer axis), Dense
//!   `kernel` `[in, out]`, LayerNorm `scale`; VQGAN with `up_4.block_0` names and HWIO kernels.
//!   The names map here; `flax_file.rs` turns the leaves into lazy snapshots under them.

use crate::weights::KeyTarget;

/// min-dalle LayerNorm weights that are fixed at 1 (absent from its files; ignored if present).
const SCALELESS: [&str; 5] = [
    "pre_self_attn_layer_norm.weight",
    "pre_encoder_attn_layer_norm.weight",
    "glu.ln0.weight",
    "glu.ln1.weight",
    "final_ln.weight",
];

/// `encoder.pt` / `decoder.pt` keys → module paths (identity).
pub fn bart_pt_target(key: &str) -> KeyTarget {
    if SCALELESS.iter().any(|s| key.ends_with(s)) {
        KeyTarget::Ignore
    } else {
        KeyTarget::Param(key.to_string())
    }
}

/// `detoker.pt` or taming `.ckpt` keys → VQGAN module paths.
pub fn vqgan_pt_target(key: &str) -> KeyTarget {
    if key == "quantize.embedding.weight" {
        return KeyTarget::Param("embedding.weight".into());
    }
    if ["encoder.", "quant_conv.", "loss.", "quantize."]
        .iter()
        .any(|p| key.starts_with(p))
    {
        return KeyTarget::Ignore;
    }
    KeyTarget::Param(key.to_string())
}

/// How one flax leaf becomes one module tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct FlaxTarget {
    /// Module path, prefixed with `encoder.` / `decoder.` for DalleBart.
    pub path: String,
    /// Index into a leading scanned-layer axis.
    pub layer: Option<usize>,
    /// Axis permutation applied after slicing (`[1, 0]` for Dense kernels, HWIO→OIHW for convs).
    pub permute: Option<Vec<usize>>,
}

const FLAX_LAYER_MODULES: [(&str, &str); 11] = [
    ("LayerNorm_0", "pre_self_attn_layer_norm"),
    ("FlaxBartAttention_0", "self_attn"),
    ("LayerNorm_1", "self_attn_layer_norm"),
    ("LayerNorm_2", "pre_encoder_attn_layer_norm"),
    ("FlaxBartAttention_1", "encoder_attn"),
    ("LayerNorm_3", "encoder_attn_layer_norm"),
    ("GLU_0.LayerNorm_0", "glu.ln0"),
    ("GLU_0.Dense_0", "glu.fc0"),
    ("GLU_0.Dense_1", "glu.fc1"),
    ("GLU_0.LayerNorm_1", "glu.ln1"),
    ("GLU_0.Dense_2", "glu.fc2"),
];

fn flax_leaf(leaf: &str, rank: usize) -> Option<(&'static str, Option<Vec<usize>>)> {
    match leaf {
        "kernel" if rank == 2 => Some(("weight", Some(vec![1, 0]))),
        "kernel" if rank == 4 => Some(("weight", Some(vec![3, 2, 0, 1]))),
        "scale" | "embedding" => Some(("weight", None)),
        "bias" => Some(("bias", None)),
        _ => None,
    }
}

/// Targets of one DalleBart flax leaf (one per layer for a scanned stack), or `None` when the
/// key is not part of the published layout. `rank` is the leaf's rank.
pub fn flax_bart_targets(key: &str, rank: usize, layers: usize) -> Option<Vec<FlaxTarget>> {
    if key == "lm_head.kernel" {
        return Some(vec![FlaxTarget {
            path: "decoder.lm_head.weight".into(),
            layer: None,
            permute: Some(vec![1, 0]),
        }]);
    }
    let rest = key.strip_prefix("model.")?;
    let (side, rest) = rest.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (module, leaf) = rest.rsplit_once('.')?;
    if let Some(stack) = module.strip_prefix("layers.") {
        let (stack_name, sub) = stack.split_once('.')?;
        let scanned = format!(
            "FlaxBart{}Layers",
            if side == "encoder" {
                "Encoder"
            } else {
                "Decoder"
            }
        );
        let single = format!(
            "FlaxBart{}Layer_",
            if side == "encoder" {
                "Encoder"
            } else {
                "Decoder"
            }
        );
        // attention sub-modules keep their projection name: FlaxBartAttention_0.q_proj
        let (sub_mod, proj) = match sub.split_once('.') {
            Some((a, p)) if a.starts_with("FlaxBartAttention_") => (a, Some(p)),
            _ => (sub, None),
        };
        let ours = FLAX_LAYER_MODULES.iter().find(|(f, _)| *f == sub_mod)?.1;
        let ours = match proj {
            Some(p) if ["q_proj", "k_proj", "v_proj", "out_proj"].contains(&p) => {
                format!("{ours}.{p}")
            }
            Some(_) => return None,
            None => ours.to_string(),
        };
        if stack_name == scanned {
            // the permutation applies to one layer's slice
            let (name, permute) = flax_leaf(leaf, rank.checked_sub(1)?)?;
            return Some(
                (0..layers)
                    .map(|i| FlaxTarget {
                        path: format!("{side}.layers.{i}.{ours}.{name}"),
                        layer: Some(i),
                        permute: permute.clone(),
                    })
                    .collect(),
            );
        }
        let i: usize = stack_name.strip_prefix(&single)?.parse().ok()?;
        let (name, permute) = flax_leaf(leaf, rank)?;
        return Some(vec![FlaxTarget {
            path: format!("{side}.layers.{i}.{ours}.{name}"),
            layer: None,
            permute,
        }]);
    }
    if ![
        "embed_tokens",
        "embed_positions",
        "layernorm_embedding",
        "final_ln",
    ]
    .contains(&module)
    {
        return None;
    }
    let (name, permute) = flax_leaf(leaf, rank)?;
    Some(vec![FlaxTarget {
        path: format!("{side}.{module}.{name}"),
        layer: None,
        permute,
    }])
}

/// Where a VQGAN flax leaf goes.
#[derive(Debug, Clone, PartialEq)]
pub enum VqganLeaf {
    Param(FlaxTarget),
    /// The encoder half and `quant_conv`: in the file, not used for decoding.
    Ignored,
    /// Not part of the VQGAN layout.
    Unknown,
}

/// Target of one VQGAN flax leaf.
pub fn flax_vqgan_target(key: &str, rank: usize) -> VqganLeaf {
    flax_vqgan_target_inner(key, rank).unwrap_or(VqganLeaf::Unknown)
}

fn flax_vqgan_target_inner(key: &str, rank: usize) -> Option<VqganLeaf> {
    if key == "quantize.embedding.embedding" {
        return Some(VqganLeaf::Param(FlaxTarget {
            path: "embedding.weight".into(),
            layer: None,
            permute: None,
        }));
    }
    if key.starts_with("encoder.") || key.starts_with("quant_conv.") || key.starts_with("quantize.")
    {
        return Some(VqganLeaf::Ignored);
    }
    if !key.starts_with("decoder.") && !key.starts_with("post_quant_conv.") {
        return None;
    }
    let parts: Vec<&str> = key.split('.').collect();
    let mut out = Vec::with_capacity(parts.len() + 2);
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let in_mid = i > 0 && parts[i - 1] == "mid";
        match part.rsplit_once('_') {
            Some((name @ ("up" | "block" | "attn"), idx))
                if !in_mid && idx.parse::<usize>().is_ok() =>
            {
                out.push(name.to_string());
                out.push(idx.to_string());
            }
            _ => out.push(part.to_string()),
        }
    }
    let (name, permute) = flax_leaf(parts[parts.len() - 1], rank)?;
    out.push(name.to_string());
    Some(VqganLeaf::Param(FlaxTarget {
        path: out.join("."),
        layer: None,
        permute,
    }))
}

/// Key targets for a DalleBart `TensorFile` from `flax_bart_file`, for the `side` module.
pub fn flax_bart_target(side: &'static str) -> impl Fn(&str) -> KeyTarget {
    move |key: &str| {
        if let Some(rest) = key.strip_prefix(side).and_then(|r| r.strip_prefix('.')) {
            return KeyTarget::Param(rest.to_string());
        }
        let ours = key.starts_with("encoder.") || key.starts_with("decoder.");
        // unrecognised flax keys are reported once, with the encoder
        if !ours && side == "encoder" {
            KeyTarget::Param(key.to_string())
        } else {
            KeyTarget::Other
        }
    }
}

/// Key targets for a VQGAN `TensorFile` from `flax_vqgan_file`.
pub fn flax_vqgan_key(key: &str) -> KeyTarget {
    if key.starts_with("ignored.") {
        KeyTarget::Ignore
    } else {
        KeyTarget::Param(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flax_names_map_to_min_dalle_names() {
        let t = flax_bart_targets(
            "model.decoder.layers.FlaxBartDecoderLayers.FlaxBartAttention_1.k_proj.kernel",
            3,
            2,
        )
        .unwrap();
        assert_eq!(
            t[1],
            FlaxTarget {
                path: "decoder.layers.1.encoder_attn.k_proj.weight".into(),
                layer: Some(1),
                permute: Some(vec![1, 0])
            }
        );
        let t = flax_bart_targets(
            "model.encoder.layers.FlaxBartEncoderLayers.GLU_0.LayerNorm_1.bias",
            2,
            2,
        )
        .unwrap();
        assert_eq!(t[0].path, "encoder.layers.0.glu.ln1.bias");
        assert_eq!(t[0].permute, None);
        let t = flax_bart_targets(
            "model.encoder.layers.FlaxBartEncoderLayer_3.LayerNorm_1.scale",
            1,
            12,
        )
        .unwrap();
        assert_eq!(t[0].path, "encoder.layers.3.self_attn_layer_norm.weight");
        assert_eq!(
            flax_bart_targets("model.encoder.embed_tokens.embedding", 2, 2).unwrap()[0].path,
            "encoder.embed_tokens.weight"
        );
        assert!(flax_bart_targets("model.encoder.something.kernel", 2, 2).is_none());
        let path = |k: &str, rank| match flax_vqgan_target(k, rank) {
            VqganLeaf::Param(t) => t.path,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            path("decoder.up_4.attn_2.q.kernel", 4),
            "decoder.up.4.attn.2.q.weight"
        );
        assert_eq!(
            path("decoder.mid.block_1.norm1.scale", 1),
            "decoder.mid.block_1.norm1.weight"
        );
        assert_eq!(
            flax_vqgan_target("encoder.conv_in.kernel", 4),
            VqganLeaf::Ignored
        );
        assert_eq!(flax_vqgan_target("foo.bar", 1), VqganLeaf::Unknown);
    }
}
