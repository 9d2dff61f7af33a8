//! The work budget of one request (`kiln serve --max-work`). Each bound on its own (`--max-size`,
//! `--max-steps`, `n`) is sensible, but together they let one request ask for hours of device
//! time (10 images of 1024×1024 at 150 steps), so their product is bounded too and a request
//! over it is refused before it is queued.
//!
//! The unit is one denoising step of one 512×512 image: an SD request costs
//! `n × steps × width·height / 512²` units (rounded up; steps as asked, or the family's default,
//! so an edit's `strength` < 1 is counted in full). The UNet and VAE cost grows about linearly
//! with the pixels at SD's sizes, so the product tracks device time within a small factor.

use super::Limits;
use crate::engine::EngineError;
use crate::models::Family;
use crate::models::family::sd15_defaults;

/// The pixels of one work unit: one denoising step of one 512×512 image.
const WORK_UNIT_PIXELS: u64 = 512 * 512;

/// The work of one DALL·E image in units, whatever size is asked for (it renders 256×256 and
/// is resized): 256 sequential token steps and a VQGAN decode, about what one 512×512 SD image
/// at 50 steps costs.
const DALLE_IMAGE_WORK: u64 = 50;

/// The server's default budget: 1000 steps of a 512×512 image, 40 default (25-step) images.
/// Every request up to 4 images of 1024×1024 at 50 steps, or 10 of 512×512 at 100, fits; 10
/// of 1024×1024 at 150 steps (6000) does not.
pub const DEFAULT_MAX_WORK: u64 = 1000;

/// The work of a request for `n` images of `width × height` with `steps` (`None`: the family's
/// default), in units; saturates instead of overflowing.
fn work(family: Family, n: u32, width: u32, height: u32, steps: Option<u32>) -> u64 {
    let n = u64::from(n);
    match family {
        Family::Sd15 => {
            let steps = steps.map_or(sd15_defaults::STEPS as u64, u64::from);
            n.saturating_mul(steps)
                .saturating_mul(u64::from(width) * u64::from(height))
                .div_ceil(WORK_UNIT_PIXELS)
        }
        Family::DalleMini => n.saturating_mul(DALLE_IMAGE_WORK),
    }
}

/// Refuses a request whose [`work`] is over `limits.max_work`, saying what it asked for.
pub fn check(
    family: Family,
    limits: &Limits,
    n: u32,
    (width, height): (u32, u32),
    steps: Option<u32>,
) -> Result<(), EngineError> {
    let asked = work(family, n, width, height, steps);
    if asked <= limits.max_work {
        return Ok(());
    }
    let what = match family {
        Family::Sd15 => {
            let steps = steps.map_or(sd15_defaults::STEPS as u64, u64::from);
            format!("n={n} × {steps} steps × {width}x{height}")
        }
        Family::DalleMini => format!("n={n} × {DALLE_IMAGE_WORK} per DALL·E image"),
    };
    // No one field is at fault, so no `param`.
    Err(EngineError::Invalid {
        param: None,
        message: format!(
            "this request asks for {asked} units of work ({what}; a unit is one denoising step \
             of a 512x512 image), more than the limit of {} per request: ask for fewer \
             images, steps or pixels",
            limits.max_work
        ),
    })
}
