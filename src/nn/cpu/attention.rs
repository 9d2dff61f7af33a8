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

use super::{Mat, Product, SendPtr, Unfilled, bf16, gemm, math, simd_dispatch};

/// Queries per task: each task packs every K and V block for its GEMMs, so more rows per
/// task amortise that (kernel bench, 64×64 level: 64 → 256 rows, 329 → 273 ms).
pub(super) const BLOCK_Q: usize = 256;
/// Keys per block: the 256×1024 f32 score block (1 MiB) stays in the 2 MiB L2 through the
/// softmax and the PV GEMM.
pub(super) const BLOCK_KV: usize = 1024;

/// A 4-D strided view `[B, H, S, D]` into a tensor's storage.
pub(super) struct View {
    base: *const f32,
    pub(super) shape: [usize; 4],
    pub(super) strides: [isize; 4],
}

impl View {
    pub(super) fn new(t: &FlexTensor) -> Option<Self> {
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
    pub(super) fn at(&self, b: usize, h: usize, s: usize) -> *const f32 {
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
    /// One key block of an online softmax of `scale`·scores: exponentiates each `kb`-long row
    /// of `scores` (unscaled) in place against the running row maximum `m` (updated), adds its
    /// sum to `l`, and returns in `corr` the factor exp(scale·(m_old − m_new)) that rescales
    /// what was accumulated before. Keys at or past `limit(row)` (causal) are masked to zero.
    #[allow(clippy::too_many_arguments)]
    fn softmax_block(
        scores: &mut [f32],
        scale: f32,
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
            corr[i] = if m[i] == f32::NEG_INFINITY { 0.0 } else { math::exp(scale * (m[i] - m_new)) };
            l[i] = l[i] * corr[i] as f64 + math::exp_sub_sum(live, m_new, scale);
            m[i] = m_new;
        }
    }
}

/// A task's online softmax, one value per query, for each of the attention paths.
#[derive(Default)]
pub(crate) struct Online {
    /// The running maxima.
    pub(super) m: Vec<f32>,
    /// The running sums of exponentials.
    pub(super) l: Vec<f64>,
    /// What rescales the sums and outputs of earlier key blocks: exp(m_old − m_new).
    pub(super) corr: Vec<f32>,
}

impl Online {
    /// For a task of `n` queries, before its first key block.
    pub(super) fn reset(&mut self, n: usize) {
        self.m.clear();
        self.m.resize(n, f32::NEG_INFINITY);
        self.l.clear();
        self.l.resize(n, 0.0);
        self.corr.resize(n, 0.0);
    }
}

/// Scratch of one worker: score block, online softmax, output accumulator.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    online: Online,
    acc: Vec<f32>,
}

/// One of the two products of a key block: in bf16 with f32 sums for a layer whose weights
/// are bf16 (`--precision bf16`: 1.4x the f32 rate at the 64×64 level), in f32 otherwise.
///
/// # Safety
/// As [`gemm`].
unsafe fn product(
    in_bf16: bool,
    p: Product,
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
) {
    let (a, b) = (Mat::F32(a.0, a.1, a.2), Mat::F32(b.0, b.1, b.2));
    // SAFETY (both): forwarded to the caller.
    unsafe {
        if in_bf16 {
            bf16::gemm_tile(p, a, b);
        } else {
            gemm(p, a, b);
        }
    }
}

/// `softmax(q kᵀ/√D) v` for `[B, H, S, D]` views, the products in bf16 if `in_bf16`; `None`
/// for layouts it does not handle (negative strides), which then take the generic path.
pub(crate) fn attention(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    causal: bool,
    in_bf16: bool,
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
    let mut out = Unfilled::new(b * sq * h * dv);
    let out_ptr = out.ptr();
    #[cfg(target_arch = "x86_64")]
    if in_bf16
        && super::attention_amx::available()
        && super::attention_amx::attention(&qv, &kv, &vv, causal, out.ptr()).is_some()
    {
        // SAFETY: it wrote every value.
        return Some(heads_out(unsafe { out.filled() }, [b, h, sq, dv]));
    }
    if !in_bf16 && causal.is_none() && super::attention_kq::fits(&vv) {
        super::attention_kq::attention(&qv, &kv, &vv, out.ptr());
        // SAFETY: it wrote every value.
        return Some(heads_out(unsafe { out.filled() }, [b, h, sq, dv]));
    }
    let blocks = sq.div_ceil(BLOCK_Q);
    (0..b * h * blocks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = blk * BLOCK_Q;
            let rows = BLOCK_Q.min(sq - q0);
            sc.online.reset(rows);
            sc.acc.resize(rows * dv, 0.0);
            let out_ptr = out_ptr;
            for k0 in (0..skv).step_by(BLOCK_KV) {
                let kb = BLOCK_KV.min(skv - k0);
                sc.scores.resize(rows * kb, 0.0);
                // SAFETY: the views are in bounds for these sizes; scores is rows×kb and acc
                // rows×dv, both row-major.
                unsafe {
                    let p = Product {
                        mnk: [rows, kb, d],
                        dst: sc.scores.as_mut_ptr(),
                        dst_rs: kb,
                        accumulate: false,
                        // Scaled in the softmax's exponent, where it costs nothing: an unscaled
                        // GEMM writes whole AMX windows straight from the tiles ([2,8,4096,40]
                        // with bf16 products, with that AMX change: 128 -> 120 ms, medians of
                        // 4 alternated pairs; f32 unchanged).
                        scale: 1.0,
                    };
                    let q = (qv.at(bi, hi, q0), qv.strides[3], qv.strides[2]);
                    product(
                        in_bf16,
                        p,
                        q,
                        (kv.at(bi, hi, k0), kv.strides[2], kv.strides[3]),
                    );
                }
                softmax_block(
                    &mut sc.scores,
                    scale,
                    kb,
                    q0,
                    k0,
                    causal,
                    &mut sc.online.m,
                    &mut sc.online.l,
                    &mut sc.online.corr,
                );
                if k0 > 0 {
                    for (row, &c) in sc.acc.chunks_exact_mut(dv).zip(&sc.online.corr) {
                        row.iter_mut().for_each(|x| *x *= c);
                    }
                }
                // SAFETY: as above.
                unsafe {
                    let p = Product {
                        mnk: [rows, dv, kb],
                        dst: sc.acc.as_mut_ptr(),
                        dst_rs: dv,
                        accumulate: k0 > 0,
                        scale: 1.0,
                    };
                    let v = (vv.at(bi, hi, k0), vv.strides[3], vv.strides[2]);
                    product(in_bf16, p, (sc.scores.as_ptr(), 1, kb as isize), v);
                }
            }
            store_rows(&out_ptr, &sc.online.l, [bi, hi, q0], [sq, h, dv], |i, c| {
                sc.acc[i * dv + c]
            });
        });
    // SAFETY: the tasks cover every (batch, head, query block), each writing all Dv values of
    // its rows.
    Some(heads_out(unsafe { out.filled() }, [b, h, sq, dv]))
}

/// A task's output rows: query `q0 + i` of head `hi` in batch `bi` (of `[B, S, H, Dv]`, `sq`
/// queries, `h` heads) is `acc(i, c)` for its `dv` values `c` over its softmax sum `l[i]`
/// (zero for a row without keys).
pub(super) fn store_rows(
    out: &SendPtr,
    l: &[f64],
    [bi, hi, q0]: [usize; 3],
    [sq, h, dv]: [usize; 3],
    acc: impl Fn(usize, usize) -> f32,
) {
    for (i, &l) in l.iter().enumerate() {
        let inv = if l > 0.0 { (1.0 / l) as f32 } else { 0.0 };
        // SAFETY: the calling task alone writes output rows q0.. of head hi in batch bi.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(out.0.add(((bi * sq + q0 + i) * h + hi) * dv), dv)
        };
        for (c, o) in dst.iter_mut().enumerate() {
            *o = acc(i, c) * inv;
        }
    }
}

/// The output, physically `[B, S, H, Dv]`, presented as `[B, H, S, Dv]`.
fn heads_out(data: Vec<f32>, [b, h, sq, dv]: [usize; 4]) -> FlexTensor {
    let layout = Layout::new(
        Shape::from(vec![b, h, sq, dv]),
        vec![(sq * h * dv) as isize, dv as isize, (h * dv) as isize, 1],
        0,
    );
    FlexTensor::new(
        burn::tensor::Bytes::from_elems(data),
        layout,
        burn::tensor::DType::F32,
    )
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use crate::nn::sdpa;

    /// bf16 products (`--precision bf16`) against f64 attention of the bf16-rounded q, k and
    /// v: within 4e-3 of the output's scale (measured 1.5e-3 with AMX, 2.0e-3 with
    /// AVX512-BF16's kernel: each key block's probabilities are rounded to bf16 against its
    /// running maximum). Several key blocks (online rescaling), last blocks of 52 and 77 keys
    /// (k-pair padding), head size 40 (Qkᵀ's padding), partial query blocks, causal masks.
    #[test]
    fn bf16_products_match_f64_of_rounded_operands() {
        use burn::tensor::DType;
        use half::bf16;

        use crate::nn::sdpa_for;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let r = |v: f64| bf16::from_f64(v).to_f64();
        let rounded = |x: &[f32]| x.iter().map(|&v| r(f64::from(v))).collect::<Vec<_>>();
        for (sq, skv, causal) in [(300, 2100, false), (530, 2100, true), (5, 77, false)] {
            let [q, k, v] = [sq, skv, skv]
                .map(|s| Tensor::<Flex, 4>::random([2, s, 3, 40], n, &d).swap_dims(1, 2));
            let vals = |t: &Tensor<Flex, 4>| t.to_data().to_vec::<f32>().expect("f32");
            let (qs, ks, vs) = (vals(&q), vals(&k), vals(&v));
            let got = vals(&sdpa_for(q, k, v, causal, DType::BF16));
            let (qs, ks, vs) = (rounded(&qs), rounded(&ks), rounded(&vs));
            let want = f64_attention([&qs, &ks, &vs], [6, sq, skv, 40], causal, r);
            let (err, scale) = max_diff(&got, &want);
            assert!(
                err <= 4e-3 * scale,
                "[{sq}x{skv}] causal {causal}: max |diff| {err} of {scale}"
            );
        }
    }

    /// `softmax(q kᵀ/√D) v` in f64 for `[BH, S, D]` values, the exponentials rounded by
    /// `round_w` before they weigh the values (as the bf16 products do).
    fn f64_attention(
        [qs, ks, vs]: [&[f64]; 3],
        [bh, sq, skv, d]: [usize; 4],
        causal: bool,
        round_w: impl Fn(f64) -> f64,
    ) -> Vec<f64> {
        let mut out = vec![0.0; bh * sq * d];
        for b in 0..bh {
            for i in 0..sq {
                let at = |x: &[f64], s: usize, j: usize, c: usize| x[(b * s + j) * d + c];
                let keys = if causal {
                    (skv - sq + i + 1).min(skv)
                } else {
                    skv
                };
                let sc: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..d)
                            .map(|c| at(qs, sq, i, c) * at(ks, skv, j, c))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                let total: f64 = w.iter().sum();
                for c in 0..d {
                    out[(b * sq + i) * d + c] = (0..keys)
                        .map(|j| round_w(w[j]) * at(vs, skv, j, c))
                        .sum::<f64>()
                        / total;
                }
            }
        }
        out
    }

    /// Max |got − want| and max |want|.
    fn max_diff(got: &[f32], want: &[f64]) -> (f64, f64) {
        got.iter()
            .zip(want)
            .fold((0.0f64, 0.0f64), |(e, s), (&g, &w)| {
                (e.max((f64::from(g) - w).abs()), s.max(w.abs()))
            })
    }

    /// f32 against f64 across both block sizes (several query blocks, the last partial; key
    /// blocks past the first, so the online rescaling runs), causal and not, on SD's head sizes
    /// (40 values take [`super::super::attention_kq`] where it runs, 80 the blocked path) and
    /// cross-attention's 77 keys, with strided (`split_heads`-like) inputs; the scores' spread
    /// doubled in two cases. Within 6e-6 of the output's scale: measured 3.0e-6 with keys ×
    /// queries, Burn's attention 1.5e-6 on the same inputs.
    #[test]
    fn f32_matches_f64() {
        let d = Default::default();
        for (sq, skv, hd, causal, sd) in [
            (300, 2100, 40, false, 1.0),
            (300, 2100, 80, false, 1.0),
            (530, 1100, 80, true, 1.0),
            (530, 2100, 40, true, 1.0),
            (260, 77, 40, false, 1.0),
            (5, 7, 8, false, 1.0),
            (300, 2100, 8, false, 2.0),
            (300, 2100, 40, false, 2.0),
        ] {
            let n = Distribution::Normal(0.0, sd);
            let [q, k, v] = [sq, skv, skv]
                .map(|s| Tensor::<Flex, 4>::random([2, s, 3, hd], n, &d).swap_dims(1, 2));
            let vals = |t: &Tensor<Flex, 4>| t.to_data().to_vec::<f32>().expect("f32");
            let wide = |x: Vec<f32>| x.into_iter().map(f64::from).collect::<Vec<_>>();
            let (qs, ks, vs) = (wide(vals(&q)), wide(vals(&k)), wide(vals(&v)));
            let want = f64_attention([&qs, &ks, &vs], [6, sq, skv, hd], causal, |w| w);
            let (err, scale) = max_diff(&vals(&sdpa(q, k, v, causal)), &want);
            assert!(
                err <= 6e-6 * scale,
                "[{sq}x{skv}x{hd}] causal {causal}: max |diff| {err} of {scale}"
            );
        }
    }
}
