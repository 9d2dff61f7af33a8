//! Many-row `x Wᵀ` with `W` `[N, K]` f32 or f16 as the checkpoint stores it (DALL·E's text
//! encoder and cross K/V projection: 2 × 64 rows). Through Flex an f16 W was widened to f32 on
//! every call and the transposed product copied on one thread (together ~20 % of the
//! encoder's time). Here W is read once, widened a tile at a time into L1, and never copied.
//!
//! Register tile: [`MR`] W rows (broadcast) × [`NR`] input rows (four 16-lane vectors of the
//! transposed, packed `x`). Each output is `Σ_k w·x` accumulated in order of `k` with fused
//! multiply-adds, so the AVX-512 kernel and the portable one give the same bits.

use super::weight_rows::{Rows, row_blocks};
use super::{SendPtr, simd_dispatch};

/// W rows per register tile.
const MR: usize = 6;
/// Input rows per packed panel.
const NR: usize = 64;
/// Register tiles (of [`MR`] W rows) per parallel task.
const TILES_PER_TASK: usize = 8;

/// `x` `[M, K]` transposed into panels of [`NR`] rows: `[⌈M/NR⌉][K][NR]`, zero-padded.
fn pack_x(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let panels = m.div_ceil(NR);
    let mut xp = vec![0.0f32; panels * k * NR];
    for (p, panel) in xp.chunks_mut(k * NR).enumerate() {
        for r in 0..NR.min(m - p * NR) {
            let row = &x[(p * NR + r) * k..(p * NR + r + 1) * k];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * NR + r] = v;
            }
        }
    }
    xp
}

simd_dispatch! {
    /// `acc[j][r] = Σ_k wt[j·K + k] · xp[k·NR + r]` for one tile, in order of `k`.
    fn tile_portable(wt: &[f32], xp: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
        *acc = [[0.0; NR]; MR];
        for kk in 0..k {
            let xs = &xp[kk * NR..(kk + 1) * NR];
            for (j, aj) in acc.iter_mut().enumerate() {
                let w = wt[j * k + kk];
                for (a, &xv) in aj.iter_mut().zip(xs) {
                    *a = w.mul_add(xv, *a);
                }
            }
        }
    }
}

/// The fastest tile kernel this CPU runs (every one gives the same bits).
fn tile(wt: &[f32], xp: &[f32], k: usize, acc: &mut [[f32; NR]; MR]) {
    assert!(wt.len() >= MR * k && xp.len() >= k * NR);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected and the lengths checked just above.
        return unsafe { x86::tile_avx512(wt, xp, k, acc) };
    }
    tile_portable(wt, xp, k, acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// [`super::tile_portable`] in 24 registers.
    ///
    /// # Safety
    /// AVX-512F must be available; `wt` holds `MR·k` and `xp` `k·NR` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(wt: &[f32], xp: &[f32], k: usize, out: &mut [[f32; NR]; MR]) {
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let (w, x) = (wt.as_ptr(), xp.as_ptr());
        for kk in 0..k {
            // SAFETY: kk < k, and the lengths are the caller's promise.
            unsafe {
                let xb = x.add(kk * NR);
                let xv = [
                    _mm512_loadu_ps(xb),
                    _mm512_loadu_ps(xb.add(16)),
                    _mm512_loadu_ps(xb.add(32)),
                    _mm512_loadu_ps(xb.add(48)),
                ];
                for (j, aj) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(j * k + kk));
                    for (a, &xq) in aj.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, xq, *a);
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            for (q, &v) in a.iter().enumerate() {
                // SAFETY: 16 values at 16·q < NR.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * q), v) };
            }
        }
    }
}

/// `outs[i] = x Wᵢᵀ (+ bᵢ)` for `x` `[M, K]` and each `(Wᵢ rows, bias, Nᵢ)` of `jobs`, written
/// through `outs` (`[M, Nᵢ]` each, row-major), as one parallel loop over blocks of W rows.
pub(super) fn many(
    x: &[f32],
    m: usize,
    k: usize,
    jobs: &[(Rows<'_>, Option<&[f32]>, usize)],
    outs: &[SendPtr],
) {
    let xp = pack_x(x, m, k);
    let rows = TILES_PER_TASK * MR;
    let tasks = row_blocks(jobs, rows);
    super::team::for_each(tasks.len(), |t| {
        let (i, first) = tasks[t];
        let (w, bias, n) = jobs[i];
        let out = &outs[i];
        let mut wt = vec![0.0f32; MR * k];
        let mut acc = [[0.0f32; NR]; MR];
        for j0 in (first..(first + rows).min(n)).step_by(MR) {
            let jn = MR.min(n - j0);
            for j in 0..MR {
                let dst = &mut wt[j * k..(j + 1) * k];
                if j < jn {
                    w.widen_row(k, j0 + j, dst);
                } else {
                    dst.fill(0.0);
                }
            }
            for (p, panel) in xp.chunks(k * NR).enumerate() {
                tile(&wt, panel, k, &mut acc);
                for r in 0..NR.min(m - p * NR) {
                    let row = p * NR + r;
                    for (j, aj) in acc.iter().enumerate().take(jn) {
                        let add = bias.map_or(0.0, |b| b[j0 + j]);
                        // SAFETY: this task alone writes columns first..first + rows of
                        // every row of output i, and row < m, j0 + j < n.
                        unsafe { *out.0.add(row * n + j0 + j) = aj[r] + add };
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 tile gives the portable tile's bits, and a whole product (ragged M, N and
    /// K, f32 and f16 W, bias) matches a plain f64 reference.
    #[test]
    fn tiles_agree_and_products_are_right() {
        let k = 37;
        let wt: Vec<f32> = (0..MR * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let xp: Vec<f32> = (0..k * NR)
            .map(|i| ((i * 104_729 % 997) as f32) * 1e-2)
            .collect();
        let mut want = [[0.0f32; NR]; MR];
        tile_portable(&wt, &xp, k, &mut want);
        let mut got = [[0.0f32; NR]; MR];
        tile(&wt, &xp, k, &mut got);
        assert_eq!(got, want);

        let (m, n) = (NR + 5, 3 * MR * TILES_PER_TASK + 4);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 31 % 113) as f32 - 56.0) * 1e-2)
            .collect();
        let w32: Vec<f32> = (0..n * k)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) * 1e-2)
            .collect();
        let w16: Vec<half::f16> = w32.iter().map(|&v| half::f16::from_f32(v)).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
        for w in [Rows::F32(&w32), Rows::F16(&w16)] {
            let mut out = vec![0.0f32; m * n];
            many(&x, m, k, &[(w, Some(&b), n)], &[SendPtr(out.as_mut_ptr())]);
            for r in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w.at(k, j, i)))
                        .sum();
                    let want = dot + f64::from(b[j]);
                    let got = f64::from(out[r * n + j]);
                    assert!((got - want).abs() < 1e-4, "[{r}, {j}] {got} vs {want}");
                }
            }
        }
    }
}
