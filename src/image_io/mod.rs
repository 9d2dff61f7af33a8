//! Every image edge of kiln: pixel conversion from model tensors, encoding (PNG with A1111's
//! `parameters` text chunk, JPEG, WebP), decoding with size limits, the edit-mask rules, and
//! resizing. The CLI and the server both come here, so a file written by one reads the same as
//! a response of the other.

mod decode;
mod encode;
pub mod mask;
pub mod params;
pub mod pil_resize;

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use image::imageops::FilterType;
use image::{ImageBuffer, Pixel, RgbImage};

use crate::error::{Error, Result};

pub use decode::{CLI_MAX_SIDE, decode, open};
pub use encode::{ImageFormat, encode, read_parameters, save, save_with};

/// `[N, 3, H, W]` in [-1, 1] → RGB8 images, as diffusers' `VaeImageProcessor.postprocess`
/// (`(x/2 + 0.5).clamp(0, 1)`, `× 255`, round half to even). NaN or infinity is an error, never a
/// black image.
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<RgbImage>> {
    let [n, c, h, w] = images.dims();
    if c != 3 {
        return Err(Error::Image(format!("expected 3 channels, got {c}")));
    }
    let v = crate::nn::host_f32(images)?;
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(Error::Numerical(format!(
            "the decoded image contains {bad}; the model produced NaN/inf (try f32 or another seed)"
        )));
    }
    let plane = h * w;
    Ok((0..n)
        .map(|k| {
            let base = k * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let px = |ch: usize| to_u8(v[base + ch * plane + p]);
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect())
}

pub fn to_u8(x: f32) -> u8 {
    ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, … for several.
pub fn numbered_path(path: &Path, index: usize, count: usize) -> std::path::PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// `img` at `width × height` (Lanczos, as diffusers' image processor); as it is when it already
/// has that size. Families with a native size (DALL·E: 256x256) reach other sizes through this.
/// Masks (gray images) are resized the same way.
pub fn resize<P: Pixel + 'static>(
    img: ImageBuffer<P, Vec<P::Subpixel>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<P::Subpixel>> {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, FilterType::Lanczos3)
    }
}
