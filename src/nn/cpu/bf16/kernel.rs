//! The AVX512-BF16 micro-kernel and its packing loops: `vdpbf16ps` multiplies 16 pairs of bf16
//! per register and adds both products to an f32 lane, 32 multiply-adds per instruction where
//! `vfmadd231ps` does 16. Measured on this machine's 2 EPYC cores: 110 GMAC/s per core against
//! 58 for f32 FMA (a register-only loop), so the GEMMs that are most of a UNet step can run at
//! up to twice the f32 rate; the sums stay f32.
//!
//! Layouts (both padded to whole strips, so the kernel never branches on edges inside its loop;
//! padding k-pairs are zero, padding rows and columns are computed and never stored):
//! - packed B: per strip of [`NR`] columns, per k-pair `p`, 64 bf16: for column `j` of the
//!   strip the pair `(b[2p][j], b[2p+1][j])`, columns 0–15 then 16–31 (one register each);
//! - packed A: per strip of [`MR`] rows, per row, its k-pairs `(a[i][2p], a[i][2p+1])` as u32,
//!   each broadcast to every lane (rows, not k-pairs, outermost: packing an f32 row is then a
//!   conversion with vector stores, where interleaving the 12 rows cost a third of the
//!   attention's bf16 products).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::mem::transmute;

/// Rows of A per micro-kernel call: 12 rows × 2 registers = 24 accumulators, with 2 registers
/// of B and one broadcast inside the 32 the CPU has.
pub(super) use super::MR;
/// Columns of B per micro-kernel call (two 16-lane registers).
pub(super) const NR: usize = 32;

/// Whether this CPU runs [`kernel`] and the packing below.
pub(super) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// `dst[i][j] = scale · Σ_p a·b (+ dst[i][j] if load)` for `i < mr`, `j < nr`, over `kc2`
/// k-pairs of one packed A strip and one packed B strip, `NV` registers (16 columns each) of
/// it: 2, or 1 for a last strip of at most 16 columns (attention's 40-wide heads: 48 columns
/// computed instead of 64).
///
/// # Safety
/// [`available`] must be true; `a` holds `MR` rows of `kc2` u32 and `b` `kc2 · 64` u16; `dst` rows
/// `0..mr` (stride `dst_rs`) have `nr ≤ 16·NV` writable values each.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel<const NV: usize>(
    kc2: usize,
    a: *const u32,
    b: *const u16,
    dst: *mut f32,
    dst_rs: usize,
    [mr, nr]: [usize; 2],
    load: bool,
    scale: f32,
) {
    let mut c = [[_mm512_setzero_ps(); NV]; MR];
    // SAFETY (whole body): the reads stay inside the packed strips and the writes inside the
    // `mr × nr` window of `dst`, as the caller promises.
    unsafe {
        for p in 0..kc2 {
            let bv: [__m512bh; NV] = std::array::from_fn(|h| {
                transmute(_mm512_loadu_si512(b.add(64 * p + 32 * h).cast()))
            });
            let ap = a.add(p);
            for (i, ci) in c.iter_mut().enumerate() {
                let av: __m512bh = transmute(_mm512_set1_epi32(*ap.add(i * kc2) as i32));
                for h in 0..NV {
                    ci[h] = _mm512_dpbf16_ps(ci[h], av, bv[h]);
                }
            }
        }
        let (masks, s) = (column_masks(nr), _mm512_set1_ps(scale));
        for (i, ci) in c.iter().enumerate().take(mr) {
            store_row(dst.add(i * dst_rs), *ci, masks, s, load);
        }
    }
}

/// Lane masks of the first `nr ≤ 32` columns of a row held in two registers.
pub(super) fn column_masks(nr: usize) -> [__mmask16; 2] {
    [
        (((1u32 << nr.min(16)) - 1) & 0xFFFF) as u16,
        (((1u32 << nr.saturating_sub(16)) - 1) & 0xFFFF) as u16,
    ]
}

/// The micro-kernels' epilogue for one row: `d[j] = scale · v (+ d[j] if load)` for the
/// columns `masks` ([`column_masks`]) leave on, 16 per register of `v`.
///
/// # Safety
/// `d` has the masked columns writable (and readable if `load`).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_row<const NV: usize>(
    d: *mut f32,
    v: [__m512; NV],
    masks: [__mmask16; 2],
    scale: __m512,
    load: bool,
) {
    for h in 0..NV {
        let mut x = _mm512_mul_ps(v[h], scale);
        // SAFETY: masked loads and stores touch only the columns the caller vouches for.
        unsafe {
            if load {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[h], d.add(16 * h)));
            }
            _mm512_mask_storeu_ps(d.add(16 * h), masks[h], x);
        }
    }
}

/// Interleaves the 16 values of `lo` (row 2p) and `hi` (row 2p+1): lane j = (lo[j], hi[j]).
#[target_feature(enable = "avx512f,avx512bw")]
fn interleave(v: __m512i) -> __m512i {
    // u16 index 2j ← j (row 2p), 2j+1 ← 16 + j (row 2p+1)
    let idx: [u16; 32] = std::array::from_fn(|t| ((t / 2) + 16 * (t % 2)) as u16);
    // SAFETY: [u16; 32] and __m512i have the same size.
    _mm512_permutexvar_epi16(unsafe { transmute::<[u16; 32], __m512i>(idx) }, v)
}

/// Packs columns `j0..j0+nr` (nr ≤ 32) of f32 rows `r0` and `r1` (`None` = zeros, an odd
/// k's last pair) as one k-pair of a B strip: 64 u16 at `out`.
///
/// # Safety
/// [`available`]; the rows have `nr` readable values at `j0`; `out` has 64 writable u16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::nn::cpu) unsafe fn pack_b_pair_f32(
    r0: *const f32,
    r1: Option<*const f32>,
    nr: usize,
    out: *mut u16,
) {
    // SAFETY: masked loads read only the first `nr` values of each row.
    unsafe {
        for h in 0..2 {
            let m = (((1u32 << nr.saturating_sub(16 * h).min(16)) - 1) & 0xFFFF) as u16;
            let lo = _mm512_maskz_loadu_ps(m, r0.add(16 * h));
            let hi = r1.map_or(_mm512_setzero_ps(), |r| {
                _mm512_maskz_loadu_ps(m, r.add(16 * h))
            });
            let both: __m512i = transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.add(32 * h).cast(), interleave(both));
        }
    }
}

/// [`pack_b_pair_f32`] for bf16 rows (as u16 bits).
///
/// # Safety
/// As [`pack_b_pair_f32`].
// `avx512vl` for the 256-bit masked loads: without it they were calls, not instructions
// (5.9% of a bf16 UNet step's samples on AMX).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn pack_b_pair_bf16(
    r0: *const u16,
    r1: Option<*const u16>,
    nr: usize,
    out: *mut u16,
) {
    // SAFETY: masked loads read only the first `nr` values of each row.
    unsafe {
        for h in 0..2 {
            let m = (((1u32 << nr.saturating_sub(16 * h).min(16)) - 1) & 0xFFFF) as u16;
            let lo = _mm256_maskz_loadu_epi16(m, r0.add(16 * h).cast());
            let hi = r1.map_or(_mm256_setzero_si256(), |r| {
                _mm256_maskz_loadu_epi16(m, r.add(16 * h).cast())
            });
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_storeu_si512(out.add(32 * h).cast(), interleave(both));
        }
    }
}

/// Converts `kc` contiguous f32 into `kc.div_ceil(2)` bf16 pairs written `stride` u32 apart
/// from `out`: one A row into its row of a packed A strip (`stride` 1), or one B column stored
/// contiguously (attention's keys) into a B strip (`stride` = [`NR`]); an odd `kc` pads with
/// zero.
///
/// # Safety
/// [`available`]; `row` has `kc` readable values; `out` is inside a strip of
/// `kc.div_ceil(2)` k-pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(in crate::nn::cpu) unsafe fn pack_row_f32(
    row: *const f32,
    kc: usize,
    out: *mut u32,
    stride: usize,
) {
    let mut pairs = [0u32; 16];
    // SAFETY: masked loads read inside the row; writes go to pair slots below kc.div_ceil(2).
    unsafe {
        for k0 in (0..kc).step_by(32) {
            let left = kc - k0;
            let m0 = (((1u32 << left.min(16)) - 1) & 0xFFFF) as u16;
            let m1 = (((1u32 << left.saturating_sub(16).min(16)) - 1) & 0xFFFF) as u16;
            let lo = _mm512_maskz_loadu_ps(m0, row.add(k0));
            let hi = _mm512_maskz_loadu_ps(m1, row.add(k0 + 16));
            let v: __m512i = transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let (p0, n) = (k0 / 2, left.div_ceil(2).min(16));
            if stride == 1 {
                let m = (((1u32 << n) - 1) & 0xFFFF) as u16;
                _mm512_mask_storeu_epi32(out.add(p0).cast(), m, v);
                continue;
            }
            _mm512_storeu_si512(pairs.as_mut_ptr().cast(), v);
            for (q, &v) in pairs.iter().enumerate().take(n) {
                out.add((p0 + q) * stride).write_unaligned(v);
            }
        }
    }
}
