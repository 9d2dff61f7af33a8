//! The safety checker's two configs: `safety_checker/config.json` (a transformers `CLIPConfig`
//! of which the checker reads `vision_config` and `projection_dim`) and
//! `feature_extractor/preprocessor_config.json` (`CLIPImageProcessor`). Defaults are SD 1.5's
//! (`CompVis/stable-diffusion-safety-checker`: ViT-L/14 at 224 px, 768-d projection).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::models::config::{
    MAX_CHANNELS, MAX_HEADS, MAX_LAYERS, MAX_SAMPLE, config_err, in_range, parse_json_within,
    positive, read_json,
};

type Check = std::result::Result<(), String>;

/// The parts of the file read before `vision_config` is parsed on its own (so that an error
/// names its field).
#[derive(Deserialize)]
struct TopLevel {
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default)]
    vision_config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    vision_config_dict: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_projection_dim() -> usize {
    SafetyCheckerConfig::default().projection_dim
}

/// `safety_checker/config.json`: what `StableDiffusionSafetyChecker` builds from a `CLIPConfig`.
#[derive(Debug, Clone)]
pub struct SafetyCheckerConfig {
    /// Width of `visual_projection` and of the concept embeddings (the top-level value; the
    /// vision config's own `projection_dim` is not used by the checker).
    pub projection_dim: usize,
    pub vision_config: ClipVisionConfig,
}

impl Default for SafetyCheckerConfig {
    fn default() -> Self {
        Self {
            projection_dim: 768,
            vision_config: ClipVisionConfig::default(),
        }
    }
}

/// The `vision_config` part of a `CLIPConfig` (transformers `CLIPVisionConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 224,
            patch_size: 14,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

impl SafetyCheckerConfig {
    /// Reads the file; transformers-4.x files may also carry `vision_config_dict`, whose values
    /// win over `vision_config`'s (as `CLIPConfig.__init__` applies them).
    pub fn load(path: &Path) -> Result<Self> {
        let top: TopLevel = read_json(path)?;
        let mut vision = top.vision_config.unwrap_or_default();
        vision.extend(top.vision_config_dict.unwrap_or_default());
        let cfg = Self {
            projection_dim: top.projection_dim,
            vision_config: parse_json_within(path, "vision_config", vision.into())?,
        };
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    fn validate(&self) -> Check {
        let v = &self.vision_config;
        if !matches!(v.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "`vision_config.hidden_act` `{}` not supported",
                v.hidden_act
            ));
        }
        in_range("projection_dim", self.projection_dim, 1, MAX_CHANNELS)?;
        in_range("vision_config.hidden_size", v.hidden_size, 1, MAX_CHANNELS)?;
        in_range(
            "vision_config.intermediate_size",
            v.intermediate_size,
            1,
            MAX_CHANNELS,
        )?;
        in_range(
            "vision_config.num_hidden_layers",
            v.num_hidden_layers,
            1,
            MAX_LAYERS,
        )?;
        in_range(
            "vision_config.num_attention_heads",
            v.num_attention_heads,
            1,
            MAX_HEADS,
        )?;
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(
                "`vision_config.hidden_size` must be a multiple of `num_attention_heads`".into(),
            );
        }
        in_range("vision_config.num_channels", v.num_channels, 3, 3)?;
        in_range("vision_config.image_size", v.image_size, 1, MAX_SAMPLE)?;
        in_range("vision_config.patch_size", v.patch_size, 1, v.image_size)?;
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err("`vision_config.image_size` must be a multiple of `patch_size`".into());
        }
        positive("vision_config.layer_norm_eps", v.layer_norm_eps, 1.0)
    }
}

/// A size in `preprocessor_config.json`: an int (transformers ≤ 4.2x, as SD 1.5's file has it)
/// or a dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Int(usize),
    ShortestEdge { shortest_edge: usize },
    HeightWidth { height: usize, width: usize },
}

/// `feature_extractor/preprocessor_config.json` (transformers `CLIPImageProcessor`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    pub do_resize: bool,
    /// An int or `shortest_edge`: the short side becomes this, the long side keeps the aspect
    /// ratio (rounded down); `height`/`width`: exactly that.
    pub size: SizeSpec,
    /// PIL filter number: 1 Lanczos, 2 bilinear, 3 bicubic, 4 box, 5 Hamming (0, nearest, is
    /// not supported).
    pub resample: u8,
    pub do_center_crop: bool,
    /// An int (square) or `height`/`width`.
    pub crop_size: SizeSpec,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::ShortestEdge { shortest_edge: 224 },
            resample: 3,
            do_center_crop: true,
            crop_size: SizeSpec::HeightWidth {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            // OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (as f32, which is how they are used)
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

impl ImageProcessorConfig {
    /// Reads the file and checks that it yields `image_size`² images for the vision tower.
    pub fn load(path: &Path, image_size: usize) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate(image_size).map_err(config_err(path))?;
        Ok(cfg)
    }

    /// `(height, width)` of the center crop.
    pub fn crop(&self) -> (usize, usize) {
        match self.crop_size {
            SizeSpec::Int(s) | SizeSpec::ShortestEdge { shortest_edge: s } => (s, s),
            SizeSpec::HeightWidth { height, width } => (height, width),
        }
    }

    /// The checks [`load`](Self::load) makes; the defaults pass them for 224 px.
    pub fn validate(&self, image_size: usize) -> Check {
        if !self.do_resize {
            return Err(
                "`do_resize` false is not supported (images of any size are resized)".into(),
            );
        }
        if !(1..=5).contains(&self.resample) {
            return Err(format!(
                "`resample` {} not supported (1 Lanczos, 2 bilinear, 3 bicubic, 4 box, 5 Hamming)",
                self.resample
            ));
        }
        let (ch, cw) = self.crop();
        match (self.do_center_crop, self.size) {
            (true, _) if (ch, cw) != (image_size, image_size) => Err(format!(
                "`crop_size` is {ch}x{cw}; the safety checker's vision model takes {image_size}x{image_size}"
            )),
            (true, SizeSpec::Int(s) | SizeSpec::ShortestEdge { shortest_edge: s })
                if s < ch.max(cw) =>
            {
                Err(format!("`size` {s} is smaller than the {ch}x{cw} crop"))
            }
            (true, SizeSpec::HeightWidth { height, width }) if height < ch || width < cw => Err(
                format!("`size` {height}x{width} is smaller than the {ch}x{cw} crop"),
            ),
            (false, SizeSpec::HeightWidth { height, width })
                if (height, width) == (image_size, image_size) =>
            {
                Ok(())
            }
            (false, _) => Err(format!(
                "without `do_center_crop`, `size` must be {{\"height\": {image_size}, \"width\": {image_size}}}"
            )),
            _ => Ok(()),
        }?;
        let (h, w) = match self.size {
            SizeSpec::Int(s) | SizeSpec::ShortestEdge { shortest_edge: s } => (s, s),
            SizeSpec::HeightWidth { height, width } => (height, width),
        };
        in_range("size", h.max(w), 1, MAX_SAMPLE)?;
        self.check_scales()
    }

    fn check_scales(&self) -> Check {
        positive("rescale_factor", self.rescale_factor, 1.0)?;
        for s in self.image_std {
            positive("image_std", f64::from(s), 1e6)?;
        }
        if self.image_mean.iter().any(|m| !m.is_finite()) {
            return Err("`image_mean` must be finite".into());
        }
        Ok(())
    }
}
