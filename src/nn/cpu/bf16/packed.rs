//! [`PackedA`]: a left operand packed once as the bf16 GEMM's A strips, for many GEMMs.

use rayon::prelude::*;

use super::{KC, MR, block_at, kc_pairs, pack_a, pack_row};
use crate::nn::cpu::Mat;

/// A left operand `m×k` packed once for many GEMMs (a convolution's weight, which every task
/// multiplies): per k block of [`KC`], the A strips the micro-kernel reads. Packing it per
/// GEMM instead cost a third of the 8×8-level convolutions (320×1280 weights against 80
/// columns).
pub(crate) struct PackedA {
    data: Vec<u32>,
    m: usize,
    k: usize,
}

impl PackedA {
    pub(crate) fn new(lhs: Mat, m: usize, k: usize) -> Self {
        // Not cleared first: the packing writes every value but the last strip's rows past
        // `m`, zeroed by `finish`. Cleared, these buffers (a convolution's weight, packed per
        // call) were a memset of 4% of a bf16 SD UNet step's samples.
        let mut data = Vec::<u32>::with_capacity(packed_len(m, k));
        for (k0, kc) in k_blocks(k) {
            // SAFETY: the caller's lhs is m×k; the block (strips·MR rows of kc_pairs(kc)
            // pairs at block_at) is inside the capacity.
            unsafe { pack_a(lhs, k0, kc, m, data.as_mut_ptr().add(block_at(m, k0))) };
        }
        // SAFETY: every block's rows below m were just written.
        unsafe { finish(&mut data, m, k) };
        Self { data, m, k }
    }

    /// `count` operands of `m×k`, packed as their rows are made: `row(state, i, rows)` writes
    /// row `i` of each into `rows[t]` (f32, `k` long; `state` per worker, from `init`), in
    /// parallel over the rows. For operands made in f32 only to be read packed (Winograd's
    /// transformed weights): made whole first, a 640-channel convolution's were 26 MB of f32
    /// written and read back from memory on every call.
    pub(crate) fn build_rows<S>(
        count: usize,
        m: usize,
        k: usize,
        init: impl Fn() -> S + Sync + Send,
        row: impl Fn(&mut S, usize, &mut [&mut [f32]]) + Sync,
    ) -> Vec<Self> {
        struct Out(*mut u32);
        // SAFETY: each task writes its own row of every buffer.
        unsafe impl Sync for Out {}
        let mut data: Vec<Vec<u32>> = (0..count)
            .map(|_| Vec::with_capacity(packed_len(m, k)))
            .collect();
        let outs: Vec<Out> = data.iter_mut().map(|d| Out(d.as_mut_ptr())).collect();
        (0..m).into_par_iter().for_each_init(
            || (init(), vec![0.0f32; count * k]),
            |(state, rows), i| {
                let mut parts: Vec<&mut [f32]> = rows.chunks_exact_mut(k).collect();
                row(state, i, &mut parts);
                for (r, out) in rows.chunks_exact(k).zip(&outs) {
                    for (k0, kc) in k_blocks(k) {
                        // SAFETY: row i of block k0 (kc_pairs(kc) pairs) is inside the
                        // capacity; r has k values.
                        unsafe {
                            let slot = out.0.add(block_at(m, k0) + i * kc_pairs(kc));
                            pack_row(Mat::F32(r.as_ptr(), 1, k as isize), 0, k0, kc, slot);
                        }
                    }
                }
            },
        );
        for d in &mut data {
            // SAFETY: the tasks wrote every block's rows below m.
            unsafe { finish(d, m, k) };
        }
        data.into_iter().map(|data| Self { data, m, k }).collect()
    }

    /// The operand for [`gemm_tile`]; borrows `self`.
    pub(crate) fn mat(&self) -> Mat {
        Mat::Packed(self.data.as_ptr(), self.m, self.k)
    }
}

/// The k blocks `(k0, kc)` of a packed operand `k` deep.
fn k_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).step_by(KC).map(move |k0| (k0, KC.min(k - k0)))
}

/// u32 values a packed `m×k` operand holds: every block's strips, padded rows included.
fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k_blocks(k).map(|(_, kc)| kc_pairs(kc)).sum::<usize>()
}

/// Completes a packed `m×k` operand built in `data`'s capacity: zeroes each block's rows past
/// `m` in its last strip (computed, never stored, but read) and sets the length.
///
/// # Safety
/// `data` has capacity [`packed_len`]`(m, k)` and every block's rows below `m` are written.
unsafe fn finish(data: &mut Vec<u32>, m: usize, k: usize) {
    let rows = m.div_ceil(MR) * MR;
    for (k0, kc) in k_blocks(k) {
        let kc2 = kc_pairs(kc);
        // SAFETY: rows m..rows of block k0 are inside the capacity.
        unsafe {
            let tail = data.as_mut_ptr().add(block_at(m, k0) + m * kc2);
            tail.write_bytes(0, (rows - m) * kc2);
        }
    }
    // SAFETY: every value below the length is now written, as the caller promises.
    unsafe { data.set_len(packed_len(m, k)) };
}
