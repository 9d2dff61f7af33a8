//! Scaled dot-product attention, parallel over (batch, head, block of 64 queries).
//!
//! Each task computes its `64 × S_kv` score block with one GEMM, a softmax over full rows
//! (same arithmetic as the unfused softmax, so results match diffusers to rounding), and one
//! GEMM into the output. The scores never exist for more than one block per thread, inputs
//! are read through their strides (no copies after `split_heads`) and the output is written
//! as `[B, S, H, Dv]`, which makes the following `merge_heads` free.

use burn::tensor::Shape;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::{SendPtr, math, simd_dispatch};

const BLOCK_Q: usize = 64;

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
    /// Softmax of each `skv`-long row of `scores` in place (keys past `limit(row)` masked),
    /// returning 1/Σ per row in `inv`.
    fn softmax_rows(scores: &mut [f32], skv: usize, first_row: usize, causal: Option<isize>, inv: &mut [f32]) {
        for (i, row) in scores.chunks_exact_mut(skv).enumerate() {
            let valid = match causal {
                Some(off) => ((first_row + i) as isize + off + 1).clamp(0, skv as isize) as usize,
                None => skv,
            };
            let (live, masked) = row.split_at_mut(valid);
            masked.fill(0.0);
            let m = math::max(live);
            for v in live.iter_mut() {
                *v = math::exp(*v - m);
            }
            let sum = math::sum_map(live, |v| v);
            inv[i] = if sum > 0.0 { (1.0 / sum) as f32 } else { 0.0 };
        }
    }
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
    (0..b * h * blocks).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(scores, inv), task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = blk * BLOCK_Q;
            let rows = BLOCK_Q.min(sq - q0);
            scores.resize(rows * skv, 0.0);
            inv.resize(rows, 0.0);
            let out_ptr = out_ptr;
            // SAFETY: all views are in bounds for these sizes; this task alone writes output
            // rows q0..q0+rows of head hi in batch bi.
            unsafe {
                gemm::gemm(
                    rows,
                    skv,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    skv as isize,
                    false,
                    qv.at(bi, hi, q0),
                    qv.strides[3],
                    qv.strides[2],
                    kv.at(bi, hi, 0),
                    kv.strides[2],
                    kv.strides[3],
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                softmax_rows(scores, skv, q0, causal, inv);
                let dst = out_ptr.0.add(((bi * sq + q0) * h + hi) * dv);
                let dst_rs = (h * dv) as isize;
                gemm::gemm(
                    rows,
                    dv,
                    skv,
                    dst,
                    1,
                    dst_rs,
                    false,
                    scores.as_ptr(),
                    1,
                    skv as isize,
                    vv.at(bi, hi, 0),
                    vv.strides[3],
                    vv.strides[2],
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (i, &s) in inv.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(dst.offset(i as isize * dst_rs), dv);
                    row.iter_mut().for_each(|x| *x *= s);
                }
            }
        },
    );
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
