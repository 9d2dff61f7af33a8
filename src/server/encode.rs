//! Image files for responses: PNG, JPEG (quality = `output_compression`) or lossless WebP.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::types::OutputFormat;

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }
}

pub fn encode(
    img: &RgbImage,
    format: OutputFormat,
    quality: u8,
) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    match format {
        OutputFormat::Png => {
            PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
        OutputFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
            .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)?,
        OutputFormat::Webp => WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
    }
    Ok(out)
}
