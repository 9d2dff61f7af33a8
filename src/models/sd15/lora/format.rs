//! Reading a LoRA file, in the key layouts SD 1.5 LoRAs come in:
//!
//! - kohya-ss / A1111: `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`, and
//!   `lora_te_<module>.…` for the text encoder, `<module>` being the diffusers module path with
//!   `.` → `_` (LoCon files add the resnets' 3×3 convolutions);
//! - diffusers/PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.<module>.…`;
//! - the diffusers names before PEFT: `….attn1.processor.to_q_lora.down.weight`,
//!   `<module>.lora.down.weight`, `<module>.lora_linear_layer.down.weight` (and `.up.`).
//!
//! Every module becomes one [`LoraModule`] named the kohya way (`.` → `_`), the form in which
//! `adapted` matches names against the model's own parameter paths. The key rules follow
//! diffusers' `_convert_non_diffusers_lora_to_diffusers` for SD 1.x; SDXL LoRAs (`lora_te2_`,
//! `text_encoder_2.`, the sgm UNet's `input_blocks`/`middle_block`/`output_blocks`) are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::weights::TensorFile;

/// Which model a LoRA module adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Unet,
    TextEncoder,
}

/// The key layouts of [the module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraFormat {
    Kohya,
    Peft,
    DiffusersOld,
}

impl LoraFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Peft => "peft",
            LoraFormat::DiffusersOld => "diffusers-old",
        }
    }
}

/// One tensor of a LoRA file: its key and shape.
#[derive(Debug, Clone)]
pub struct Factor {
    pub key: String,
    pub shape: Vec<usize>,
}

/// One adapted module: `ΔW = scale · up @ down`, `scale = alpha / rank` (1 without alpha).
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub part: Part,
    /// The module path with `.` → `_` (kohya's name without `lora_unet_` / `lora_te_`).
    pub name: String,
    /// `[rank, in]` or `[rank, in, kh, kw]`.
    pub down: Factor,
    /// `[out, rank]` or `[out, rank, 1, 1]`.
    pub up: Factor,
    pub alpha: Option<f32>,
}

impl LoraModule {
    pub fn rank(&self) -> usize {
        self.down.shape[0]
    }

    pub fn scale(&self) -> f32 {
        self.alpha.map_or(1.0, |a| a / self.rank() as f32)
    }
}

/// A parsed LoRA file; its tensors are read (memory-mapped) when a variant is built.
pub struct LoraFile {
    pub path: PathBuf,
    pub file: TensorFile,
    pub modules: Vec<LoraModule>,
    pub formats: BTreeSet<LoraFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// `(suffix, role, format)` of the diffusers-side keys; `_lora.` is the attention processors'
/// `to_q_lora.down.weight`.
const DIFFUSERS_SUFFIXES: &[(&str, Role, Option<LoraFormat>)] = &[
    (".lora_A.weight", Role::Down, Some(LoraFormat::Peft)),
    (".lora_B.weight", Role::Up, Some(LoraFormat::Peft)),
    (
        ".lora.down.weight",
        Role::Down,
        Some(LoraFormat::DiffusersOld),
    ),
    (".lora.up.weight", Role::Up, Some(LoraFormat::DiffusersOld)),
    (
        ".lora_linear_layer.down.weight",
        Role::Down,
        Some(LoraFormat::DiffusersOld),
    ),
    (
        ".lora_linear_layer.up.weight",
        Role::Up,
        Some(LoraFormat::DiffusersOld),
    ),
    (
        "_lora.down.weight",
        Role::Down,
        Some(LoraFormat::DiffusersOld),
    ),
    ("_lora.up.weight", Role::Up, Some(LoraFormat::DiffusersOld)),
    (".alpha", Role::Alpha, None),
];

const SDXL_HINT: &str = "an SDXL LoRA? only SD 1.x LoRAs apply to this model";

fn lora_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Lora {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// What one key of the file is: `(part, module name, role, format)`.
fn classify(path: &Path, key: &str) -> Result<(Part, String, Role, Option<LoraFormat>)> {
    let err = |m: String| lora_err(path, format!("key `{key}`: {m}"));
    if key.starts_with("lora_te2_")
        || key.starts_with("lora_te1_")
        || key.starts_with("text_encoder_2.")
    {
        return Err(err(format!("a second text encoder's key ({SDXL_HINT})")));
    }
    let kohya = [("lora_unet_", Part::Unet), ("lora_te_", Part::TextEncoder)];
    if let Some((rest, part)) = kohya
        .iter()
        .find_map(|(p, part)| key.strip_prefix(p).map(|r| (r, *part)))
    {
        let (name, tensor) = rest.split_once('.').unwrap_or((rest, ""));
        let role = match tensor {
            "lora_down.weight" => Role::Down,
            "lora_up.weight" => Role::Up,
            "alpha" => Role::Alpha,
            other => {
                return Err(err(format!(
                    "`{other}` tensors are not supported (only lora_down / lora_up / alpha: \
                     plain LoRA and LoCon, not LoHa, LoKr or DoRA)"
                )));
            }
        };
        if part == Part::Unet
            && ["input_blocks", "middle_block", "output_blocks", "label_emb"]
                .iter()
                .any(|s| name.starts_with(s))
        {
            return Err(err(format!(
                "a module of the sgm/ldm UNet layout ({SDXL_HINT})"
            )));
        }
        return Ok((part, name.to_string(), role, Some(LoraFormat::Kohya)));
    }
    let prefixes = [("unet.", Part::Unet), ("text_encoder.", Part::TextEncoder)];
    let Some((rest, part)) = prefixes
        .iter()
        .find_map(|(p, part)| key.strip_prefix(p).map(|r| (r, *part)))
    else {
        return Err(err(
            "not a LoRA tensor (expected kohya `lora_unet_…` / `lora_te_…` or diffusers \
             `unet.…` / `text_encoder.…` keys)"
                .into(),
        ));
    };
    let Some((module, role, format)) = DIFFUSERS_SUFFIXES
        .iter()
        .find_map(|(s, role, f)| rest.strip_suffix(s).map(|m| (m, *role, *f)))
    else {
        return Err(err(
            "not a LoRA factor (expected `.lora_A.weight`, `.lora_B.weight`, `.lora.down.weight`, \
             … or `.alpha`; LoRA biases and DoRA are not supported)"
                .into(),
        ));
    };
    Ok((part, diffusers_module(part, module), role, format))
}

/// The kohya name of a diffusers module path, the attention processors' names resolved to the
/// projections they wrap (`attn1.processor.to_out` → `attn1.to_out.0`; CLIP's
/// `self_attn.to_q` → `self_attn.q_proj`).
fn diffusers_module(part: Part, module: &str) -> String {
    let m = module.replace(".processor.", ".");
    let m = match (part, m.rsplit_once('.')) {
        (Part::Unet, Some((head, "to_out"))) => format!("{head}.to_out.0"),
        (Part::TextEncoder, Some((head, proj @ ("to_q" | "to_k" | "to_v" | "to_out")))) => {
            let p = match proj {
                "to_q" => "q_proj",
                "to_k" => "k_proj",
                "to_v" => "v_proj",
                _ => "out_proj",
            };
            format!("{head}.{p}")
        }
        _ => m,
    };
    m.replace('.', "_")
}

#[derive(Default)]
struct Partial {
    down: Option<Factor>,
    up: Option<Factor>,
    alpha: Option<(String, f32)>,
}

/// Reads the key names, shapes and alphas of a LoRA file (factors themselves are read later).
pub fn parse(path: &Path) -> Result<LoraFile> {
    std::fs::metadata(path).map_err(|e| lora_err(path, format!("cannot read: {e}")))?;
    let file = TensorFile::open(path)?;
    let mut modules: BTreeMap<(Part, String), Partial> = BTreeMap::new();
    let mut formats = BTreeSet::new();
    for (key, snap) in &file.tensors {
        let (part, name, role, format) = classify(path, key)?;
        formats.extend(format);
        let entry = modules.entry((part, name)).or_default();
        let factor = Factor {
            key: key.clone(),
            shape: snap.shape.to_vec(),
        };
        let slot_taken = match role {
            Role::Down => entry.down.replace(factor).is_some(),
            Role::Up => entry.up.replace(factor).is_some(),
            Role::Alpha => {
                let (_, v) = file.read_f32(key)?;
                let [a] = v[..] else {
                    return Err(lora_err(
                        path,
                        format!(
                            "key `{key}`: alpha must be one number, found {} values",
                            v.len()
                        ),
                    ));
                };
                entry.alpha.replace((key.clone(), a)).is_some()
            }
        };
        if slot_taken {
            return Err(lora_err(
                path,
                format!("key `{key}`: a second tensor of the same kind for this module"),
            ));
        }
    }
    if modules.is_empty() {
        return Err(lora_err(path, "no LoRA tensors"));
    }
    let mut out = Vec::with_capacity(modules.len());
    for ((part, name), p) in modules {
        let m = complete(path, part, name, p)?;
        out.push(m);
    }
    Ok(LoraFile {
        path: path.to_path_buf(),
        file,
        modules: out,
        formats,
    })
}

/// A module with both factors, their ranks agreeing and the up factor 1×1.
fn complete(path: &Path, part: Part, name: String, p: Partial) -> Result<LoraModule> {
    let (down, up) = match (p.down, p.up, &p.alpha) {
        (Some(d), Some(u), _) => (d, u),
        (Some(f), None, _) | (None, Some(f), _) => {
            return Err(lora_err(
                path,
                format!("key `{}`: its down/up partner is missing", f.key),
            ));
        }
        (None, None, Some((key, _))) => {
            return Err(lora_err(
                path,
                format!("key `{key}`: an alpha without LoRA factors"),
            ));
        }
        (None, None, None) => {
            return Err(lora_err(path, format!("module `{name}`: no tensors")));
        }
    };
    let rank = down.shape.first().copied().unwrap_or(0);
    let up_ok = matches!(up.shape[..], [_, r] | [_, r, 1, 1] if r == rank);
    let down_ok = matches!(down.shape.len(), 2 | 4) && rank > 0;
    if !down_ok || !up_ok {
        return Err(lora_err(
            path,
            format!(
                "key `{}`: down {:?} and up {:?} (`{}`) do not make a low-rank pair \
                 (down [r, in] or [r, in, kh, kw], up [out, r] or [out, r, 1, 1])",
                down.key, down.shape, up.shape, up.key
            ),
        ));
    }
    Ok(LoraModule {
        part,
        name,
        down,
        up,
        alpha: p.alpha.map(|(_, a)| a),
    })
}
