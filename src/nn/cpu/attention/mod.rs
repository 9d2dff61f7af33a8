//! Scaled dot-product attention, parallel over (batch, head, block of 256 queries).
//!
//! Each task walks the keys in blocks (flash-attention style): a score GEMM, an online softmax
//! (running max and sum, earlier partial outputs rescaled when the max grows), and a GEMM
//! accumulating into the task's `256 × Dv` output. The scores never leave L2, inputs
//! are read through their strides (no copies after `split_heads`) and the output is written
//! as `[B, S, H, Dv]`, which makes the following `merge_heads` free.
//!
//! bf16 products go to AMX where there is one ([`super::attention_amx`]); f32 heads whose
//! values do not fill whole vectors, or of 80 values, to [`super::attention_kq`], which holds
//! its scores keys × queries (`attention_kq::fits`).

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
    /// of `scores` (unscaled) in place against the running row maximum `o.m` (updated), adds
    /// its sum to `o.l`, and returns in `o.corr` the factor exp(scale·(m_old − m_new)) that
    /// rescales what was accumulated before. Keys at or past `limit(row)` (causal) are masked
    /// to zero.
    fn softmax_block(
        scores: &mut [f32],
        scale: f32,
        kb: usize,
        first_row: usize,
        k0: usize,
        causal: Option<isize>,
        o: &mut Online,
    ) {
        let Online { m, l, corr } = o;
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
                softmax_block(&mut sc.scores, scale, kb, q0, k0, causal, &mut sc.online);
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
mod tests;
