//! Attention for one query per (batch, head), a decode step's: a dot product per cached key,
//! masked or not, parallel over batch × head. The blocked kernel in `attention.rs` would pack
//! GEMM panels for a single query row, and Flex's masked attention runs on one thread.

use burn_flex::FlexTensor;

use super::attention::View;
use super::{SendPtr, math, new_tensor, simd_dispatch};

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
    tail(math::tree_sum(acc), a, b, body)
}

/// `sum` plus the products of elements `body..` of `a` and `b`, in order.
#[inline(always)]
fn tail(mut sum: f32, a: &[f32], b: &[f32], body: usize) -> f32 {
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
    use super::tail;

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

/// How far ahead of the row being read [`one_query`] prefetches its key and value streams. In
/// a decode step the cache comes from memory (the step's 390 MB of weights evicted it), and
/// the hardware prefetcher alone kept too few lines in flight, as in the GEMV: with this the
/// step was 0.3–8 ms faster in four A/B pairs.
const AHEAD: usize = 4096;

/// Prefetches the lines of `row`'s extent `offset` bytes past it (a hint: any address is
/// allowed).
#[inline(always)]
fn prefetch_row(row: &[f32], offset: usize) {
    let p = row.as_ptr().cast::<u8>().wrapping_add(offset);
    for line in (0..std::mem::size_of_val(row)).step_by(64) {
        super::prefetch(p.wrapping_add(line));
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
        let (d, dv) = (q.len(), out.len());
        for (j, s) in scores.iter_mut().enumerate() {
            if hidden.is_some_and(|(m, st)| m[(j as isize * st) as usize] != 0) {
                *s = f32::NEG_INFINITY;
                continue;
            }
            // SAFETY: key rows are contiguous and `d` long (checked by the caller).
            let kr = unsafe { keys.row(j, d) };
            prefetch_row(kr, AHEAD);
            if j * dv * 4 < AHEAD {
                // The first AHEAD bytes of the values, for the Σ p·v loop's start.
                // SAFETY: value rows are contiguous and `dv` long.
                prefetch_row(unsafe { values.row(j, dv) }, 0);
            }
            let dot = dot(q, kr);
            *s = dot * scale;
        }
        let m = math::max(scores);
        if m == f32::NEG_INFINITY {
            out.fill(0.0);
            return; // every key hidden: zeros, as the blocked kernel gives an empty row
        }
        let l = math::exp_sub_sum(scores, m, 1.0);
        let inv = (1.0 / l) as f32;
        // Σ p_j v_j in 64-column chunks held in registers across the keys (through `out` in
        // memory, every key waited on the previous key's store).
        const C: usize = 64;
        for c0 in (0..dv).step_by(C) {
            let w = C.min(dv - c0);
            let mut acc = [0.0f32; C];
            for (j, &p) in scores.iter().enumerate() {
                if p == 0.0 {
                    continue;
                }
                // SAFETY: value rows are contiguous and `dv` long.
                let vr = unsafe { values.row(j, dv) };
                if c0 == 0 {
                    prefetch_row(vr, AHEAD);
                }
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
    let out_ptr = SendPtr(out.as_mut_ptr());
    super::team::for_each(b * h, |bh| {
        let (bi, hi) = (bh / h, bh % h);
        let base = &out_ptr;
        // SAFETY: row `bh` of the output is this task's alone.
        let o = unsafe { std::slice::from_raw_parts_mut(base.0.add(bh * dv), dv) };
        let scores = &mut vec![0.0f32; skv];
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
