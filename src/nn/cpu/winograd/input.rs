//! The Winograd kernel's input side: what it does to the input rows as it reads them
//! ([`Prologue`]) and the input transform `V = Bᵀ d B` of a task's tiles.

use super::super::{math, simd_dispatch};

/// `[x0, x1, x2, x3] · B` (the same combination of four values as `Bᵀ` applies to rows).
#[inline(always)]
fn bt(v: [f32; 4]) -> [f32; 4] {
    [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]
}

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
    /// Row `y` of channel `ci` (the channel's plane `xc`) as the convolution sees it, into `dst`
    /// (`W` long).
    #[inline(always)]
    fn fill(self, xc: &[f32], ci: usize, y: usize, dst: &mut [f32]) {
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

simd_dispatch! {
    /// `V = Bᵀ d B` for tiles `t0..t0+tb` of one image (`plane` `[C, H, W]`, or as `pro` says),
    /// into `v[ξ][c][t]`. First `Bᵀ` over the four input rows of a tile row, for every column at
    /// once (contiguous, so it vectorises, and the zero padding is decided once per row instead
    /// of per value), then `· B` over each tile's four columns.
    #[allow(clippy::ptr_arg, clippy::too_many_arguments)]
    fn input_transform(
        plane: &[f32],
        pro: Prologue<'_>,
        chw: [usize; 3],
        t0: usize,
        tb: usize,
        rows: &mut Vec<f32>,
        ring: &mut Vec<f32>,
        v: &mut [f32],
    ) {
        let [c, h, wd] = chw;
        let tw = wd.div_ceil(2);
        // Padded row width: one zero column left, and right up to 2·tw + 2.
        let wp = 2 * tw + 2;
        rows.resize(4 * wp + 2 * (tw + 1), 0.0);
        let (rows, split) = rows.split_at_mut(4 * wp);
        let zero = vec![0.0f32; wd];
        // With a prologue, input row y is made once per channel into slot y mod 4 (a tile row
        // reads four consecutive rows, the next one two of the same).
        ring.resize(4 * wd, 0.0);
        let in_plane = match pro {
            Prologue::Upsample2x => (h / 2) * (wd / 2),
            _ => h * wd,
        };
        for ci in 0..c {
            let xc = &plane[ci * in_plane..(ci + 1) * in_plane];
            let mut made = [isize::MIN; 4];
            for (t, ty, tx0, n_here) in tile_runs(t0, tb, tw) {
                let y0 = 2 * ty as isize - 1;
                let inside = |y: isize| y >= 0 && (y as usize) < h;
                if !matches!(pro, Prologue::Plain) {
                    for y in (y0..y0 + 4).filter(|&y| inside(y)) {
                        let s = y.rem_euclid(4) as usize;
                        if made[s] != y {
                            pro.fill(xc, ci, y as usize, &mut ring[s * wd..(s + 1) * wd]);
                            made[s] = y;
                        }
                    }
                }
                let row = |y: isize| -> &[f32] {
                    if !inside(y) {
                        &zero
                    } else if matches!(pro, Prologue::Plain) {
                        &xc[y as usize * wd..(y as usize + 1) * wd]
                    } else {
                        let s = y.rem_euclid(4) as usize;
                        &ring[s * wd..(s + 1) * wd]
                    }
                };
                let d = [row(y0), row(y0 + 1), row(y0 + 2), row(y0 + 3)];
                let (r0, rest) = rows.split_at_mut(wp);
                let (r1, rest) = rest.split_at_mut(wp);
                let (r2, r3) = rest.split_at_mut(wp);
                for q in 0..wd {
                    let [a, b, e, f] = bt([d[0][q], d[1][q], d[2][q], d[3][q]]);
                    r0[q + 1] = a;
                    r1[q + 1] = b;
                    r2[q + 1] = e;
                    r3[q + 1] = f;
                }
                for (i, r) in [&*r0, &*r1, &*r2, &*r3].into_iter().enumerate() {
                    // Tile k reads r[x0..x0 + 4], x0 = 2(tx0 + k): split into even and odd
                    // columns, `bt` is then four contiguous lane loops (as it was, one tile at
                    // a time, it stayed scalar).
                    let (ev, od) = split.split_at_mut(tw + 1);
                    for ((e, o), pair) in ev.iter_mut().zip(od.iter_mut()).zip(r.chunks_exact(2)) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                    let (e0, e1) = (&ev[tx0..tx0 + n_here], &ev[tx0 + 1..tx0 + 1 + n_here]);
                    let (o0, o1) = (&od[tx0..tx0 + n_here], &od[tx0 + 1..tx0 + 1 + n_here]);
                    // bt([e0, o0, e1, o1]) = [e0 - e1, o0 + e1, e1 - o0, o0 - o1], lane-wise,
                    // into V[4i + j][ci][t..], j = 0..4 (one channel plane of V apart).
                    let stride = c * tb;
                    let v0 = &mut v[(4 * i * c + ci) * tb + t..];
                    let (d0, rest) = v0.split_at_mut(stride);
                    let (d1, rest) = rest.split_at_mut(stride);
                    let (d2, d3) = rest.split_at_mut(stride);
                    for k in 0..n_here {
                        d0[k] = e0[k] - e1[k];
                        d1[k] = o0[k] + e1[k];
                        d2[k] = e1[k] - o0[k];
                        d3[k] = o0[k] - o1[k];
                    }
                }
            }
        }
    }
}
