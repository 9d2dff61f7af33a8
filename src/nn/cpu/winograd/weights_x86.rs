//! The weight transform `U = G g Gᵀ` ([`super::weights::transform_taps_with`]) with AVX-512F:
//! 16 input channels per vector, the taps loaded, `G g` and `· Gᵀ` kept in registers and each
//! of `U`'s rows stored once. The portable version, built of 16-value arrays, stored every
//! intermediate to the stack and copied each row out, and was store-bound: 21% of a 1280-channel
//! 16×16 convolution's samples (F(4×4) by blocks) and 28% of an 8×8 one's (F(2×2)). The
//! arithmetic is its own, operation for operation (no fused multiply-adds), so `U` has the same
//! bits (`matches_the_lane_version`). Kernel bench, 2 Xeon cores, f16 weights, medians of 2
//! alternated runs: 1280 channels at 8×8 13.0–13.1 -> 10.1–10.6 ms, 2560 -> 1280 at 8×8
//! 26.8–27.1 -> 20.4–20.6 ms, 1280 at 16×16 21.8–22.3 -> 20.5–21.9 ms.

use std::arch::x86_64::*;

use super::super::low_lanes;

/// F(2×2)'s `G` (4×3): `f2::g3`.
#[inline]
#[target_feature(enable = "avx512f")]
fn g3(v: [__m512; 3]) -> [__m512; 4] {
    let half = _mm512_set1_ps(0.5);
    [
        v[0],
        _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(v[0], v[1]), v[2]), half),
        _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(v[0], v[1]), v[2]), half),
        v[2],
    ]
}

/// F(4×4)'s `G` (6×3): `f4::g6`.
#[inline]
#[target_feature(enable = "avx512f")]
fn g6(v: [__m512; 3]) -> [__m512; 6] {
    let [a, b, c] = v;
    let (k24, k6, k12) = (
        _mm512_set1_ps(1.0 / 24.0),
        _mm512_set1_ps(1.0 / 6.0),
        _mm512_set1_ps(1.0 / 12.0),
    );
    let (quarter, minus6) = (_mm512_set1_ps(0.25), _mm512_set1_ps(-1.0 / 6.0));
    let ac = _mm512_add_ps(_mm512_mul_ps(a, k24), _mm512_mul_ps(c, k6));
    let b12 = _mm512_mul_ps(b, k12);
    [
        _mm512_mul_ps(a, quarter),
        _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(a, b), c), minus6),
        _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(a, b), c), minus6),
        _mm512_add_ps(ac, b12),
        _mm512_sub_ps(ac, b12),
        c,
    ]
}

macro_rules! transform_taps {
    ($(#[$m:meta])* $name:ident, $g:ident, $n:literal) => {
        $(#[$m])*
        /// # Safety
        /// The CPU must have AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn $name(taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
            const N: usize = $n;
            assert!(taps.len() >= 9 * c, "9 rows of taps");
            assert!(out.len() >= N * N && out[..N * N].iter().all(|r| r.len() >= c), "N² rows of U");
            for c0 in (0..c).step_by(16) {
                let mask = low_lanes(c - c0);
                let mut g = [_mm512_setzero_ps(); 9];
                for (t, g) in g.iter_mut().enumerate() {
                    // SAFETY: lanes under the mask are channels c0.. < c of tap row t.
                    *g = unsafe { _mm512_maskz_loadu_ps(mask, taps.as_ptr().add(t * c + c0)) };
                }
                // G g: each column kw of g through G...
                let mut cols = [[_mm512_setzero_ps(); N]; 3];
                for (kw, col) in cols.iter_mut().enumerate() {
                    *col = $g([g[kw], g[3 + kw], g[6 + kw]]);
                }
                // ...then · Gᵀ over each row i, stored as U's rows N·i + j.
                for i in 0..N {
                    let row = $g([cols[0][i], cols[1][i], cols[2][i]]);
                    for (j, r) in row.into_iter().enumerate() {
                        let dst = out[N * i + j].as_mut_ptr();
                        // SAFETY: lanes under the mask are channels c0.. < c of a row of
                        // at least c values (asserted above).
                        unsafe { _mm512_mask_storeu_ps(dst.add(c0), mask, r) };
                    }
                }
            }
        }
    };
}

transform_taps!(
    /// [`super::weights::transform_taps_with`] with F(2×2)'s `G`.
    transform_taps_f2,
    g3,
    4
);
transform_taps!(
    /// [`super::weights::transform_taps_with`] with F(4×4)'s `G`.
    transform_taps_f4,
    g6,
    6
);

#[cfg(test)]
mod tests {
    use super::super::{f2, f4};
    use super::*;

    /// Against the portable transforms, bit for bit, over channel counts with and without a
    /// partial last vector; the rows past `c` left as they were.
    #[test]
    fn matches_the_lane_version() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        type Transform = unsafe fn(&[f32], usize, &mut [&mut [f32]]);
        type Lanes = fn(&[f32], usize, &mut [&mut [f32]]);
        let variants: [(usize, Transform, Lanes); 2] = [
            (4, transform_taps_f2, f2::transform_taps_lanes),
            (6, transform_taps_f4, f4::transform_taps_lanes),
        ];
        for (n, x86, lanes) in variants {
            for c in [1, 5, 16, 17, 40, 300] {
                let taps: Vec<f32> = (0..9 * c)
                    .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0137)
                    .collect();
                let ld = c + 3;
                let mut want = vec![f32::NAN; n * n * ld];
                let mut got = want.clone();
                let mut rows: Vec<&mut [f32]> = want.chunks_exact_mut(ld).collect();
                lanes(&taps, c, &mut rows);
                let mut rows: Vec<&mut [f32]> = got.chunks_exact_mut(ld).collect();
                // SAFETY: the feature was detected above.
                unsafe { x86(&taps, c, &mut rows) };
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "U of {n}×{n} positions, {c} channels");
            }
        }
    }
}
