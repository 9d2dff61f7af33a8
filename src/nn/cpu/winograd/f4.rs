//! Winograd F(4×4, 3×3) (Lavin & Gray's matrices, points 0, ±1, ±2, ∞): each 4×4 block of
//! outputs from a 6×6 input tile, 36 transform positions, so the GEMMs do 4x fewer FLOPs than
//! direct convolution where F(2×2) does 2.25x. Its transforms scale by up to 8 and by 1/24,
//! which costs precision: against Burn's convolution, 1.1e-5 of the output's scale over 640
//! input channels (tested within 4e-5), where F(2×2) stays under 1e-5
//! (`same_conv_kernel_matches_burn_conv`). The f32 variant for the large planes; bf16
//! operands, rounded after the transforms, keep F(2×2).

use super::super::simd_dispatch;
#[cfg(target_arch = "x86_64")]
use super::f4_x86;
use super::input::{Prologue, tile_rows, tile_runs};
use super::weights::{Lanes, WeightTransform, transform_taps_with};
#[cfg(target_arch = "x86_64")]
use super::weights_x86;
use super::{OutputStage, OutputTransform, output_stage_with};

/// `G` (6×3) applied to three values (lanes of them).
#[inline(always)]
fn g6(v: [Lanes; 3]) -> [Lanes; 6] {
    let [a, b, c] = v;
    let (ac, b12) = (a * (1.0 / 24.0) + c * (1.0 / 6.0), b * (1.0 / 12.0));
    [
        a * 0.25,
        (a + b + c) * (-1.0 / 6.0),
        (a - b + c) * (-1.0 / 6.0),
        ac + b12,
        ac - b12,
        c,
    ]
}

/// `Bᵀ` (6×6) applied to six values.
#[inline(always)]
fn bt(d: [f32; 6]) -> [f32; 6] {
    // Shared terms: r1, r2 = ±4(d1 + ... ) and r3, r4 = ±2(...): d4 - 4d2 and d4 - d2 are
    // common to each pair.
    let (p, q) = (d[4] - 4.0 * d[2], d[3] - 4.0 * d[1]);
    let (s, u) = (d[4] - d[2], 2.0 * (d[3] - d[1]));
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        p + q,
        p - q,
        s + u,
        s - u,
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `Aᵀ` (4×6) applied to six values.
#[inline(always)]
fn at(m: [f32; 6]) -> [f32; 4] {
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m[5]]
}

/// [`transform_taps_with`] with this variant's `G`: [`weights_x86`]'s where the CPU has
/// AVX-512F, else [`transform_taps_lanes`].
pub(super) fn transform_taps(taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected just above.
        return unsafe { weights_x86::transform_taps_f4(taps, c, out) };
    }
    transform_taps_lanes(taps, c, out)
}

simd_dispatch! {
    /// [`transform_taps_with`] with this variant's `G`, in [`Lanes`].
    fn transform_taps_lanes(taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
        transform_taps_with::<G, 6>(taps, c, out)
    }
}

/// This variant's `G`.
struct G;

impl WeightTransform<6> for G {
    #[inline(always)]
    fn g(v: [Lanes; 3]) -> [Lanes; 6] {
        g6(v)
    }
}

/// [`output_stage_with`] for 4×4 output tiles: [`f4_x86`]'s where the CPU has AVX-512F, else by
/// lanes. With both of `f4_x86`'s transforms (kernel bench, 2 Xeon cores, f16 weights, medians
/// of 2 alternated runs): 320 channels at 64×64 18.1–18.9 -> 15.6–16.6 ms, 640 at 32×32
/// 19.1 -> 17.8–18.4 ms, 1280 at 16×16 24.5 -> 23.6–24.3 ms; the SD VAE decode at 512²
/// 3.49–3.63 -> 3.23–3.35 s (there the transforms had been 27% of the samples).
pub(super) fn output_stage(m: &[f32], y: &mut [f32], st: &OutputStage<'_>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected just above; the rest is the caller's contract.
        return unsafe { f4_x86::output_stage(m, st) };
    }
    output_stage_lanes(m, y, st)
}

simd_dispatch! {
    /// [`output_stage_with`] for 4×4 output tiles, by lanes of 16 tiles.
    fn output_stage_lanes(m: &[f32], y: &mut [f32], st: &OutputStage<'_>) {
        output_stage_with::<Tiles, 4>(m, y, st)
    }
}

/// `Y = Aᵀ M A` of output channel `oi` for all `tb` tiles: `y[(4i + j)·tb + t]` is `Y[i][j]`
/// of tile `t` (lanes over tiles, so it vectorises).
struct Tiles;

impl OutputTransform for Tiles {
    #[inline(always)]
    fn apply(m: &[f32], o: usize, oi: usize, tb: usize, y: &mut [f32]) {
        // In lanes of 16 tiles copied into arrays, as `transform_taps` does: indexing 36
        // slices per tile stayed scalar (the output stage took half the GEMMs' time).
        const L: usize = 16;
        for t0 in (0..tb).step_by(L) {
            let len = L.min(tb - t0);
            // Aᵀ over the rows (ξ = 6a + b, a the row) of each column b...
            let mut c = [[[0.0f32; L]; 4]; 6];
            for (b, c) in c.iter_mut().enumerate() {
                let col: [[f32; L]; 6] = std::array::from_fn(|a| {
                    let mut v = [0.0f32; L];
                    v[..len].copy_from_slice(&m[((6 * a + b) * o + oi) * tb + t0..][..len]);
                    v
                });
                for l in 0..L {
                    let r = at([
                        col[0][l], col[1][l], col[2][l], col[3][l], col[4][l], col[5][l],
                    ]);
                    for i in 0..4 {
                        c[i][l] = r[i];
                    }
                }
            }
            // ...then · A over the columns of each row i.
            for i in 0..4 {
                let mut out = [[0.0f32; L]; 4];
                for l in 0..L {
                    let r = at([
                        c[0][i][l], c[1][i][l], c[2][i][l], c[3][i][l], c[4][i][l], c[5][i][l],
                    ]);
                    for j in 0..4 {
                        out[j][l] = r[j];
                    }
                }
                for (j, out) in out.iter().enumerate() {
                    y[(4 * i + j) * tb + t0..][..len].copy_from_slice(&out[..len]);
                }
            }
        }
    }
}

/// `V = Bᵀ d B` ([`input_transform_lanes`]): [`f4_x86`]'s where the CPU has AVX-512F.
#[allow(clippy::ptr_arg, clippy::too_many_arguments)]
pub(super) fn input_transform(
    plane: &[f32],
    pro: Prologue<'_>,
    chw: [usize; 3],
    t0: usize,
    tb: usize,
    rows: &mut Vec<f32>,
    ring: &mut Vec<f32>,
    v: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected just above.
        return unsafe { f4_x86::input_transform(plane, pro, chw, t0, tb, ring, v) };
    }
    input_transform_lanes(plane, pro, chw, t0, tb, rows, ring, v)
}

simd_dispatch! {
    /// `V = Bᵀ d B` for tiles `t0..t0+tb` of one image (`plane` `[C, H, W]`, or as `pro` says),
    /// into `v[ξ][c][t]`. As in F(2×2): `Bᵀ` over the six input rows of a tile row for every
    /// column at once, then each combined row split by column mod 4 so that `· B` over a
    /// tile's six columns is six contiguous lane loops over the tiles.
    #[allow(clippy::ptr_arg, clippy::too_many_arguments)]
    fn input_transform_lanes(
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
        let tw = wd.div_ceil(4);
        // Padded row width: one zero column left, zeros right up to 4·(tw + 1) (tile tx reads
        // padded columns 4tx .. 4tx + 6).
        let (wp, pw) = (4 * tw + 4, tw + 1);
        rows.clear();
        rows.resize(6 * wp + 4 * pw, 0.0);
        let (rows, split) = rows.split_at_mut(6 * wp);
        let zero = vec![0.0f32; wd];
        ring.resize(6 * wd, 0.0);
        let in_plane = pro.input_plane(h, wd);
        let stride = c * tb;
        for ci in 0..c {
            let xc = &plane[ci * in_plane..(ci + 1) * in_plane];
            let mut made = [isize::MIN; 6];
            for (t, ty, tx0, n_here) in tile_runs(t0, tb, tw) {
                let y0 = 4 * ty as isize - 1;
                let d: [&[f32]; 6] = tile_rows(pro, xc, ci, h, y0, &mut made, ring, &zero);
                {
                    // Locals of one length, as below.
                    let [x0, x1, x2, x3, x4, x5] = d.map(|r| &r[..wd]);
                    let (r0, rest) = rows.split_at_mut(wp);
                    let (r1, rest) = rest.split_at_mut(wp);
                    let (r2, rest) = rest.split_at_mut(wp);
                    let (r3, rest) = rest.split_at_mut(wp);
                    let (r4, r5) = rest.split_at_mut(wp);
                    let (r0, r1, r2) = (&mut r0[1..wd + 1], &mut r1[1..wd + 1], &mut r2[1..wd + 1]);
                    let (r3, r4, r5) = (&mut r3[1..wd + 1], &mut r4[1..wd + 1], &mut r5[1..wd + 1]);
                    for q in 0..wd {
                        let b = bt([x0[q], x1[q], x2[q], x3[q], x4[q], x5[q]]);
                        (r0[q], r1[q], r2[q]) = (b[0], b[1], b[2]);
                        (r3[q], r4[q], r5[q]) = (b[3], b[4], b[5]);
                    }
                }
                for (i, r) in rows.chunks_exact(wp).enumerate() {
                    // Tile tx reads r[4tx .. 4tx + 6]: phases p_j[k] = r[4k + j].
                    let (p0, rest) = split.split_at_mut(pw);
                    let (p1, rest) = rest.split_at_mut(pw);
                    let (p2, p3) = rest.split_at_mut(pw);
                    let phases = p0.iter_mut().zip(p1.iter_mut()).zip(p2.iter_mut().zip(p3.iter_mut()));
                    for (quad, ((a, b), (c, d))) in r.chunks_exact(4).zip(phases) {
                        (*a, *b, *c, *d) = (quad[0], quad[1], quad[2], quad[3]);
                    }
                    // Slices of one length as locals, so the lane loop has no bounds checks
                    // (in arrays of slices it stayed scalar).
                    let n = n_here;
                    let (e0, e1, e2) = (&p0[tx0..][..n], &p1[tx0..][..n], &p2[tx0..][..n]);
                    let (e3, e4, e5) = (&p3[tx0..][..n], &p0[tx0 + 1..][..n], &p1[tx0 + 1..][..n]);
                    // Into V[6i + j][ci][t..], j = 0..6 (one channel plane of V apart).
                    let v0 = &mut v[(6 * i * c + ci) * tb + t..];
                    let (d0, rest) = v0.split_at_mut(stride);
                    let (d1, rest) = rest.split_at_mut(stride);
                    let (d2, rest) = rest.split_at_mut(stride);
                    let (d3, rest) = rest.split_at_mut(stride);
                    let (d4, d5) = rest.split_at_mut(stride);
                    let (d0, d1, d2) = (&mut d0[..n], &mut d1[..n], &mut d2[..n]);
                    let (d3, d4, d5) = (&mut d3[..n], &mut d4[..n], &mut d5[..n]);
                    for k in 0..n {
                        let b = bt([e0[k], e1[k], e2[k], e3[k], e4[k], e5[k]]);
                        (d0[k], d1[k], d2[k]) = (b[0], b[1], b[2]);
                        (d3[k], d4[k], d5[k]) = (b[3], b[4], b[5]);
                    }
                }
            }
        }
    }
}
