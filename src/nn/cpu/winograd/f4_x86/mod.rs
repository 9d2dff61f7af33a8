//! F(4×4, 3×3)'s input transform and output stage with AVX-512F, 16 tiles of a tile row per
//! vector and each tile's values kept in registers between its two passes.
//!
//! The portable versions in [`super::f4`] store each pass and read it back another way: the
//! input transform wrote the combined rows, split them by column mod 4 with scalar stores and
//! loaded those back as vectors (one at an offset of one value), which stalled on store
//! forwarding; the output stage stored `Y` and interleaved its four columns into the output
//! rows one value at a time. Here the columns are split with two-source permutes and the
//! output rows interleaved with unpacks and block shuffles. The arithmetic is theirs,
//! operation for operation (no fused multiply-adds), so the results are the same bits
//! (`matches_the_lane_versions`). Timings: [`super::f4`]'s `output_stage`.

use std::arch::x86_64::*;

use super::super::low_lanes;
use super::OutputStage;
use super::input::{Prologue, tile_rows, tile_runs};

/// `Bᵀ` applied to six vectors: [`super::f4`]'s `bt`, the same operations in the same order.
#[inline]
#[target_feature(enable = "avx512f")]
fn bt(d: [__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let p = _mm512_sub_ps(d[4], _mm512_mul_ps(four, d[2]));
    let q = _mm512_sub_ps(d[3], _mm512_mul_ps(four, d[1]));
    let s = _mm512_sub_ps(d[4], d[2]);
    let u = _mm512_mul_ps(two, _mm512_sub_ps(d[3], d[1]));
    let first = _mm512_sub_ps(_mm512_mul_ps(four, d[0]), _mm512_mul_ps(five, d[2]));
    let last = _mm512_sub_ps(_mm512_mul_ps(four, d[1]), _mm512_mul_ps(five, d[3]));
    [
        _mm512_add_ps(first, d[4]),
        _mm512_add_ps(p, q),
        _mm512_sub_ps(p, q),
        _mm512_add_ps(s, u),
        _mm512_sub_ps(s, u),
        _mm512_add_ps(last, d[5]),
    ]
}

/// `Aᵀ` applied to six vectors: [`super::f4`]'s `at`.
#[inline]
#[target_feature(enable = "avx512f")]
fn at(m: [__m512; 6]) -> [__m512; 4] {
    let (a, b) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
    let (c, d) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
    let (two, four, eight) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(8.0),
    );
    [
        _mm512_add_ps(_mm512_add_ps(m[0], a), c),
        _mm512_add_ps(b, _mm512_mul_ps(two, d)),
        _mm512_add_ps(a, _mm512_mul_ps(four, c)),
        _mm512_add_ps(_mm512_add_ps(b, _mm512_mul_ps(eight, d)), m[5]),
    ]
}

/// `V = Bᵀ d B`, the contract of [`super::f4`]'s `input_transform` (which calls this).
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_transform(
    plane: &[f32],
    pro: Prologue<'_>,
    [c, h, wd]: [usize; 3],
    t0: usize,
    tb: usize,
    ring: &mut Vec<f32>,
    v: &mut [f32],
) {
    let tw = wd.div_ceil(4);
    let zero = vec![0.0f32; wd];
    ring.resize(6 * wd, 0.0);
    let in_plane = pro.input_plane(h, wd);
    let stride = c * tb;
    assert!(v.len() >= 36 * stride, "V holds 36 positions of C × tiles");
    for ci in 0..c {
        let xc = &plane[ci * in_plane..(ci + 1) * in_plane];
        let mut made = [isize::MIN; 6];
        for (t, ty, tx0, run) in tile_runs(t0, tb, tw) {
            let y0 = 4 * ty as isize - 1;
            let d: [&[f32]; 6] = tile_rows(pro, xc, ci, h, y0, &mut made, ring, &zero);
            for k in (0..run).step_by(16) {
                // SAFETY: tiles t + k .. t + k + 16 (cut at the run's end) of channel ci, for
                // each of the 36 positions `stride` apart: inside V by the assert.
                unsafe {
                    let out = v.as_mut_ptr().add(ci * tb + t + k);
                    input_tiles(d, wd, tx0 + k, (run - k).min(16), out, stride);
                }
            }
        }
    }
}

/// `nt` ≤ 16 tiles from tile column `tx` of one tile row (its six input rows `d`, `wd` wide)
/// into `out + ξ·stride`, lane t = tile `tx + t`.
///
/// # Safety
/// `out + ξ·stride + t` is writable for ξ < 36, t < `nt`.
// `comb` is written down its columns, `q` across both indices.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn input_tiles(
    d: [&[f32]; 6],
    wd: usize,
    tx: usize,
    nt: usize,
    out: *mut f32,
    stride: usize,
) {
    // Bᵀ over the six rows, by vectors of padded columns 4tx + 16q.. (input column one to the
    // left, zero outside the row); the tiles read padded columns 4tx .. 4(tx + nt) + 2.
    let mut comb = [[_mm512_setzero_ps(); 5]; 6];
    for q in 0..(4 * nt + 2).div_ceil(16) {
        let col = (4 * tx + 16 * q) as isize - 1;
        let first = usize::from(col < 0);
        let end = (wd as isize - col).clamp(0, 16) as usize;
        let mask = low_lanes(end) & !low_lanes(first);
        let mut x = [_mm512_setzero_ps(); 6];
        for (x, r) in x.iter_mut().zip(d) {
            // SAFETY: lanes under the mask are columns 0..wd of the row; the others are not
            // read.
            *x = unsafe { _mm512_maskz_loadu_ps(mask, r.as_ptr().wrapping_offset(col)) };
        }
        for (i, b) in bt(x).into_iter().enumerate() {
            comb[i][q] = b;
        }
    }
    // Each combined row split by column mod 4 (lane t: padded column 4t + j), · B, stored.
    // Phase j of tiles 0..8 lies in vectors 0–1 and of tiles 8..16 in 2–3, at (4t + j) mod 32.
    let phase = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    // Columns 4t + 4 and 4t + 5 are phases 0 and 1 of the next tile; tile 15's from vector 4.
    let next0 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
    let next1 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17);
    let store = low_lanes(nt);
    for (i, r) in comb.iter().enumerate() {
        let mut e = [_mm512_setzero_ps(); 6];
        for (j, e) in e.iter_mut().take(4).enumerate() {
            let idx = _mm512_add_epi32(phase, _mm512_set1_epi32(j as i32));
            let lo = _mm512_permutex2var_ps(r[0], idx, r[1]);
            let hi = _mm512_permutex2var_ps(r[2], idx, r[3]);
            *e = _mm512_mask_blend_ps(0xFF00, lo, hi);
        }
        e[4] = _mm512_permutex2var_ps(e[0], next0, r[4]);
        e[5] = _mm512_permutex2var_ps(e[1], next1, r[4]);
        for (j, o) in bt(e).into_iter().enumerate() {
            // SAFETY: ξ = 6i + j < 36, lanes < nt: the caller's promise.
            unsafe { _mm512_mask_storeu_ps(out.add((6 * i + j) * stride), store, o) };
        }
    }
}

/// Four vectors of one output row's pixels (vector j, lane t: column j of tile t) as that
/// row's 64 pixels in order: vector q holds tiles 4q .. 4q + 4.
#[inline]
#[target_feature(enable = "avx512f")]
fn interleave(y: [__m512; 4]) -> [__m512; 4] {
    // Per 128-bit block L: tile 4L + k's four pixels in u[k]...
    let (t0, t1) = (
        _mm512_unpacklo_ps(y[0], y[1]),
        _mm512_unpackhi_ps(y[0], y[1]),
    );
    let (t2, t3) = (
        _mm512_unpacklo_ps(y[2], y[3]),
        _mm512_unpackhi_ps(y[2], y[3]),
    );
    let u0 = _mm512_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm512_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm512_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm512_shuffle_ps::<0xEE>(t1, t3);
    // ...then block q of u0..u3 side by side (a 4×4 transpose of blocks).
    let w0 = _mm512_shuffle_f32x4::<0x44>(u0, u1);
    let w1 = _mm512_shuffle_f32x4::<0x44>(u2, u3);
    let w2 = _mm512_shuffle_f32x4::<0xEE>(u0, u1);
    let w3 = _mm512_shuffle_f32x4::<0xEE>(u2, u3);
    [
        _mm512_shuffle_f32x4::<0x88>(w0, w1),
        _mm512_shuffle_f32x4::<0xDD>(w0, w1),
        _mm512_shuffle_f32x4::<0x88>(w2, w3),
        _mm512_shuffle_f32x4::<0xDD>(w2, w3),
    ]
}

/// `Y = Aᵀ M A` per output channel, then bias and add as the rows are stored: the contract of
/// [`super::output::output_stage_with`] for 4×4 tiles (`m` holds `M[ξ][oi][k·tb + t]`).
///
/// # Safety
/// The CPU must have AVX-512F; the output pixels of `st` are this task's alone, as there.
// `c` is written down its columns, `bc` across both indices.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_stage(m: &[f32], st: &OutputStage<'_>) {
    let OutputStage {
        ohw: [o, h, wd],
        o0,
        ob,
        img0,
        imgs,
        t0,
        tb,
        out,
        ..
    } = *st;
    let tw = wd.div_ceil(4);
    let width = imgs * tb;
    assert!(
        m.len() >= 36 * ob * width,
        "M holds 36 positions of the block × tiles"
    );
    let residual = st.residual();
    for oi in 0..ob {
        let oc = o0 + oi;
        for k in 0..imgs {
            let ch = (img0 + k) * o + oc;
            let b = st.bias_of(oc, ch);
            let bv = _mm512_set1_ps(b);
            for (t, ty, tx0, run) in tile_runs(t0, tb, tw) {
                for s in (0..run).step_by(16) {
                    let nt = (run - s).min(16);
                    let load = low_lanes(nt);
                    let col = k * tb + t + s;
                    // Aᵀ over the rows (ξ = 6a + b) of each column b.
                    let mut c = [[_mm512_setzero_ps(); 6]; 4];
                    for bc in 0..6 {
                        let mut rows = [_mm512_setzero_ps(); 6];
                        for (a, r) in rows.iter_mut().enumerate() {
                            let row = ((6 * a + bc) * ob + oi) * width + col;
                            // SAFETY: lanes < nt are columns col.. of M's row, inside m
                            // by the assert.
                            *r = unsafe { _mm512_maskz_loadu_ps(load, m.as_ptr().add(row)) };
                        }
                        for (i, r) in at(rows).into_iter().enumerate() {
                            c[i][bc] = r;
                        }
                    }
                    let x0 = 4 * (tx0 + s);
                    let len = (4 * nt).min(wd - x0);
                    for (i, ci) in c.iter().enumerate() {
                        let yy = 4 * ty + i;
                        if yy >= h {
                            break;
                        }
                        let start = (ch * h + yy) * wd + x0;
                        let a = residual.map(|a| &a[start..start + len]);
                        let px = interleave(at(*ci));
                        for (q, &p) in px.iter().enumerate().take(len.div_ceil(16)) {
                            let mask = low_lanes(len - 16 * q);
                            // The portable stage's `y + b + a` and `y + b + 0.0`.
                            let more = match a {
                                // SAFETY: lanes under the mask lie in a[..len].
                                Some(a) => unsafe {
                                    _mm512_maskz_loadu_ps(mask, a.as_ptr().add(16 * q))
                                },
                                None => _mm512_setzero_ps(),
                            };
                            let y = _mm512_add_ps(_mm512_add_ps(p, bv), more);
                            // SAFETY: pixels start + 16q.. under the mask are inside the
                            // row; tasks hold disjoint (image, channel, tile) sets, as in
                            // the portable stage.
                            unsafe { _mm512_mask_storeu_ps(out.0.add(start + 16 * q), mask, y) };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
