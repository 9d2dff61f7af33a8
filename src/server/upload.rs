//! Multipart uploads: repeated `image[]` parts, and image decoding that checks dimensions
//! before decoding pixels (no decompression bombs).

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageReader, Limits, Luma};
use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::multipart::Upload;
use poem_openapi::types::{ParseError, ParseFromMultipartField, ParseResult, Type};

use super::error::ApiError;

/// Zero or more repeated file parts. Unlike `Vec<Upload>`, optional in the generated spec.
#[derive(Default, Debug)]
pub struct UploadList(pub Vec<Upload>);

impl Type for UploadList {
    const IS_REQUIRED: bool = false;
    type RawValueType = Self;
    type RawElementValueType = Upload;

    fn name() -> std::borrow::Cow<'static, str> {
        "[string_binary]".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        <Vec<Upload> as Type>::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.0.iter())
    }
}

impl ParseFromMultipartField for UploadList {
    async fn parse_from_multipart(field: Option<poem::web::Field>) -> ParseResult<Self> {
        match field {
            Some(f) => Ok(Self(vec![
                Upload::parse_from_multipart(Some(f))
                    .await
                    .map_err(ParseError::propagate)?,
            ])),
            None => Ok(Self(Vec::new())),
        }
    }

    async fn parse_from_repeated_field(mut self, field: poem::web::Field) -> ParseResult<Self> {
        self.0.push(
            Upload::parse_from_multipart(Some(field))
                .await
                .map_err(ParseError::propagate)?,
        );
        Ok(self)
    }
}

/// Decodes an uploaded image whatever its declared name/type, after checking from the header
/// alone that it is at most `max_side` pixels on each side.
pub fn decode_image(bytes: &[u8], param: &str, max_side: u32) -> Result<DynamicImage, ApiError> {
    let bad = |msg: String| ApiError::invalid(param, msg);
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("cannot read `{param}`: {e}")))
    };
    let r = reader()?;
    if r.format().is_none() {
        return Err(bad(format!("`{param}` is not a PNG, JPEG or WebP image")));
    }
    let (w, h) = r
        .into_dimensions()
        .map_err(|e| bad(format!("`{param}` is not a readable image: {e}")))?;
    if w == 0 || h == 0 || w > max_side || h > max_side {
        return Err(bad(format!(
            "`{param}` is {w}x{h}; each side must be between 1 and {max_side} pixels"
        )));
    }
    let mut r = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(u64::from(max_side) * u64::from(max_side) * 16);
    r.limits(limits);
    r.decode()
        .map_err(|e| bad(format!("`{param}` could not be decoded: {e}")))
}

/// OpenAI masks mark the area to edit with alpha 0; diffusers wants white = repaint.
/// A mask without alpha is taken as a diffusers mask already (luma > 127 = repaint).
pub fn mask_from_upload(mask: &DynamicImage) -> GrayImage {
    if mask.color().has_alpha() {
        let rgba = mask.to_rgba8();
        GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            Luma([if rgba.get_pixel(x, y)[3] == 0 { 255 } else { 0 }])
        })
    } else {
        let g = mask.to_luma8();
        GrayImage::from_fn(g.width(), g.height(), |x, y| {
            Luma([if g.get_pixel(x, y)[0] > 127 { 255 } else { 0 }])
        })
    }
}
