//! transformers' `CLIPImageProcessor` as SD 1.5's `feature_extractor/preprocessor_config.json`
//! sets it up: resize (short side to `size`, Pillow's bicubic on 8-bit pixels), center crop,
//! rescale by 1/255, normalise with CLIP's mean and std. This is the PIL path (every
//! transformers 4.x, and `CLIPImageProcessorPil` in 5.x), reproduced exactly; transformers 5's
//! default torchvision path resizes differently (see `tests/sd15_safety.rs` for the measured
//! difference).

use image::RgbImage;
use image::imageops::crop_imm;

use super::config::{ImageProcessorConfig, SizeSpec};
use crate::error::{Error, Result};
use crate::image_io::pil_resize::{self, PilFilter};

#[derive(Debug, Clone)]
pub struct ClipImageProcessor {
    pub config: ImageProcessorConfig,
    filter: PilFilter,
}

impl ClipImageProcessor {
    /// A processor for a config that passed [`ImageProcessorConfig::validate`] (an unsupported
    /// `resample` is refused there).
    pub fn new(config: ImageProcessorConfig) -> Result<Self> {
        let filter = PilFilter::from_pil(config.resample).ok_or_else(|| {
            Error::InvalidArgument(format!("resample filter {} not supported", config.resample))
        })?;
        Ok(Self { config, filter })
    }

    /// `(height, width)` an image of `(h, w)` is resized to: transformers'
    /// `get_resize_output_image_size(default_to_square=False)` (long side rounded down).
    pub fn resized_size(&self, (h, w): (usize, usize)) -> (usize, usize) {
        match self.config.size {
            SizeSpec::HeightWidth { height, width } => (height, width),
            SizeSpec::Int(s) | SizeSpec::ShortestEdge { shortest_edge: s } => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                if short == s {
                    return (h, w);
                }
                let new_long = (s * long) as f64 / short as f64;
                let new_long = new_long as usize;
                if w <= h { (new_long, s) } else { (s, new_long) }
            }
        }
    }

    /// `pixel_values` of one image, `[3, H, W]` row-major, in f32 as transformers computes
    /// them (rescale in f64 then f32, normalise in f32).
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>> {
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::InvalidArgument(
                "the safety checker got an empty image".into(),
            ));
        }
        let cfg = &self.config;
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (nh, nw) = self.resized_size((h, w));
        let resized;
        let img = if (nh, nw) == (h, w) {
            img
        } else {
            resized = pil_resize::resize(img, nw as u32, nh as u32, self.filter);
            &resized
        };
        let cropped;
        let img = if cfg.do_center_crop {
            let (ch, cw) = cfg.crop();
            let top = (img.height() - ch as u32) / 2;
            let left = (img.width() - cw as u32) / 2;
            cropped = crop_imm(img, left, top, cw as u32, ch as u32).to_image();
            &cropped
        } else {
            img
        };
        let plane = (img.width() * img.height()) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                let mut v = if cfg.do_rescale {
                    (f64::from(p[c]) * cfg.rescale_factor) as f32
                } else {
                    f32::from(p[c])
                };
                if cfg.do_normalize {
                    v = (v - cfg.image_mean[c]) / cfg.image_std[c];
                }
                out[c * plane + i] = v;
            }
        }
        Ok(out)
    }
}
