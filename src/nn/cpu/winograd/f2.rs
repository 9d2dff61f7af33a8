//! Winograd F(2×2, 3×3): each 2×2 block of outputs from a 4×4 input tile, 16 transform
//! positions. Its transforms only add, subtract and halve, so the error stays at f32 rounding
//! of the GEMM sums: the variant for bf16 operands (rounded after the transforms) and for the
//! smaller planes.

use super::super::simd_dispatch;
use super::input::{Prologue, tile_rows, tile_runs};
use super::weights::{Lanes, WeightTransform, transform_taps_with};
#[cfg(target_arch = "x86_64")]
use super::weights_x86;
use super::{OutputStage, OutputTransform, output_stage_with};

/// `G` applied to three values (lanes of them).
#[inline(always)]
fn g3(v: [Lanes; 3]) -> [Lanes; 4] {
    [
        v[0],
        (v[0] + v[1] + v[2]) * 0.5,
        (v[0] - v[1] + v[2]) * 0.5,
        v[2],
    ]
}

/// `Aᵀ` applied to four values.
#[inline(always)]
fn at(v: [f32; 4]) -> [f32; 2] {
    [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]
}

/// `[x0, x1, x2, x3] · B` (the same combination of four values as `Bᵀ` applies to rows).
#[inline(always)]
fn bt(v: [f32; 4]) -> [f32; 4] {
    [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]]
}

/// [`transform_taps_with`] with this variant's `G`: [`weights_x86`]'s where the CPU has
/// AVX-512F, else [`transform_taps_lanes`].
pub(super) fn transform_taps(taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected just above.
        return unsafe { weights_x86::transform_taps_f2(taps, c, out) };
    }
    transform_taps_lanes(taps, c, out)
}

simd_dispatch! {
    /// [`transform_taps_with`] with this variant's `G`, in [`Lanes`].
    fn transform_taps_lanes(taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
        transform_taps_with::<G, 4>(taps, c, out)
    }
}

/// This variant's `G`.
struct G;

impl WeightTransform<4> for G {
    #[inline(always)]
    fn g(v: [Lanes; 3]) -> [Lanes; 4] {
        g3(v)
    }
}

simd_dispatch! {
    /// [`output_stage_with`] for 2×2 output tiles.
    fn output_stage(m: &[f32], y: &mut [f32], st: &OutputStage<'_>) {
        output_stage_with::<Tiles, 2>(m, y, st)
    }
}

/// `Y = Aᵀ M A` of output channel `oi` for all `tb` tiles: `y` holds `Y[00]`, `Y[01]`,
/// `Y[10]`, `Y[11]`, each `tb` long (lanes over tiles, so it vectorises).
struct Tiles;

impl OutputTransform for Tiles {
    #[inline(always)]
    fn apply(m: &[f32], o: usize, oi: usize, tb: usize, y: &mut [f32]) {
        let mm: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * o + oi) * tb..][..tb]);
        let (y00, rest) = y.split_at_mut(tb);
        let (y01, rest) = rest.split_at_mut(tb);
        let (y10, y11) = rest.split_at_mut(tb);
        for t in 0..tb {
            // Aᵀ over rows (ξ = 4a + b, a the row), then · A over the columns.
            let c: [[f32; 2]; 4] =
                std::array::from_fn(|b| at([mm[b][t], mm[4 + b][t], mm[8 + b][t], mm[12 + b][t]]));
            let [a00, a01] = at([c[0][0], c[1][0], c[2][0], c[3][0]]);
            let [a10, a11] = at([c[0][1], c[1][1], c[2][1], c[3][1]]);
            y00[t] = a00;
            y01[t] = a01;
            y10[t] = a10;
            y11[t] = a11;
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
        ring.resize(4 * wd, 0.0);
        let in_plane = pro.input_plane(h, wd);
        for ci in 0..c {
            let xc = &plane[ci * in_plane..(ci + 1) * in_plane];
            let mut made = [isize::MIN; 4];
            for (t, ty, tx0, n_here) in tile_runs(t0, tb, tw) {
                let y0 = 2 * ty as isize - 1;
                let d: [&[f32]; 4] = tile_rows(pro, xc, ci, h, y0, &mut made, ring, &zero);
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
