//! [`super::attention`] in f32 without a causal mask, with each task's scores held keys ×
//! queries, so every vector runs along 16 queries.
//!
//! Held queries × keys (the blocked path in [`super::attention`]), the `P·V` product runs its
//! vectors along the head's values: 40 of them at SD's 64×64 level fill 40 of the gemm crate's
//! 48 lanes, and the softmax's max and sum fold 16 lanes into one per query and key block.
//! Held keys × queries ([`narrow`]'s products, left operands by columns):
//! - `Sᵀ = K·Qᵀ`: each head's keys transposed once per call and broadcast, a tile's keys side
//!   by side; the task's queries transposed once (and scaled there) and loaded as whole
//!   16-query vectors; each query's maximum over the block taken from the product's registers;
//! - the softmax runs down the key rows, each lane a query: exponentials and sums are vector
//!   operations with nothing to fold;
//! - `Oᵀ = Vᵀ·Pᵀ`: values broadcast from V as it lies (a key's values side by side), the
//!   probabilities loaded as 16-query vectors.
//!
//! Same sums as the blocked path (f32 products with fused multiply-adds, the online rescaling
//! in f32, each query's total in f64 across key blocks); the exponentials are base 2 of scores
//! scaled by log₂e/√D. Against f64, 3e-6 of the output's scale where the blocked path and
//! Burn's attention are within 1.5e-6 (`f32_matches_f64`).

use rayon::prelude::*;

use super::attention::{BLOCK_Q, Online, View, store_rows};
use super::narrow::{self, Lhs};
use super::{Product, SendPtr, Unfilled, math, resize_unfilled};

/// Keys per block: the 512 × 256 f32 score block (512 KiB) stays in L2 from its product
/// through the softmax to `Vᵀ·Pᵀ`.
const BLOCK_KV: usize = 512;

/// Row stride of `n` values in the task's buffers and of `Kᵀ`: 16 more than the next
/// multiple of 16, so that rows a power of two apart in bytes (1 KiB for 256 queries, 16 KiB
/// for 4096 keys) do not all fall in the same few L1 sets.
fn padded(n: usize) -> usize {
    n.next_multiple_of(16) + 16
}

/// Whether this path runs these views: heads whose values do not fill whole 16-lane vectors
/// (kernel bench, 2 Xeon cores, medians of 6, 3 alternated runs: [2,8,4096,40] self 196–202
/// → 184–193 ms, ×77 keys 10.3–10.9 → 6.0–6.5 ms), and heads of 80 (SD's 32×32 level) since
/// the keys are transposed by panels: [2,8,1024,80] self 20.8–20.9 → 19.2–19.9 ms, ×77 keys
/// 3.2–3.3 → 2.2 ms against the blocked path (2 alternated runs). At 160 values the blocked
/// path stays ahead: [2,8,256,160] 2.5–2.6 vs 2.7–2.8 ms. Its products need AVX-512F
/// (elsewhere [`narrow`] falls back to the gemm crate, which the blocked path drives better)
/// and values read along their rows.
pub(super) fn fits(vv: &View) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (!vv.shape[3].is_multiple_of(16) || vv.shape[3] == 80)
            && std::arch::is_x86_feature_detected!("avx512f")
            && vv.strides[3] == 1
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = vv;
        false
    }
}

/// One key block of the online softmax down the columns of `st` (rows of the task's queries,
/// `ld` apart, already scaled by log₂e/√D, their maxima in `block_max`): the running maxima
/// raised to the block's, the block's `2^(x − m)` written in place ([`exp_cols`]), the
/// correction 2^(m_old − m_new) and the running sums updated. `sum` is scratch.
fn softmax_cols(st: &mut [f32], ld: usize, block_max: &[f32], sum: &mut [f32], o: &mut Online) {
    let Online { m, l, corr } = o;
    corr.copy_from_slice(m);
    for (m, &x) in m.iter_mut().zip(block_max.iter()) {
        *m = if x > *m { x } else { *m };
    }
    sum.fill(0.0);
    exp_cols(st, ld, m, sum);
    for (((c, &m), l), &s) in corr
        .iter_mut()
        .zip(m.iter())
        .zip(l.iter_mut())
        .zip(sum.iter())
    {
        *c = if *c == f32::NEG_INFINITY {
            0.0
        } else {
            math::exp2_le0(*c - m)
        };
        *l = *l * f64::from(*c) + f64::from(s);
    }
}

/// `x ← 2^(x − m[j])` down each column `j` of `st` (rows `ld` apart), `sum[j]` += the column's
/// new values in row order: [`math::exp2_le0`]'s bits, four 16-query vectors at a time, each
/// query's maximum and sum held in a register down the block. (The same loop auto-vectorised
/// row by row, loading and storing the sums at every row, was 2.9% of an SD step's samples.)
fn exp_cols(st: &mut [f32], ld: usize, m: &[f32], sum: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: this path runs only where `fits` found AVX-512F.
    unsafe {
        x86::exp_cols(st, ld, m, sum)
    }
    #[cfg(not(target_arch = "x86_64"))]
    for row in st.chunks_exact_mut(ld) {
        for ((x, &m), s) in row.iter_mut().zip(m.iter()).zip(sum.iter_mut()) {
            *x = math::exp2_le0(*x - m);
            *s += *x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::low_lanes;
    use super::math::Exp2Sub;

    /// [`super::exp_cols`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_cols(st: &mut [f32], ld: usize, m: &[f32], sum: &mut [f32]) {
        let n = m.len();
        let mut j0 = 0;
        while j0 + 64 <= n {
            // SAFETY: columns j0..j0 + 64 ≤ n of every row.
            unsafe { cols::<4>(st, ld, &m[j0..], &mut sum[j0..], j0) };
            j0 += 64;
        }
        while j0 < n {
            // SAFETY: the masks stop at column n.
            unsafe { cols::<1>(st, ld, &m[j0..], &mut sum[j0..], j0) };
            j0 += 16;
        }
    }

    /// [`super::transpose`], 16 rows per gather.
    ///
    /// # Safety
    /// AVX-512F; as there, and `16·rs` fits an i32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(
        src: *const f32,
        [rs, cs]: [isize; 2],
        [n, d]: [usize; 2],
        scale: Option<f32>,
        dst: &mut [f32],
        ld: usize,
    ) {
        let step = _mm512_set1_epi32(rs as i32);
        let rows = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            step,
        );
        for i0 in (0..n).step_by(16) {
            let mask = low_lanes(n - i0);
            for c in 0..d {
                let at = src.wrapping_offset(i0 as isize * rs + c as isize * cs);
                // SAFETY: lanes under the mask are rows i0.. < n of column c: readable.
                let mut v =
                    unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, rows, at) };
                if let Some(s) = scale {
                    v = _mm512_mul_ps(_mm512_set1_ps(s), v);
                }
                // SAFETY: values c·ld + i0.. under the mask, inside dst (the caller's assert).
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(c * ld + i0), mask, v) };
            }
        }
    }

    /// `V` vectors of columns from `j0` (masked at `m.len()`).
    ///
    /// # Safety
    /// AVX-512F; `st` holds whole rows of `ld` ≥ `j0 + m.len()` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn cols<const V: usize>(
        st: &mut [f32],
        ld: usize,
        m: &[f32],
        sum: &mut [f32],
        j0: usize,
    ) {
        let exp = Exp2Sub::base2();
        let mut masks = [0; V];
        let mut mv = [_mm512_setzero_ps(); V];
        let mut sv = [_mm512_setzero_ps(); V];
        for v in 0..V {
            masks[v] = low_lanes(m.len().saturating_sub(16 * v));
            // SAFETY: lanes under the mask lie inside m and sum.
            unsafe {
                mv[v] = _mm512_maskz_loadu_ps(masks[v], m.as_ptr().add(16 * v));
                sv[v] = _mm512_maskz_loadu_ps(masks[v], sum.as_ptr().add(16 * v));
            }
        }
        for row in st.chunks_exact_mut(ld) {
            let at = row[j0..].as_mut_ptr();
            for v in 0..V {
                // SAFETY: lanes under the mask are columns of this row.
                unsafe {
                    let x = _mm512_maskz_loadu_ps(masks[v], at.add(16 * v));
                    let e = exp.pow2(_mm512_sub_ps(x, mv[v]));
                    _mm512_mask_storeu_ps(at.add(16 * v), masks[v], e);
                    sv[v] = _mm512_add_ps(sv[v], e);
                }
            }
        }
        for v in 0..V {
            // SAFETY: as the loads.
            unsafe { _mm512_mask_storeu_ps(sum.as_mut_ptr().add(16 * v), masks[v], sv[v]) };
        }
    }
}

/// Scratch of one worker: its queries transposed, a score block with its per-query maxima
/// and sums, the online softmax and the output accumulator `Oᵀ` (values × queries).
#[derive(Default)]
struct Scratch {
    qt: Vec<f32>,
    st: Vec<f32>,
    block_max: Vec<f32>,
    sum: Vec<f32>,
    online: Online,
    acc: Vec<f32>,
}

/// Keys per panel of `Kᵀ`.
const PANEL: usize = 256;

/// Every head's keys transposed, by panels of [`PANEL`] keys: `[B·H, panels, D, PANEL]` with
/// rows [`padded`], the left operand of `K·Qᵀ` by columns, a tile's keys side by side. A
/// tile's broadcasts walk down `D` rows 1088 bytes apart, which the L1 prefetcher follows;
/// with rows of all 4096 keys of SD's 64×64 level they were 16 KiB apart.
fn keys_transposed(kv: &View) -> Vec<f32> {
    let [b, h, skv, d] = kv.shape;
    let ld = padded(PANEL);
    let panels = skv.div_ceil(PANEL);
    let panel_of = |i: usize, panel: &mut [f32]| {
        let (bh, j0) = (i / panels, i % panels * PANEL);
        let keys = PANEL.min(skv - j0);
        let strides = [kv.strides[2], kv.strides[3]];
        // SAFETY: keys j0..j0 + keys of this head, each d values, lie inside the view.
        unsafe {
            transpose(
                kv.at(bh / h, bh % h, j0),
                strides,
                [keys, d],
                None,
                panel,
                ld,
            )
        };
        for row in panel.chunks_exact_mut(ld) {
            row[keys..].fill(0.0);
        }
    };
    // SAFETY: each panel's rows are written whole: keys, then the padding.
    unsafe { Unfilled::par_chunks(b * h * panels * d * ld, d * ld, panel_of) }
}

/// `dst[c·ld + i] = src[i·rs + c·cs]` (times `scale` if given) for rows `i < n` and columns
/// `c < d`: the queries and keys laid out by columns for the products. 16 rows at a time by
/// AVX-512 gathers where the CPU has them; value by value, in the tasks' baseline (SSE2) code,
/// the queries' transpose was most of the task closure's 1.2% of an SD step's samples. With
/// the scratch grown unfilled: kernel bench, ×77 keys 5.7 -> 4.6 ms; self-attention unchanged.
///
/// # Safety
/// Every `src[i·rs + c·cs]` is readable.
unsafe fn transpose(
    src: *const f32,
    [rs, cs]: [isize; 2],
    [n, d]: [usize; 2],
    scale: Option<f32>,
    dst: &mut [f32],
    ld: usize,
) {
    assert!(
        d == 0 || dst.len() >= (d - 1) * ld + n,
        "d rows of n values, ld apart"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && rs >= 0 && rs < (i32::MAX / 16) as isize {
        // SAFETY: the feature was detected just above; 16 rows' offsets fit an i32; the
        // reads are the caller's promise, the writes inside dst by the assert.
        return unsafe { x86::transpose(src, [rs, cs], [n, d], scale, dst, ld) };
    }
    for i in 0..n {
        for c in 0..d {
            // SAFETY: the caller's promise.
            let x = unsafe { *src.offset(i as isize * rs + c as isize * cs) };
            dst[c * ld + i] = scale.map_or(x, |s| s * x);
        }
    }
}

/// Writes `softmax(q kᵀ/√D) v` as `[B, S, H, Dv]` to `out`, which holds that many values.
/// The caller checked [`fits`] and the shapes (`k` `[B, H, Skv, D]`, `v` `[B, H, Skv, Dv]`).
pub(super) fn attention(qv: &View, kv: &View, vv: &View, out: SendPtr) {
    let [b, h, sq, d] = qv.shape;
    let skv = kv.shape[2];
    let dv = vv.shape[3];
    // Scores scaled for the softmax's base-2 exponentials.
    let scale = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let kt = keys_transposed(kv);
    let (kld, panel_len) = (padded(PANEL), d * padded(PANEL));
    let head_len = skv.div_ceil(PANEL) * panel_len;
    let blocks = sq.div_ceil(BLOCK_Q);
    (0..b * h * blocks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            // The whole SendPtr, not its pointer field alone, into the closure.
            let out = &out;
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = blk * BLOCK_Q;
            let n = BLOCK_Q.min(sq - q0);
            let ld = padded(n);
            // SAFETY (all three): the products read n columns of each row of qt, st and acc,
            // which the transpose and the products write first (acc: the first key block's
            // product, not accumulating); the columns past n are never read.
            unsafe {
                resize_unfilled(&mut sc.qt, d * ld);
                resize_unfilled(&mut sc.st, BLOCK_KV.min(skv) * ld);
                resize_unfilled(&mut sc.acc, dv * ld);
            }
            let q_strides = [qv.strides[2], qv.strides[3]];
            // SAFETY: queries q0..q0 + n of this head, each d values, lie inside the view.
            unsafe {
                transpose(
                    qv.at(bi, hi, q0),
                    q_strides,
                    [n, d],
                    Some(scale),
                    &mut sc.qt,
                    ld,
                )
            };
            sc.online.reset(n);
            sc.block_max.resize(n, 0.0);
            sc.sum.resize(n, 0.0);
            let head_kt = &kt[bh * head_len..(bh + 1) * head_len];
            for k0 in (0..skv).step_by(BLOCK_KV) {
                let kb = BLOCK_KV.min(skv - k0);
                sc.block_max.fill(f32::NEG_INFINITY);
                for p0 in (k0..k0 + kb).step_by(PANEL) {
                    let p = Product {
                        mnk: [PANEL.min(k0 + kb - p0), n, d],
                        dst: sc.st[(p0 - k0) * ld..].as_mut_ptr(),
                        dst_rs: ld,
                        accumulate: false,
                        scale: 1.0,
                    };
                    let keys = Lhs::Cols(head_kt[p0 / PANEL * panel_len..].as_ptr(), kld);
                    let (qt, max) = ((sc.qt.as_ptr(), ld), &mut sc.block_max);
                    // SAFETY: the panel is d rows of its keys (kld apart); qt holds d rows and
                    // st kb rows of n values, ld apart, of which rows p0 - k0.. are written.
                    unsafe { narrow::product_max(p, keys, qt, max) };
                }
                softmax_cols(
                    &mut sc.st[..kb * ld],
                    ld,
                    &sc.block_max,
                    &mut sc.sum,
                    &mut sc.online,
                );
                if k0 > 0 {
                    for row in sc.acc.chunks_exact_mut(ld) {
                        row.iter_mut()
                            .zip(&sc.online.corr)
                            .for_each(|(x, &c)| *x *= c);
                    }
                }
                let p = Product {
                    mnk: [dv, n, kb],
                    dst: sc.acc.as_mut_ptr(),
                    dst_rs: ld,
                    accumulate: k0 > 0,
                    scale: 1.0,
                };
                let values = Lhs::Cols(vv.at(bi, hi, k0), vv.strides[2] as usize);
                // SAFETY: values k0.. are kb rows of dv values, contiguous (fits),
                // vv.strides[2] apart; st holds kb rows and acc dv rows of n values, ld apart.
                unsafe { narrow::product(p, values, (sc.st.as_ptr(), ld)) };
            }
            let acc = |i: usize, c: usize| sc.acc[c * ld + i];
            store_rows(out, &sc.online.l, [bi, hi, q0], [sq, h, dv], acc);
        });
}
