//! Image files: PNG (with A1111's `parameters` text chunk), JPEG, lossless WebP.

use std::path::Path;

use image::RgbImage;

use super::params;
use crate::error::{Error, Result};

/// Output file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Every format, e.g. to recognise an extension exactly (`from_str` is lenient).
    pub const ALL: [Self; 3] = [Self::Png, Self::Jpeg, Self::Webp];

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
