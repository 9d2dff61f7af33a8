//! Generation parameters in A1111's "infotext" format, the `parameters` text chunk that
//! A1111's PNG Info tab and stable-diffusion.cpp read:
//!
//! ```text
//! a prompt
//! Negative prompt: a negative prompt
//! Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: sd15
//! ```

use std::collections::BTreeMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// A1111's sampler label ("Euler a", "DPM++ 2M Karras", …).
    pub sampler: String,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub model: String,
    /// Only written when not 1, as A1111 does.
    pub clip_skip: usize,
    /// img2img/inpainting strength ("Denoising strength").
    pub denoising_strength: Option<f64>,
}

/// A1111 quotes values that contain `,`, `:` or `"` with JSON string syntax.
fn quote(v: &str) -> String {
    if v.contains([',', ':', '"', '\n']) {
        serde_json::Value::String(v.to_string()).to_string()
    } else {
        v.to_string()
    }
}

impl Parameters {
    pub fn to_infotext(&self) -> String {
        let mut fields = vec![
            format!("Steps: {}", self.steps),
            format!("Sampler: {}", quote(&self.sampler)),
            format!("CFG scale: {}", self.cfg_scale),
            format!("Seed: {}", self.seed),
            format!("Size: {}x{}", self.width, self.height),
            format!("Model: {}", quote(&self.model)),
        ];
        if let Some(s) = self.denoising_strength {
            fields.push(format!("Denoising strength: {s}"));
        }
        if self.clip_skip > 1 {
            fields.push(format!("Clip skip: {}", self.clip_skip));
        }
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", self.negative_prompt));
        }
        text.push('\n');
        text.push_str(&fields.join(", "));
        text
    }

    /// Parses infotext as A1111 does: the last line holds `Key: value` pairs, a line starting
    /// with `Negative prompt:` begins the negative prompt, everything before is the prompt.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |m: &str| Error::Image(format!("parameters text: {m}"));
        let (body, last) = text
            .rsplit_once('\n')
            .ok_or_else(|| bad("no parameter line"))?;
        let fields = parse_fields(last);
        let (prompt, negative) = match body.split_once("\nNegative prompt: ") {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => match body.strip_prefix("Negative prompt: ") {
                Some(n) => (String::new(), n.to_string()),
                None => (body.to_string(), String::new()),
            },
        };
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| bad(&format!("no `{k}`")))
        };
        let num = |k: &str| -> Result<f64> {
            get(k)?
                .parse::<f64>()
                .map_err(|_| bad(&format!("`{k}` is not a number")))
        };
        let size = get("Size")?;
        let (w, h) = size.split_once('x').ok_or_else(|| bad("bad Size"))?;
        Ok(Self {
            prompt,
            negative_prompt: negative,
            steps: num("Steps")? as usize,
            sampler: get("Sampler")?,
            cfg_scale: num("CFG scale")?,
            seed: get("Seed")?.parse().map_err(|_| bad("bad Seed"))?,
            width: w.trim().parse().map_err(|_| bad("bad Size"))?,
            height: h.trim().parse().map_err(|_| bad("bad Size"))?,
            model: fields.get("Model").cloned().unwrap_or_default(),
            clip_skip: fields
                .get("Clip skip")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            denoising_strength: fields
                .get("Denoising strength")
                .and_then(|v| v.parse().ok()),
        })
    }
}

/// `Key: value, Key: "quoted, value"` → map (A1111's `re_param` semantics).
fn parse_fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once(':') {
        let after = after.trim_start();
        let (value, tail) = if after.starts_with('"') {
            // A JSON string: find its end, honouring escapes.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices().skip(1) {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or(after.len() - 1);
            let raw = &after[..=end];
            let v = serde_json::from_str::<String>(raw)
                .unwrap_or_else(|_| raw.trim_matches('"').to_string());
            (v, after[end + 1..].trim_start_matches(',').trim_start())
        } else {
            match after.split_once(", ") {
                Some((v, t)) => (v.to_string(), t),
                None => (after.to_string(), ""),
            }
        };
        out.insert(key.trim().to_string(), value.trim().to_string());
        rest = tail;
    }
    out
}
