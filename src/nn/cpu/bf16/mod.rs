//! GEMM with bf16 operands and f32 sums: the CPU's `--precision bf16` (see
//! `crate::precision`). A layer computes in bf16 when its weight is held in bf16 (the loader
//! chooses that, one fact): the kernels' GEMM (`super::gemm`, which picks by operand dtype)
//! then sends the tile to [`gemm_tile`] here instead of the f32 one, with the weight read as stored and the f32 activations rounded to bf16 (nearest-even) as
//! they are packed. Norms, softmax, element-wise ops and everything between layers stay f32.
//!
//! Where the CPU has AMX-BF16 (and Linux grants it) the tiles of [`amx`] make the products,
//! reading the same packed strips; elsewhere with AVX512-BF16 the micro-kernel of [`kernel`].
//! On a CPU without AVX512-BF16 (or not x86) the same products are made by widening the
//! bf16-rounded operands to f32 for the f32 GEMM: same inputs, same results up to summation
//! order, at f32 speed.

pub(super) mod amx;
pub(super) mod kernel;
mod packed;

use std::cell::RefCell;

use half::{bf16, f16};

use super::{Mat, Product};

pub(crate) use packed::PackedA;

/// Where the k block starting at `k0` (a multiple of [`KC`]) of an `m`-row [`PackedA`]
/// begins: every earlier block holds `KC / 2` pairs for each of the padded rows.
fn block_at(m: usize, k0: usize) -> usize {
    m.div_ceil(MR) * MR * (k0 / 2)
}

/// k-pairs a packed block of `kc` k values holds: `kc / 2` rounded up, and up to a multiple of
/// 16 (zeros) where the AMX kernel runs, whose tiles are 16 pairs deep. `KC / 2` is such a
/// multiple, so [`block_at`] holds either way.
fn kc_pairs(kc: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if amx::available() {
        return kc.div_ceil(32) * 16;
    }
    kc.div_ceil(2)
}

/// Rows per A strip, as the micro-kernel takes them (12 wherever it runs: the packed layout
/// is the same for the portable path).
const MR: usize = 12;

impl Mat {
    /// Element `(i, j)` rounded to bf16.
    ///
    /// # Safety
    /// `(i, j)` must be inside the matrix.
    unsafe fn bf16_at(self, i: usize, j: usize) -> u16 {
        // SAFETY: forwarded to the caller.
        unsafe {
            match self {
                Mat::F32(p, cs, rs) => {
                    bf16::from_f32(*p.offset(i as isize * rs + j as isize * cs)).to_bits()
                }
                Mat::Bf16(p, cs, rs) => *p.offset(i as isize * rs + j as isize * cs),
                Mat::F16(p, cs, rs) => {
                    let v = f16::from_bits(*p.offset(i as isize * rs + j as isize * cs));
                    bf16::from_f32(v.to_f32()).to_bits()
                }
                Mat::Packed(p, m, k) => {
                    let (k0, kk) = ((j / KC) * KC, j % KC);
                    let kc2 = kc_pairs(k.min(k0 + KC) - k0);
                    let at = block_at(m, k0) + (i / MR) * kc2 * MR + (i % MR) * kc2 + kk / 2;
                    (*p.add(at) >> (16 * (kk % 2))) as u16
                }
            }
        }
    }

    /// Row `i` from column `j` when it is contiguous.
    fn row(self, i: usize, j: usize) -> Option<Row> {
        match self {
            // SAFETY (both): only an address, dereferenced within the caller's bounds.
            Mat::F32(p, 1, rs) => Some(Row::F32(p.wrapping_offset(i as isize * rs + j as isize))),
            Mat::Bf16(p, 1, rs) => Some(Row::Bf16(p.wrapping_offset(i as isize * rs + j as isize))),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Row {
    F32(*const f32),
    Bf16(*const u16),
}

/// k values per packed block: a B strip of 256 × 32 bf16 (16 KiB) stays in L1 while every A
/// strip of the block passes it.
const KC: usize = 256;

#[derive(Default)]
struct Packs {
    a: Vec<u32>,
    b: Vec<u16>,
    wide: Vec<f32>,
}

thread_local! {
    static PACKS: RefCell<Packs> = RefCell::default();
}

/// `p` with products of bf16-rounded operands summed in f32, on the calling thread (the
/// callers parallelise over tiles).
///
/// # Safety
/// As [`super::gemm`].
pub(crate) unsafe fn gemm_tile(p: Product, lhs: Mat, rhs: Mat) {
    let [m, n, _] = p.mnk;
    if m == 0 || n == 0 {
        return;
    }
    PACKS.with_borrow_mut(|packs| {
        #[cfg(target_arch = "x86_64")]
        if kernel::available() {
            // SAFETY: forwarded to the caller; the CPU has the kernel's features.
            unsafe { gemm_avx512(p, lhs, rhs, packs) };
            return;
        }
        // SAFETY: forwarded to the caller.
        unsafe { gemm_widened(p, lhs, rhs, packs) };
    });
}

/// The portable path: both operands rounded to bf16 and widened to f32, then the f32 GEMM.
unsafe fn gemm_widened(p: Product, lhs: Mat, rhs: Mat, packs: &mut Packs) {
    let [m, n, k] = p.mnk;
    let wide = &mut packs.wide;
    wide.clear();
    // SAFETY: (i, j) inside each operand, as the caller promises.
    unsafe {
        wide.extend((0..m * k).map(|t| bf16::from_bits(lhs.bf16_at(t / k, t % k)).to_f32()));
        wide.extend((0..k * n).map(|t| bf16::from_bits(rhs.bf16_at(t / n, t % n)).to_f32()));
        let (a, b) = wide.split_at(m * k);
        super::gemm(
            p,
            Mat::F32(a.as_ptr(), 1, k as isize),
            Mat::F32(b.as_ptr(), 1, n as isize),
        );
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn gemm_avx512(p: Product, lhs: Mat, rhs: Mat, packs: &mut Packs) {
    use kernel::NR;
    let Product {
        mnk: [m, n, k],
        dst,
        dst_rs,
        accumulate,
        scale,
    } = p;
    let (a_strips, b_strips) = (m.div_ceil(MR), n.div_ceil(NR));
    if k == 0 {
        // No products: the sum is zero.
        for i in 0..m {
            // SAFETY: row i of dst has n values.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n) };
            if !accumulate {
                row.fill(0.0);
            }
        }
        return;
    }
    let amx = amx::available();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let kc2 = kc_pairs(kc);
        // Buffers only grow: the packing writes every value the kernels read into a stored
        // output (clearing them was 5% of a bf16 UNet step's samples on AMX). Padding pairs
        // are zeroed on both sides: one would do for finite values, both keep a stale NaN or
        // ∞ out of the sums (the tests fail only with neither).
        let (b_len, a_len) = (b_strips * kc2 * 64, a_strips * kc2 * MR);
        grow(&mut packs.b, b_len);
        // SAFETY: the packing reads operand elements (k0.., ..) inside the operands and writes
        // inside the buffers just sized; a packed A is m×k, so its block k0 is in its data.
        let a_block = unsafe {
            pack_b(rhs, k0, kc, n, &mut packs.b[..b_len]);
            match lhs {
                Mat::Packed(p, pm, pk) => {
                    assert_eq!((pm, pk), (m, k), "a packed operand is used whole");
                    p.add(block_at(m, k0))
                }
                _ => {
                    grow(&mut packs.a, a_len);
                    pack_a(lhs, k0, kc, m, packs.a.as_mut_ptr());
                    packs.a.as_ptr()
                }
            }
        };
        let load = accumulate || k0 > 0;
        for js in 0..b_strips {
            let (j0, nr) = (js * NR, NR.min(n - js * NR));
            let b = packs.b[js * kc2 * 64..].as_ptr();
            if amx {
                for is in (0..a_strips).step_by(2) {
                    let i0 = is * MR;
                    let mr = [MR.min(m - i0), MR.min(m.saturating_sub(i0 + MR))];
                    // SAFETY: strips is and is + 1 (when mr[1] > 0) hold kc2 pairs, a multiple
                    // of 16 (kc_pairs); the rows i0..i0 + mr[0] + mr[1] by nr columns are in dst.
                    unsafe {
                        let a = a_block.add(is * kc2 * MR);
                        let d = dst.add(i0 * dst_rs + j0);
                        let a1 = a.wrapping_add(kc2 * MR);
                        amx::kernel(kc2, [a, a1], b, d, dst_rs, mr, nr, load, scale);
                    }
                }
                continue;
            }
            for is in 0..a_strips {
                let (i0, mr) = (is * MR, MR.min(m - is * MR));
                // SAFETY: the strips hold kc2 pairs; the mr×nr window at (i0, j0) is in dst.
                unsafe {
                    let (a, d) = (a_block.add(is * kc2 * MR), dst.add(i0 * dst_rs + j0));
                    if nr > 16 {
                        kernel::kernel::<2>(kc2, a, b, d, dst_rs, [mr, nr], load, scale);
                    } else {
                        kernel::kernel::<1>(kc2, a, b, d, dst_rs, [mr, nr], load, scale);
                    }
                }
            }
        }
    }
}

/// Grows `v` to at least `len` values, keeping (not clearing) what it holds.
pub(in crate::nn::cpu) fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Packs rows `k0..k0+kc` of `rhs` (all `n` columns) as B strips, padding pairs zeroed. The
/// last strip's columns past `n` may keep what the buffer held (Kᵀ's path): the kernels
/// compute those columns but never store them.
///
/// # Safety
/// The rows and columns are inside `rhs`; `out` holds `n.div_ceil(NR) · kc_pairs(kc) · 64`.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_b(rhs: Mat, k0: usize, kc: usize, n: usize, out: &mut [u16]) {
    use kernel::NR;
    let (kc2, real) = (kc_pairs(kc), kc.div_ceil(2));
    for strip in out.chunks_exact_mut(kc2 * 64) {
        strip[real * 64..].fill(0);
    }
    if let Mat::F32(p, cs, 1) = rhs
        && cs != 1
    {
        // Columns stored contiguously (attention's Kᵀ: one key per column): each column's
        // pairs are neighbours, converted as a row and written one lane apart.
        for (js, strip) in out.chunks_exact_mut(kc2 * 64).enumerate() {
            for jj in 0..NR.min(n - js * NR) {
                let col = p.wrapping_offset(k0 as isize + (js * NR + jj) as isize * cs);
                // SAFETY: column js·NR + jj, rows k0..k0+kc are in rhs; lane jj of the strip.
                unsafe {
                    kernel::pack_row_f32(col, kc, strip.as_mut_ptr().cast::<u32>().add(jj), NR)
                };
            }
        }
        return;
    }
    for (js, strip) in out.chunks_exact_mut(kc2 * 64).enumerate() {
        let (j0, nr) = (js * NR, NR.min(n - js * NR));
        for (p, pair) in strip.chunks_exact_mut(64).take(real).enumerate() {
            let (r0, r1) = (k0 + 2 * p, (2 * p + 1 < kc).then_some(k0 + 2 * p + 1));
            // SAFETY: rows r0, r1 < k0 + kc and columns j0..j0+nr are in rhs.
            unsafe {
                let second = r1.map(|r| rhs.row(r, j0));
                match (rhs.row(r0, j0), second) {
                    (Some(Row::F32(a)), None) => {
                        kernel::pack_b_pair_f32(a, None, nr, pair.as_mut_ptr())
                    }
                    (Some(Row::F32(a)), Some(Some(Row::F32(b)))) => {
                        kernel::pack_b_pair_f32(a, Some(b), nr, pair.as_mut_ptr())
                    }
                    (Some(Row::Bf16(a)), None) => {
                        kernel::pack_b_pair_bf16(a, None, nr, pair.as_mut_ptr())
                    }
                    (Some(Row::Bf16(a)), Some(Some(Row::Bf16(b)))) => {
                        kernel::pack_b_pair_bf16(a, Some(b), nr, pair.as_mut_ptr())
                    }
                    _ => {
                        for j in 0..nr {
                            pair[2 * j] = rhs.bf16_at(r0, j0 + j);
                            pair[2 * j + 1] = r1.map_or(0, |r| rhs.bf16_at(r, j0 + j));
                        }
                    }
                }
            }
        }
    }
}

/// Packs columns `k0..k0+kc` of `lhs` (all `m` rows) as A strips, padding pairs zeroed. The
/// last strip's rows past `m` keep what the buffer held: the kernels compute those rows
/// but never store them, and a row of products depends on its own A row only.
///
/// # Safety
/// The rows and columns are inside `lhs`; `out` has `m.div_ceil(MR) · kc_pairs(kc) · MR`
/// writable u32 (initialised or not: only written).
unsafe fn pack_a(lhs: Mat, k0: usize, kc: usize, m: usize, out: *mut u32) {
    let kc2 = kc_pairs(kc);
    for i in 0..m {
        // SAFETY: row i's kc2 pairs (at i·kc2: a strip's rows follow one another) are in the
        // buffer; row i, columns k0..k0+kc are in lhs.
        unsafe { pack_row(lhs, i, k0, kc, out.add(i * kc2)) };
    }
}

/// Row `i`, columns `k0..k0+kc` of `lhs` as `kc_pairs(kc)` bf16 pairs at `slot`, padding pairs
/// zeroed.
///
/// # Safety
/// The row and columns are inside `lhs`; `slot` has `kc_pairs(kc)` writable u32.
unsafe fn pack_row(lhs: Mat, i: usize, k0: usize, kc: usize, slot: *mut u32) {
    let (kc2, real) = (kc_pairs(kc), kc.div_ceil(2));
    // SAFETY: forwarded.
    unsafe {
        slot.add(real).write_bytes(0, kc2 - real);
        match lhs.row(i, k0) {
            #[cfg(target_arch = "x86_64")]
            Some(Row::F32(r)) if kernel::available() => kernel::pack_row_f32(r, kc, slot, 1),
            // A bf16 row's consecutive pairs are already the u32s the kernel broadcasts.
            Some(Row::Bf16(r)) => {
                std::ptr::copy_nonoverlapping(r.cast::<u8>(), slot.cast::<u8>(), 4 * (kc / 2));
                if kc % 2 == 1 {
                    *slot.add(kc / 2) = *r.add(kc - 1) as u32;
                }
            }
            _ => {
                for p in 0..real {
                    let lo = lhs.bf16_at(i, k0 + 2 * p) as u32;
                    let hi = if 2 * p + 1 < kc {
                        lhs.bf16_at(i, k0 + 2 * p + 1) as u32
                    } else {
                        0
                    };
                    *slot.add(p) = lo | (hi << 16);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
