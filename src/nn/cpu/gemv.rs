//! Few-row matrix-vector products for decode steps: `x Wᵀ` with `W` `[N, K]` in PyTorch's
//! layout, f32 or f16 (an f16 checkpoint kept as stored), every input row against each W row
//! in one pass, so each weight is read from memory once: a one-token step is bound by
//! streaming the weights, and f16 halves the bytes.
//!
//! The AVX-512 and AVX2 kernels are written with intrinsics (the compiler did not vectorise
//! the f16 widening inside the dot product, nor the register-resident accumulators for a
//! constant row count). All variants do the same arithmetic in the same order: 32 lanes, lane
//! `l` accumulating `w[c + l] · x[c + l]` as a multiply then an add, the lanes summed as a
//! halving tree, then the tail; f16 → f32 is exact. So every CPU gives the same bits, f16
//! weights the bits of the same weights widened to f32.

use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::weight_rows::{Rows, row_blocks};
use super::{SendPtr, contiguous, dims, new_tensor, slice};

/// Rows at most for the GEMV proper: a decode step's inputs, 2 per image with
/// super-conditioning (the API's n ≤ 10 makes 20). Rows go through in groups of [`GROUP`]; a
/// task's W block (256 rows, at most 1.4 MB) is read from memory for the first group and from
/// L2 for the others. More rows compute more than they stream and take `gemm_nt` instead.
pub(crate) const GEMV_MAX_ROWS: usize = 32;

/// Input rows per kernel call: their accumulators fill the registers.
const GROUP: usize = 8;

/// Output features per task: 256 rows of W (1 MB at K = 1024 in f32).
const BLOCK: usize = 256;

/// Lanes of the accumulation, whatever the instruction set: 32, two 16-lane registers per
/// row on AVX-512, so two add chains per row are in flight (with one, the 4-cycle add latency
/// held the kernel below memory bandwidth).
const L: usize = 32;

/// How far ahead in W the kernels prefetch, in bytes. Without it one core streamed f16 W at
/// 5 GB/s where a plain read loop gets 9 (the hardware prefetcher alone keeps too few lines in
/// flight behind the dependent adds); with it 9–10, and two cores 18–24 GB/s. 4 KB measured
/// best among 1–16 KB.
const PREFETCH_BYTES: usize = 4096;

type Out = [[f32; BLOCK]; GROUP];

/// `out[r][j] = W[j] · x[r]` for the task's W rows and every input row.
fn block(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were detected just above.
            return unsafe { x86::block_avx512(w, x, k, out) };
        }
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were detected just above.
            return unsafe { x86::block_avx(w, x, k, out) };
        }
    }
    block_portable(w, x, k, out);
}

/// Sums the 32 lanes as a tree (halving: lane `l` += lane `l + w` for w = 16, 8, 4, 2, 1,
/// which the SIMD kernels do in registers), then adds the tail (`W` elements `body..k` from
/// `w_at`) in order.
#[inline(always)]
fn finish(acc: &[f32; L], body: usize, k: usize, w_at: impl Fn(usize) -> f32, xr: &[f32]) -> f32 {
    tail(super::math::tree_sum(*acc), body, k, w_at, xr)
}

/// `sum` plus the products of elements `body..k`, in order.
#[inline(always)]
fn tail(mut sum: f32, body: usize, k: usize, w_at: impl Fn(usize) -> f32, xr: &[f32]) -> f32 {
    for i in body..k {
        sum += w_at(i) * xr[i];
    }
    sum
}

fn block_portable(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
    let rows = x.len() / k;
    let body = k - k % L;
    for j in 0..w.count(k) {
        let mut acc = [[0.0f32; L]; GROUP];
        for c in (0..body).step_by(L) {
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                for (l, a) in acc.iter_mut().enumerate() {
                    *a += w.at(k, j, c + l) * x[r * k + c + l];
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            out[r][j] = finish(acc, body, k, |i| w.at(k, j, i), &x[r * k..(r + 1) * k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::reduce8;
    use super::{BLOCK, GROUP, L, Out, PREFETCH_BYTES, Rows, tail};

    /// Prefetches the W cache lines [`PREFETCH_BYTES`] ahead of element `c` of row `j` (as many
    /// lines as one 32-lane step reads), clamped to W.
    #[inline(always)]
    fn prefetch(w: Rows<'_>, k: usize, j: usize, c: usize) {
        let (ptr, len, size) = match w {
            Rows::F32(w) => (w.as_ptr().cast::<i8>(), w.len() * 4, 4),
            Rows::F16(w) => (w.as_ptr().cast::<i8>(), w.len() * 2, 2),
        };
        let at = (j * k + c) * size + PREFETCH_BYTES;
        for line in (0..L * size).step_by(64) {
            // SAFETY: the offset is clamped inside W.
            super::super::prefetch(unsafe { ptr.add((at + line).min(len - 1)) });
        }
    }

    /// Dispatches the row count to a constant, so the accumulators live in registers.
    macro_rules! by_rows {
        ($f:ident, $w:expr, $x:expr, $k:expr, $out:expr) => {
            match $x.len() / $k {
                1 => $f::<1>($w, $x, $k, $out),
                2 => $f::<2>($w, $x, $k, $out),
                3 => $f::<3>($w, $x, $k, $out),
                4 => $f::<4>($w, $x, $k, $out),
                5 => $f::<5>($w, $x, $k, $out),
                6 => $f::<6>($w, $x, $k, $out),
                7 => $f::<7>($w, $x, $k, $out),
                _ => $f::<8>($w, $x, $k, $out),
            }
        };
    }

    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn block_avx512(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
        #[target_feature(enable = "avx512f,f16c")]
        fn rows<const R: usize>(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
            let body = k - k % L;
            for j in 0..w.count(k) {
                // lanes 0..16 and 16..32 of the 32-lane accumulation
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for c in (0..body).step_by(L) {
                    prefetch(w, k, j, c);
                    for (h, half) in [0, 16].into_iter().enumerate() {
                        // SAFETY: c + 32 <= body <= k, inside row j of W and of every x row.
                        let wv = unsafe {
                            match w {
                                Rows::F32(w) => _mm512_loadu_ps(w.as_ptr().add(j * k + c + half)),
                                Rows::F16(w) => _mm512_cvtph_ps(_mm256_loadu_si256(
                                    w.as_ptr().add(j * k + c + half).cast::<__m256i>(),
                                )),
                            }
                        };
                        for (r, a) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(r * k + c + half)) };
                            a[h] = _mm512_add_ps(a[h], _mm512_mul_ps(wv, xv));
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    // lanes l + 16 onto l, then the 16 → 8 halving; the rest as in `reduce8`
                    let s16 = _mm512_add_ps(a[0], a[1]);
                    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s16), 1));
                    let sum = reduce8(_mm256_add_ps(_mm512_castps512_ps256(s16), hi));
                    out[r][j] = tail(sum, body, k, |i| w.at(k, j, i), &x[r * k..(r + 1) * k]);
                }
            }
        }
        by_rows!(rows, w, x, k, out)
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn block_avx(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
        #[target_feature(enable = "avx,f16c")]
        fn rows<const R: usize>(w: Rows<'_>, x: &[f32], k: usize, out: &mut Out) {
            let body = k - k % L;
            for j in 0..w.count(k) {
                // lanes 8h..8h+8 of the 32-lane accumulation in register h
                let mut acc = [[_mm256_setzero_ps(); 4]; R];
                for c in (0..body).step_by(L) {
                    prefetch(w, k, j, c);
                    for (h, half) in [0, 8, 16, 24].into_iter().enumerate() {
                        // SAFETY: c + 32 <= body <= k, inside row j of W and of every x row.
                        let wv = unsafe {
                            match w {
                                Rows::F32(w) => _mm256_loadu_ps(w.as_ptr().add(j * k + c + half)),
                                Rows::F16(w) => _mm256_cvtph_ps(_mm_loadu_si128(
                                    w.as_ptr().add(j * k + c + half).cast::<__m128i>(),
                                )),
                            }
                        };
                        for (r, a) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(r * k + c + half)) };
                            a[h] = _mm256_add_ps(a[h], _mm256_mul_ps(wv, xv));
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    // lanes 16..32 (registers 2, 3) onto 0..16, then 8..16 onto 0..8
                    let s8 = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
                    let sum = reduce8(s8);
                    out[r][j] = tail(sum, body, k, |i| w.at(k, j, i), &x[r * k..(r + 1) * k]);
                }
            }
        }
        by_rows!(rows, w, x, k, out)
    }

    const _: () = assert!(BLOCK > 0 && GROUP == 8);
}

/// `x Wᵀ (+ b)` for few rows (`x` `[…, K]` f32 with at most [`GEMV_MAX_ROWS`] rows) against
/// each of several `(W, b)` (`W` `[N, K]` f32 or f16; a layer's q/k/v, the GLU's two inputs),
/// as one parallel loop over blocks of output features of all of them: one start and one join
/// instead of one per weight. `None` where that does not apply to any of them.
pub(crate) fn gemv_many(
    x: &FlexTensor,
    weights: &[(&FlexTensor, Option<&FlexTensor>)],
) -> Option<Vec<FlexTensor>> {
    let shape = dims(x);
    let k = shape[shape.len() - 1];
    let m = x.layout().num_elements() / k.max(1);
    if k == 0 || m == 0 {
        return None;
    }
    let x = contiguous(x);
    let xs = slice(&x);
    // Each weight's contiguous copy (a no-op when already so), rows and bias.
    let mut held = Vec::with_capacity(weights.len());
    for &(w, bias) in weights {
        let wd = dims(w);
        if wd.len() != 2 || wd[1] != k || !matches!(w.dtype(), DType::F32 | DType::F16) {
            return None;
        }
        held.push((contiguous(w), bias.map(contiguous), wd[0]));
    }
    let jobs: Vec<(Rows<'_>, Option<&[f32]>, usize)> = held
        .iter()
        .map(|(w, b, n)| {
            let start = w.layout().start_offset();
            let rows = match w.dtype() {
                DType::F16 => Rows::F16(&w.storage::<half::f16>()[start..start + n * k]),
                _ => Rows::F32(slice(w)),
            };
            (rows, b.as_ref().map(slice), *n)
        })
        .collect();
    let mut outs: Vec<Vec<f32>> = jobs.iter().map(|&(_, _, n)| vec![0.0f32; m * n]).collect();
    let ptrs: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    if m > GEMV_MAX_ROWS {
        super::gemm_nt::many(xs, m, k, &jobs, &ptrs);
        return Some(finish_outputs(outs, &jobs, &shape));
    }
    let tasks = row_blocks(&jobs, BLOCK);
    super::team::for_each(tasks.len(), |t| {
        let (i, j0) = tasks[t];
        let (weights, bs, n) = jobs[i];
        let out_ptr = ptrs[i];
        let j1 = (j0 + BLOCK).min(n);
        let rows = weights.rows(k, j0, j1);
        let mut part = [[0.0f32; BLOCK]; GROUP];
        for g0 in (0..m).step_by(GROUP) {
            let g1 = (g0 + GROUP).min(m);
            block(rows, &xs[g0 * k..g1 * k], k, &mut part);
            for (r, p) in (g0..g1).zip(&part) {
                for (jj, &v) in p[..j1 - j0].iter().enumerate() {
                    let add = bs.map_or(0.0, |b| b[j0 + jj]);
                    // SAFETY: this task alone writes columns j0..j1 of every row of output i.
                    unsafe { *out_ptr.0.add(r * n + j0 + jj) = v + add };
                }
            }
        }
    });
    Some(finish_outputs(outs, &jobs, &shape))
}

/// Each output as a tensor of `x`'s shape with the last dimension that weight's N.
fn finish_outputs(
    outs: Vec<Vec<f32>>,
    jobs: &[(Rows<'_>, Option<&[f32]>, usize)],
    shape: &[usize],
) -> Vec<FlexTensor> {
    outs.into_iter()
        .zip(jobs)
        .map(|(o, &(_, _, n))| {
            let mut s = shape.to_vec();
            s[shape.len() - 1] = n;
            new_tensor(o, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction-set variant gives the portable kernel's bits, for f32 and f16
    /// weights, every row count and a K with a tail.
    #[test]
    fn variants_give_the_same_bits() {
        let (n, k) = (37, 101);
        let w32: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let w16: Vec<half::f16> = w32.iter().map(|&v| half::f16::from_f32(v)).collect();
        for rows in 1..=GROUP {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 104_729 % 997) as f32) * 1e-2)
                .collect();
            for w in [Rows::F32(&w32), Rows::F16(&w16)] {
                let mut want = [[0.0f32; BLOCK]; GROUP];
                block_portable(w, &x, k, &mut want);
                let mut got = [[0.0f32; BLOCK]; GROUP];
                block(w, &x, k, &mut got);
                assert_eq!(got, want, "{rows} rows");
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx")
                    && std::arch::is_x86_feature_detected!("f16c")
                {
                    let mut avx = [[0.0f32; BLOCK]; GROUP];
                    // SAFETY: the features were detected just above.
                    unsafe { x86::block_avx(w, &x, k, &mut avx) };
                    assert_eq!(avx, want, "{rows} rows, AVX");
                }
            }
        }
    }
}
