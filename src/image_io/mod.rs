//! Pixel conversion and image files: PNG (with A1111's `parameters` text chunk), JPEG, WebP.

pub mod params;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use image::RgbImage;

use crate::error::{Error, Result};

/// `[N, 3, H, W]` in [-1, 1] → RGB8 images, as diffusers' `VaeImageProcessor.postprocess`
/// (`(x/2 + 0.5).clamp(0, 1)`, `× 255`, round half to even). NaN or infinity is an error, never a
/// black image.
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<RgbImage>> {
    let [n, c, h, w] = images.dims();
    if c != 3 {
        return Err(Error::Image(format!("expected 3 channels, got {c}")));
    }
    let data = images.into_data().convert_dtype(DType::F32);
    let v = data
        .as_slice::<f32>()
        .map_err(|e| Error::Image(format!("{e:?}")))?;
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

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    /// Lossless (the `image` crate's WebP encoder has no lossy mode).
    Webp,
}

impl std::str::FromStr for ImageFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            _ => Err(Error::invalid(format!(
                "unknown image format `{s}`; use png, jpeg or webp"
            ))),
        }
    }
}

impl ImageFormat {
    /// From a file name's extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse().ok())
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// Encodes `img`. `quality` (1–100, default 90) is JPEG's; lossless formats refuse it rather
/// than ignore it. `params` goes into PNG files as the `parameters` text chunk.
pub fn encode(
    img: &RgbImage,
    format: ImageFormat,
    quality: Option<u8>,
    params: Option<&params::Parameters>,
) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w, h) = img.dimensions();
    let err = |e: &dyn std::fmt::Display| Error::Image(e.to_string());
    if quality.is_some() && format != ImageFormat::Jpeg {
        return Err(Error::invalid(format!(
            "quality applies to JPEG only; {} output is lossless",
            format.extension()
        )));
    }
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            if let Some(p) = params {
                let text = p.to_infotext();
                // tEXt is Latin-1 only; prompts with other characters go in an iTXt chunk (UTF-8),
                // as PIL does for A1111.
                let latin1 = text.chars().all(|c| (c as u32) < 256);
                let added = if latin1 {
                    enc.add_text_chunk("parameters".into(), text)
                } else {
                    enc.add_itxt_chunk("parameters".into(), text)
                };
                added.map_err(|e| err(&e))?;
            }
            let mut writer = enc.write_header().map_err(|e| err(&e))?;
            writer.write_image_data(img.as_raw()).map_err(|e| err(&e))?;
            writer.finish().map_err(|e| err(&e))?;
        }
        ImageFormat::Jpeg => {
            let q = quality.unwrap_or(90);
            if !(1..=100).contains(&q) {
                return Err(Error::invalid(format!(
                    "JPEG quality must be 1–100, got {q}"
                )));
            }
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
                .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| err(&e))?;
        }
        ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .map_err(|e| err(&e))?,
    }
    Ok(out)
}

/// The `parameters` chunk of a PNG file, if it has one.
pub fn read_parameters(png_bytes: &[u8]) -> Result<Option<params::Parameters>> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let reader = decoder
        .read_info()
        .map_err(|e| Error::Image(e.to_string()))?;
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        });
    text.map(|t| params::Parameters::parse(&t)).transpose()
}

pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path).map_err(|e| Error::io(path, e))
}

/// Writes `img` in the format of `path`'s extension (PNG when unknown).
pub fn save_with(
    img: &RgbImage,
    path: &Path,
    quality: Option<u8>,
    params: Option<&params::Parameters>,
) -> Result<()> {
    let format = ImageFormat::from_path(path).unwrap_or(ImageFormat::Png);
    let bytes = encode(img, format, quality, params)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
