//! Reading images people send (uploads, `--image`/`--mask` files): the size is checked from the
//! header before any pixel is decoded, so a small file cannot expand into gigabytes.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

use crate::error::{Error, Result};

/// The CLI's bound on each side of an input file (8192² = 64 Mi pixels).
pub const CLI_MAX_SIDE: u32 = 8192;

/// Decodes a PNG, JPEG or WebP image whatever its declared name or type, after checking from
/// the header alone that each side is 1..=`max_side` pixels. `what` names the input in errors
/// (`` `image` ``, a file name).
pub fn decode(bytes: &[u8], what: &str, max_side: u32) -> Result<DynamicImage> {
    let bad = |msg: String| Error::invalid(msg);
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("cannot read {what}: {e}")))
    };
    let r = reader()?;
    if r.format().is_none() {
        return Err(bad(format!("{what} is not a PNG, JPEG or WebP image")));
    }
    let (w, h) = r
        .into_dimensions()
        .map_err(|e| bad(format!("{what} is not a readable image: {e}")))?;
    if w == 0 || h == 0 || w > max_side || h > max_side {
        return Err(bad(format!(
            "{what} is {w}x{h}; each side must be between 1 and {max_side} pixels"
        )));
    }
    let mut r = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(u64::from(max_side) * u64::from(max_side) * 16);
    r.limits(limits);
    r.decode()
        .map_err(|e| bad(format!("{what} could not be decoded: {e}")))
}

/// [`decode`] of a file, named by its path in errors.
pub fn open(path: &Path, max_side: u32) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &path.display().to_string(), max_side)
}
