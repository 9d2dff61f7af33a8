//! Edit masks, one set of rules for the CLI and the server. A mask comes out as a gray image
//! with 255 where to repaint (diffusers' convention); it is binarised at ≥ 0.5 only after it is
//! resized to the generation size (`img2img::mask_tensor`), as diffusers does.

use image::{DynamicImage, GrayImage, Luma};

use crate::error::{Error, Result};

/// How to read a mask file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskConvention {
    /// Luminance: white repaints (diffusers, A1111).
    White,
    /// Alpha: fully transparent pixels repaint (OpenAI's images/edits).
    Transparent,
    /// `Transparent` when the mask has any fully transparent pixel, else `White`: what the
    /// server does, since OpenAI clients send alpha masks and diffusers users white ones.
    #[default]
    Auto,
}

impl std::str::FromStr for MaskConvention {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "white" => Ok(Self::White),
            "alpha" | "transparent" => Ok(Self::Transparent),
            "auto" => Ok(Self::Auto),
            _ => Err(Error::invalid(format!(
                "unknown mask convention `{s}`; use auto, white or alpha"
            ))),
        }
    }
}

/// A mask image in either convention → 255 where to repaint.
pub fn mask_from_image(mask: &DynamicImage, convention: MaskConvention) -> GrayImage {
    let transparent = mask.color().has_alpha() && mask.to_rgba8().pixels().any(|p| p[3] == 0);
    match convention {
        MaskConvention::Transparent => alpha_mask(mask),
        MaskConvention::Auto if transparent => alpha_mask(mask),
        _ => mask.to_luma8(),
    }
}

/// Fully transparent pixels of `img` → 255; `None` when nothing is transparent.
pub fn mask_from_transparency(img: &DynamicImage) -> Option<GrayImage> {
    if !img.color().has_alpha() {
        return None;
    }
    let m = alpha_mask(img);
    m.pixels().any(|p| p[0] == 255).then_some(m)
}

fn alpha_mask(img: &DynamicImage) -> GrayImage {
    let rgba = img.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        Luma([if rgba.get_pixel(x, y)[3] == 0 { 255 } else { 0 }])
    })
}

/// The repaint mask of an edit: from `mask` when one is given (it must have the image's size;
/// `what` names it in that error), else the image's own fully transparent pixels (OpenAI:
/// "if mask is not provided, image must have transparency, which will be used as the mask"),
/// else none (image-to-image).
pub fn edit_mask(
    image: &DynamicImage,
    mask: Option<&DynamicImage>,
    convention: MaskConvention,
    what: &str,
) -> Result<Option<GrayImage>> {
    let Some(mask) = mask else {
        return Ok(mask_from_transparency(image));
    };
    let ((mw, mh), (iw, ih)) = (
        (mask.width(), mask.height()),
        (image.width(), image.height()),
    );
    if (mw, mh) != (iw, ih) {
        return Err(Error::invalid(format!(
            "{what} is {mw}x{mh} but the image is {iw}x{ih}; they must match"
        )));
    }
    Ok(Some(mask_from_image(mask, convention)))
}
