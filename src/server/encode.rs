//! Response images: the API's `output_format` / `output_compression` onto `image_io`'s encoder,
//! the one the CLI writes files with (so PNG responses carry the same `parameters` infotext).

use image::RgbImage;
use poem::http::StatusCode;

use super::error::ApiError;
use super::types::OutputFormat;
use crate::image_io::{self, ImageFormat, params::Parameters};

impl From<OutputFormat> for ImageFormat {
    fn from(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Png => ImageFormat::Png,
            OutputFormat::Jpeg => ImageFormat::Jpeg,
            OutputFormat::Webp => ImageFormat::Webp,
        }
    }
}

/// Encodes `img` on a blocking thread. `quality` (`output_compression`, 0–100) applies to JPEG
/// (0 is taken as 1); PNG and WebP are lossless. `params` goes into PNG files.
pub async fn encode(
    img: RgbImage,
    params: Option<Parameters>,
    format: OutputFormat,
    quality: u8,
) -> Result<Vec<u8>, ApiError> {
    let format = ImageFormat::from(format);
    let quality = (format == ImageFormat::Jpeg).then_some(quality.clamp(1, 100));
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}"),
        )
    };
    tokio::task::spawn_blocking(move || image_io::encode(&img, format, quality, params.as_ref()))
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))
}
