//! The Winograd kernel's input side: what it does to the input rows as it reads them
//! ([`Prologue`]), and the rows and tiles a task reads.

use super::super::math;

/// A task's tiles `t0..t0 + tb` (row-major over tile rows `tw` wide) as runs along tile rows:
/// `(t, ty, tx0, run)`, the task's tiles `t..t + run` being tiles `tx0..tx0 + run` of tile
/// row `ty`.
#[inline(always)]
pub(super) fn tile_runs(
    t0: usize,
    tb: usize,
    tw: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let mut t = 0;
    std::iter::from_fn(move || {
        (t < tb).then(|| {
            let (ty, tx0) = ((t0 + t) / tw, (t0 + t) % tw);
            let run = (tw - tx0).min(tb - t);
            let at = t;
            t += run;
            (at, ty, tx0, run)
        })
    })
}

/// What the input transform does to the input rows as it reads them, so that the layer
/// before the convolution never makes its output tensor (128 or 256 MB at SD's VAE decoder's
/// last level, where the pipeline's RSS peaks).
#[derive(Clone, Copy)]
pub(crate) enum Prologue<'a> {
    /// The input as it is.
    Plain,
    /// `x · scale[c] + shift[c]` for channel `c` of this image, then SiLU if `silu`: a
    /// GroupNorm in its affine form (`norms::group_norm_affine`).
    Affine {
        scale: &'a [f32],
        shift: &'a [f32],
        silu: bool,
    },
    /// Nearest-neighbour ×2: the plane is `[C, H/2, W/2]` for an `H`×`W` output.
    Upsample2x,
}

impl Prologue<'_> {
    /// The convolution's input plane (its output's, "same") for an `h`×`w` input tensor.
    pub(in crate::nn::cpu) fn plane(self, h: usize, w: usize) -> (usize, usize) {
        match self {
            Prologue::Upsample2x => (2 * h, 2 * w),
            _ => (h, w),
        }
    }

    /// Values per channel of the input plane for an `h`×`w` convolution plane (the inverse of
    /// [`Self::plane`]).
    pub(super) fn input_plane(self, h: usize, w: usize) -> usize {
        match self {
            Prologue::Upsample2x => (h / 2) * (w / 2),
            _ => h * w,
        }
    }

    /// The prologue of image `img` of a batch of `c`-channel images (`Affine` holds `[N·C]`
    /// scales and shifts).
    pub(super) fn for_image(self, img: usize, c: usize) -> Self {
        match self {
            Prologue::Affine { scale, shift, silu } => Prologue::Affine {
                scale: &scale[img * c..(img + 1) * c],
                shift: &shift[img * c..(img + 1) * c],
                silu,
            },
            p => p,
        }
    }

    /// Row `y` of channel `ci` (the channel's plane `xc`) as the convolution sees it, into `dst`
    /// (`W` long).
    #[inline(always)]
    pub(in crate::nn::cpu) fn fill(self, xc: &[f32], ci: usize, y: usize, dst: &mut [f32]) {
        let wd = dst.len();
        match self {
            Prologue::Plain => dst.copy_from_slice(&xc[y * wd..(y + 1) * wd]),
            Prologue::Affine { scale, shift, silu } => {
                let (a, b) = (scale[ci], shift[ci]);
                let src = &xc[y * wd..(y + 1) * wd];
                // The same expression as `norms::norm_group`, so the same bits.
                if silu {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = math::silu(v * a + b);
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * a + b;
                    }
                }
            }
            Prologue::Upsample2x => {
                let wi = wd / 2;
                let src = &xc[(y / 2) * wi..(y / 2 + 1) * wi];
                for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                    d[0] = v;
                    d[1] = v;
                }
            }
        }
    }
}

/// The `A` input rows `y0 .. y0 + A` of channel `ci` (its plane `xc`) that a tile row reads,
/// as the convolution sees them: zeros (`zero`, `W` long) outside the plane, the plane's own
/// rows with `Plain`, else the rows `pro` makes, each once per channel, into ring slot
/// `y mod A` (`made[s]` is the row slot `s` holds): a tile row reads `A` consecutive rows and
/// the next one two of the same.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn tile_rows<'a, const A: usize>(
    pro: Prologue<'_>,
    xc: &'a [f32],
    ci: usize,
    h: usize,
    y0: isize,
    made: &mut [isize; A],
    ring: &'a mut [f32],
    zero: &'a [f32],
) -> [&'a [f32]; A] {
    let wd = zero.len();
    let inside = |y: isize| y >= 0 && (y as usize) < h;
    let plain = matches!(pro, Prologue::Plain);
    if !plain {
        for y in (y0..y0 + A as isize).filter(|&y| inside(y)) {
            let s = y.rem_euclid(A as isize) as usize;
            if made[s] != y {
                pro.fill(xc, ci, y as usize, &mut ring[s * wd..(s + 1) * wd]);
                made[s] = y;
            }
        }
    }
    let ring: &'a [f32] = ring;
    std::array::from_fn(|r| {
        let y = y0 + r as isize;
        if !inside(y) {
            zero
        } else if plain {
            &xc[y as usize * wd..(y as usize + 1) * wd]
        } else {
            let s = y.rem_euclid(A as isize) as usize;
            &ring[s * wd..(s + 1) * wd]
        }
    })
}
