//! Scaled dot-product attention, parallel over (batch, head, block of 256 queries).
//!
//! Each task walks the keys in blocks (flash-attention style): a score GEMM, an online softmax
//! (running max and sum, earlier partial outputs rescaled when the max grows), and a GEMM
//! accumulating into the task's `256 × Dv` output. The scores never leave L2, inputs
//! are read through their strides (no copies after `split_heads`) and the output is written
//! as `[B, S, H, Dv]`, which makes the following `merge_heads` free.

use burn::tensor::Shape;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::{SendPtr, gemm_tile, math, new_tensor, simd_dispatch};

/// Queries per task: each task packs every K and V block for its GEMMs, so more rows per
/// task amortise that (kernel bench, 64×64 level: 64 → 256 rows, 329 → 273 ms).
const BLOCK_Q: usize = 256;
/// Keys per block: the 256×1024 f32 score block (1 MiB) stays in the 2 MiB L2 through the
/// softmax and the PV GEMM.
const BLOCK_KV: usize = 1024;

/// A 4-D strided view `[B, H, S, D]` into a tensor's storage.
struct View {
    base: *const f32,
    shape: [usize; 4],
    strides: [isize; 4],
}

impl View {
    fn new(t: &FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let s = layout.shape();
        let st = layout.strides();
        if s.num_dims() != 4 || st.iter().any(|&x| x < 0) {
            return None;
        }
        let storage = t.storage::<f32>();
        Some(Self {
            // SAFETY: start_offset lies within the storage of a valid layout.
            base: unsafe { storage.as_ptr().add(layout.start_offset()) },
            shape: [s[0], s[1], s[2], s[3]],
            strides: [st[0], st[1], st[2], st[3]],
        })
    }

    /// Pointer to element `[b, h, s, 0]`.
    fn at(&self, b: usize, h: usize, s: usize) -> *const f32 {
        let off = b as isize * self.strides[0]
            + h as isize * self.strides[1]
            + s as isize * self.strides[2];
        // SAFETY: indices are in range, so the offset stays inside the storage.
        unsafe { self.base.offset(off) }
    }
}

// Raw pointers into read-only storage that outlives the parallel loop.
unsafe impl Sync for View {}

simd_dispatch! {
    /// One key block of an online softmax: exponentiates each `kb`-long row of `scores` in
    /// place against the running row maximum `m` (updated), adds its sum to `l`, and returns
    /// in `corr` the factor exp(m_old − m_new) that rescales what was accumulated before.
    /// Keys at or past `limit(row)` (causal) are masked to zero.
    #[allow(clippy::too_many_arguments)]
    fn softmax_block(
        scores: &mut [f32],
        kb: usize,
        first_row: usize,
        k0: usize,
        causal: Option<isize>,
        m: &mut [f32],
        l: &mut [f64],
        corr: &mut [f32],
    ) {
        for (i, row) in scores.chunks_exact_mut(kb).enumerate() {
            let valid = match causal {
                Some(off) => ((first_row + i) as isize + off + 1 - k0 as isize).clamp(0, kb as isize) as usize,
                None => kb,
            };
            let (live, masked) = row.split_at_mut(valid);
            masked.fill(0.0);
            if live.is_empty() {
                corr[i] = 1.0;
                continue;
            }
            let m_new = math::max(live).max(m[i]);
            corr[i] = if m[i] == f32::NEG_INFINITY { 0.0 } else { math::exp(m[i] - m_new) };
            l[i] = l[i] * corr[i] as f64 + math::exp_sub_sum(live, m_new);
            m[i] = m_new;
        }
    }
}

/// Scratch of one worker: score block, running max / sum / correction, output accumulator.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f64>,
    corr: Vec<f32>,
    acc: Vec<f32>,
}

/// `softmax(q kᵀ/√D) v` for `[B, H, S, D]` views; `None` for layouts it does not handle
/// (negative strides), which then take the generic path.
pub(crate) fn attention(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    causal: bool,
) -> Option<FlexTensor> {
    let (qv, kv, vv) = (View::new(q)?, View::new(k)?, View::new(v)?);
    let [b, h, sq, d] = qv.shape;
    let skv = kv.shape[2];
    let dv = vv.shape[3];
    if kv.shape != [b, h, skv, d] || vv.shape != [b, h, skv, dv] {
        return None;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let causal = causal.then_some(skv as isize - sq as isize);
    let mut out = vec![0.0f32; b * sq * h * dv];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let blocks = sq.div_ceil(BLOCK_Q);
    (0..b * h * blocks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = blk * BLOCK_Q;
            let rows = BLOCK_Q.min(sq - q0);
            sc.m.clear();
            sc.m.resize(rows, f32::NEG_INFINITY);
            sc.l.clear();
            sc.l.resize(rows, 0.0);
            sc.corr.resize(rows, 0.0);
            sc.acc.resize(rows * dv, 0.0);
            let out_ptr = out_ptr;
            for k0 in (0..skv).step_by(BLOCK_KV) {
                let kb = BLOCK_KV.min(skv - k0);
                sc.scores.resize(rows * kb, 0.0);
                // SAFETY: the views are in bounds for these sizes; scores is rows×kb and acc
                // rows×dv, both row-major.
                unsafe {
                    gemm_tile(
                        [rows, kb, d],
                        sc.scores.as_mut_ptr(),
                        kb,
                        false,
                        (qv.at(bi, hi, q0), qv.strides[3], qv.strides[2]),
                        (kv.at(bi, hi, k0), kv.strides[2], kv.strides[3]),
                        scale,
                    );
                }
                softmax_block(
                    &mut sc.scores,
                    kb,
                    q0,
                    k0,
                    causal,
                    &mut sc.m,
                    &mut sc.l,
                    &mut sc.corr,
                );
                if k0 > 0 {
                    for (row, &c) in sc.acc.chunks_exact_mut(dv).zip(&sc.corr) {
                        row.iter_mut().for_each(|x| *x *= c);
                    }
                }
                // SAFETY: as above.
                unsafe {
                    gemm_tile(
                        [rows, dv, kb],
                        sc.acc.as_mut_ptr(),
                        dv,
                        k0 > 0,
                        (sc.scores.as_ptr(), 1, kb as isize),
                        (vv.at(bi, hi, k0), vv.strides[3], vv.strides[2]),
                        1.0,
                    );
                }
            }
            for (i, (row, &l)) in sc.acc.chunks_exact(dv).zip(&sc.l).enumerate() {
                let inv = if l > 0.0 { (1.0 / l) as f32 } else { 0.0 };
                // SAFETY: this task alone writes output rows q0..q0+rows of head hi in batch bi.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.0.add(((bi * sq + q0 + i) * h + hi) * dv),
                        dv,
                    )
                };
                for (o, &x) in dst.iter_mut().zip(row) {
                    *o = x * inv;
                }
            }
        });
    // Physically [B, S, H, Dv]; presented as [B, H, S, Dv].
    let layout = Layout::new(
        Shape::from(vec![b, h, sq, dv]),
        vec![(sq * h * dv) as isize, dv as isize, (h * dv) as isize, 1],
        0,
    );
    Some(FlexTensor::new(
        burn::tensor::Bytes::from_elems(out),
        layout,
        burn::tensor::DType::F32,
    ))
}

/// Rows of one (batch, head) in [`attention_one`]: row `j` at `base + j · stride`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    base: *const f32,
    stride: isize,
}

impl Strided {
    /// Row `j`, `len` values.
    ///
    /// # Safety
    /// Row `j` must hold `len` contiguous values.
    #[inline(always)]
    unsafe fn row(&self, j: usize, len: usize) -> &[f32] {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts(self.base.offset(j as isize * self.stride), len) }
    }
}

/// A dot product kernel: `Σ a[i]·b[i]` over 16 lanes (one multiply then one add per
/// element), the lanes summed as a halving tree, then the tail in order; every variant gives
/// the same bits. Explicit: written as lane arrays the compiler made 2-wide code of it.
type Dot = fn(&[f32], &[f32]) -> f32;

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let body = a.len() - a.len() % LANES;
    let mut acc = [0.0f32; LANES];
    for (ac, bc) in a[..body]
        .chunks_exact(LANES)
        .zip(b[..body].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += ac[l] * bc[l];
        }
    }
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    let mut sum = acc[0];
    for i in body..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// The fastest [`Dot`] this CPU runs.
fn dot_kernel() -> Dot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected just above.
            return |a, b| unsafe { x86::dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the feature was detected just above.
            return |a, b| unsafe { x86::dot_avx(a, b) };
        }
    }
    dot_portable
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::reduce8;

    /// The tail of [`super::dot_portable`] after the lane sum.
    #[inline(always)]
    fn tail(mut sum: f32, a: &[f32], b: &[f32], body: usize) -> f32 {
        for i in body..a.len() {
            sum += a[i] * b[i];
        }
        sum
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let body = a.len() - a.len() % 16;
        let mut acc = _mm512_setzero_ps();
        for c in (0..body).step_by(16) {
            // SAFETY: c + 16 <= body <= len of both.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_ps(a.as_ptr().add(c)),
                    _mm512_loadu_ps(b.as_ptr().add(c)),
                )
            };
            acc = _mm512_add_ps(acc, _mm512_mul_ps(x, y));
        }
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        let sum = reduce8(_mm256_add_ps(_mm512_castps512_ps256(acc), hi));
        tail(sum, a, b, body)
    }

    #[target_feature(enable = "avx")]
    pub(super) unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
        let body = a.len() - a.len() % 16;
        // lanes 0..8 and 8..16
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in (0..body).step_by(16) {
            // SAFETY: c + 16 <= body <= len of both.
            unsafe {
                let (a, b) = (a.as_ptr().add(c), b.as_ptr().add(c));
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b)));
                hi = _mm256_add_ps(
                    hi,
                    _mm256_mul_ps(_mm256_loadu_ps(a.add(8)), _mm256_loadu_ps(b.add(8))),
                );
            }
        }
        tail(reduce8(_mm256_add_ps(lo, hi)), a, b, body)
    }
}

simd_dispatch! {
    /// One (batch, head) of [`attention_one`]: `scores` (one per key; `hidden(j)` true where
    /// key `j` is masked) is scratch, `out` (Dv long) the result.
    fn one_query(
        q: &[f32],
        keys: Strided,
        values: Strided,
        hidden: Option<(&[u8], isize)>,
        dot: Dot,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let d = q.len();
        for (j, s) in scores.iter_mut().enumerate() {
            if hidden.is_some_and(|(m, st)| m[(j as isize * st) as usize] != 0) {
                *s = f32::NEG_INFINITY;
                continue;
            }
            // SAFETY: key rows are contiguous and `d` long (checked by the caller).
            let kr = unsafe { keys.row(j, d) };
            let dot = dot(q, kr);
            *s = dot * scale;
        }
        let m = math::max(scores);
        if m == f32::NEG_INFINITY {
            out.fill(0.0);
            return; // every key hidden: zeros, as the blocked kernel gives an empty row
        }
        let l = math::exp_sub_sum(scores, m);
        let inv = (1.0 / l) as f32;
        // Σ p_j v_j in 64-column chunks held in registers across the keys (through `out` in
        // memory, every key waited on the previous key's store).
        const C: usize = 64;
        let dv = out.len();
        for c0 in (0..dv).step_by(C) {
            let w = C.min(dv - c0);
            let mut acc = [0.0f32; C];
            for (j, &p) in scores.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                // SAFETY: value rows are contiguous and `dv` long.
                let vr = unsafe { values.row(j, dv) };
                match <&[f32; C]>::try_from(&vr[c0..c0 + w]) {
                    Ok(vc) => (0..C).for_each(|i| acc[i] += p * vc[i]),
                    Err(_) => (0..w).for_each(|i| acc[i] += p * vr[c0 + i]),
                }
            }
            for (o, a) in out[c0..c0 + w].iter_mut().zip(&acc) {
                *o = a * inv;
            }
        }
    }
}

/// `softmax(q kᵀ/√D [masked]) v` for a single query per (batch, head) — a decode step — with
/// `mask` (u8 storage, nonzero = hidden, any strides) shaped `[B, H, 1, Skv]`. The blocked
/// kernel packs GEMM panels for one row, and Flex's masked attention runs on one thread; this
/// is a dot product per key. `None` where rows are not contiguous (the caller falls back).
pub(crate) fn attention_one(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let (qv, kv, vv) = (View::new(q)?, View::new(k)?, View::new(v)?);
    let [b, h, sq, d] = qv.shape;
    let skv = kv.shape[2];
    let dv = vv.shape[3];
    let unit = |v: &View| v.strides[3] == 1;
    if sq != 1 || kv.shape != [b, h, skv, d] || vv.shape != [b, h, skv, dv] {
        return None;
    }
    if !(unit(&qv) && unit(&kv) && unit(&vv)) {
        return None;
    }
    let mask = match mask {
        Some(m) => {
            let l = m.layout();
            let s = l.shape();
            let st = l.strides();
            if (0..4).map(|i| s[i]).ne([b, h, 1, skv]) || st.iter().any(|&x| x < 0) {
                return None;
            }
            Some((&m.bytes()[l.start_offset()..], [st[0], st[1], st[3]]))
        }
        None => None,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let dot = dot_kernel();
    let mut out = vec![0.0f32; b * h * dv];
    out.par_chunks_mut(dv)
        .enumerate()
        .for_each_init(Vec::new, |scores, (bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            scores.resize(skv, 0.0);
            // SAFETY: the query row is contiguous and `d` long.
            let qr = unsafe { std::slice::from_raw_parts(qv.at(bi, hi, 0), d) };
            let hidden = mask.map(|(m, st)| {
                let at = bi as isize * st[0] + hi as isize * st[1];
                (&m[at as usize..], st[2])
            });
            let keys = Strided {
                base: kv.at(bi, hi, 0),
                stride: kv.strides[2],
            };
            let values = Strided {
                base: vv.at(bi, hi, 0),
                stride: vv.strides[2],
            };
            one_query(qr, keys, values, hidden, dot, scale, scores, o);
        });
    // [B, 1, H, Dv] = [B, H, 1, Dv] in memory for one query.
    Some(new_tensor(out, vec![b, h, 1, dv]))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tensor};

    use crate::nn::sdpa;

    /// Against Burn's attention on shapes that cross both block sizes (several query blocks,
    /// the last partial; key blocks past the first, so the online-softmax rescaling runs),
    /// causal and not, with strided (`split_heads`-like) inputs.
    #[test]
    fn matches_burn_attention_across_blocks() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 2.0);
        for (sq, skv, causal) in [(300, 2100, false), (530, 2100, true), (5, 7, false)] {
            let [q, k, v] = [sq, skv, skv]
                .map(|s| Tensor::<Flex, 4>::random([2, s, 3, 8], n, &d).swap_dims(1, 2));
            let got = sdpa(q.clone(), k.clone(), v.clone(), causal);
            let opts = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: causal,
            };
            let want = burn::tensor::module::attention(q, k, v, None, None, opts);
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "[{sq}x{skv}] causal {causal}: max |diff| {err}");
        }
    }

    /// Every dot-product variant gives the portable bits, with and without a tail.
    #[test]
    fn dot_variants_give_the_same_bits() {
        for n in [16, 64, 70, 5] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 104_729 % 997) as f32) * 1e-2)
                .collect();
            let want = super::dot_portable(&a, &b);
            assert_eq!(
                super::dot_kernel()(&a, &b).to_bits(),
                want.to_bits(),
                "n {n}"
            );
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the feature was detected just above.
                let avx = unsafe { super::x86::dot_avx(&a, &b) };
                assert_eq!(avx.to_bits(), want.to_bits(), "n {n}, AVX");
            }
        }
    }

    /// The one-query kernel against Burn's attention: a decode cache's slot prefix (strided)
    /// with and without a broadcast padding mask (the second batch row keeps every 7th key).
    #[test]
    fn one_query_matches_burn_attention() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 2.0);
        let (b, h, p, dh, seen) = (2, 3, 40, 20, 33);
        let q = Tensor::<Flex, 4>::random([b, 1, h, dh], n, &d).swap_dims(1, 2);
        let [k, v] = [0; 2].map(|_| {
            Tensor::<Flex, 4>::random([b, h, p, dh], n, &d).slice([0..b, 0..h, 0..seen, 0..dh])
        });
        let keep: Vec<bool> = (0..b * seen).map(|i| i % 7 == 3 || i < seen).collect();
        let hidden = Tensor::<Flex, 1, burn::tensor::Bool>::from_data(
            burn::tensor::TensorData::new(keep, [b * seen]),
            &d,
        )
        .bool_not()
        .reshape([b, 1, 1, seen])
        .expand([b, h, 1, seen]);
        for mask in [None, Some(hidden)] {
            let got = crate::nn::sdpa_masked(q.clone(), k.clone(), v.clone(), mask.clone(), false);
            let opts = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: false,
            };
            let want = burn::tensor::module::attention(
                q.clone(),
                k.clone(),
                v.clone(),
                mask.clone(),
                None,
                opts,
            );
            let err: f32 = (got - want).abs().max().into_scalar();
            assert!(err < 1e-5, "mask {}: max |diff| {err}", mask.is_some());
        }
    }
}
