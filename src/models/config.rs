//! Reading and checking model config files (`config.json`, `scheduler_config.json`): every value
//! is checked against what the model can be built and run with before anything uses it, and an
//! error names the file and the field.
//!
//! The upper bounds are generous (several times the largest published model's) and exist so
//! that a typo such as `1000000000000` is refused instead of sizing a loop or an allocation.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Most channels of any layer (SD 1.5: 1280, DALL·E Mega: 2048, its FFN 4096).
pub const MAX_CHANNELS: usize = 1 << 16;
/// Most layers of a stack or blocks of a stage (CLIP ViT-L: 12, DALL·E Mega: 24).
pub const MAX_LAYERS: usize = 256;
/// Most attention heads (SD 1.5 / CLIP: 8 / 12, DALL·E Mega: 32).
pub const MAX_HEADS: usize = 1024;
/// Most GroupNorm groups (every published model: 32).
pub const MAX_GROUPS: usize = 1024;
/// Most levels (resolutions) of a UNet, VAE, TAESD or VQGAN (published: 4 or 5).
pub const MAX_LEVELS: usize = 8;
/// Most rows of a token table (CLIP: 49408, DALL·E text: 50272, image: 16385).
pub const MAX_VOCAB: usize = 1 << 20;
/// Most positions of a sequence (CLIP: 77, DALL·E: 64 text, 256 image tokens).
pub const MAX_POSITIONS: usize = 1 << 16;
/// Largest image side a config may name (VAE `sample_size`, VQGAN `resolution`).
pub const MAX_SAMPLE: usize = 1 << 14;
/// Most training timesteps of a scheduler (published: 1000).
pub const MAX_TIMESTEPS: usize = 100_000;

/// Parses `path` as `T`; an error names the field that does not fit (serde_json's own message
/// gives only a line and column).
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.into(),
        message: match serde_json::from_str(&text)
            .ok()
            .and_then(|v| culprit::<T>(&v))
        {
            Some(field) => format!("`{field}`: {e}"),
            None => e.to_string(),
        },
    })
}

/// [`read_json`] for the object `within` of an already parsed file (a nested config such as
/// a `CLIPConfig`'s `vision_config`): an error names the field as `within.field`.
pub(crate) fn parse_json_within<T: DeserializeOwned>(
    path: &Path,
    within: &str,
    value: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| Error::Config {
        path: path.into(),
        message: match culprit::<T>(&value) {
            Some(field) => format!("`{within}.{field}`: {e}"),
            None => format!("`{within}`: {e}"),
        },
    })
}

/// The top-level key whose removal makes `value` parse (or leaves only that key missing).
fn culprit<T: DeserializeOwned>(value: &serde_json::Value) -> Option<String> {
    let serde_json::Value::Object(obj) = value else {
        return None;
    };
    obj.keys()
        .find(|k| {
            let mut rest = obj.clone();
            rest.remove(*k);
            match serde_json::from_value::<T>(serde_json::Value::Object(rest)) {
                Ok(_) => true,
                Err(e) => e.to_string() == format!("missing field `{k}`"),
            }
        })
        .cloned()
}

/// Checks `field` is in `lo..=hi`.
pub(crate) fn in_range(
    field: &str,
    v: usize,
    lo: usize,
    hi: usize,
) -> std::result::Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "`{field}` is {v}; it must be between {lo} and {hi}"
        ))
    }
}

/// Checks every element of list `field` is in `lo..=hi`, and that it has 1 to `max_len` of them.
pub(crate) fn all_in_range(
    field: &str,
    v: &[usize],
    lo: usize,
    hi: usize,
    max_len: usize,
) -> std::result::Result<(), String> {
    if v.is_empty() || v.len() > max_len {
        return Err(format!(
            "`{field}` has {} entries; 1 to {max_len} are supported",
            v.len()
        ));
    }
    v.iter().try_for_each(|&x| in_range(field, x, lo, hi))
}

/// Checks float `field` is finite and in `(lo, hi]` (`lo` excluded: epsilons and scales).
pub(crate) fn positive(field: &str, v: f64, hi: f64) -> std::result::Result<(), String> {
    if v.is_finite() && v > 0.0 && v <= hi {
        Ok(())
    } else {
        Err(format!(
            "`{field}` is {v}; it must be above 0 and at most {hi}"
        ))
    }
}

/// Wraps a validation message as the config error of `path`.
pub(crate) fn config_err(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Config {
        path: path.into(),
        message,
    }
}
