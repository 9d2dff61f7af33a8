//! The GEMM operand and the one place a tile's GEMM is chosen by its operands' dtypes:
//! f32 × f32 is the f32 GEMM; a bf16 operand (a weight held in bf16, `--precision bf16`)
//! makes it the bf16 GEMM; an f16 operand (a weight kept as an f16 file has it under f32
//! activations: half the resident memory) is widened to f32 for the f32 GEMM, which is exact.

use std::cell::RefCell;

use burn::tensor::{Bytes, DType};
use burn_flex::FlexTensor;
use half::f16;

use super::{Unfilled, bf16, gemm_tile};

/// The weight dtypes the GEMM kernels (Linear, convolutions) read as stored: f32; f16, which
/// they widen (exactly) and multiply in f32; and bf16, in which case the layer computes in
/// bf16 (`--precision bf16`).
pub(crate) const GEMM_WEIGHTS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// One operand: element `(i, j)` at `ptr + i·rs + j·cs` (in elements).
#[derive(Clone, Copy)]
pub(crate) enum Mat {
    F32(*const f32, isize, isize),
    /// f16 bits.
    F16(*const u16, isize, isize),
    /// bf16 bits.
    Bf16(*const u16, isize, isize),
    /// A left operand packed once by [`bf16::PackedA`] (its data, `m`, `k`): only whole, as
    /// `lhs`.
    Packed(*const u32, usize, usize),
}

// SAFETY: a `Mat` only reads, and the kernels share one between tasks only while the tensor
// it points into is alive and unchanged (a weight, an input).
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The same matrix from element `(i, j)` on.
    pub(crate) fn at(self, i: usize, j: usize) -> Mat {
        match self {
            Mat::F32(_, cs, rs) | Mat::F16(_, cs, rs) | Mat::Bf16(_, cs, rs) => {
                self.shifted(i as isize * rs + j as isize * cs)
            }
            Mat::Packed(..) => {
                assert_eq!((i, j), (0, 0), "a packed operand is used whole");
                self
            }
        }
    }

    /// The matrix `elems` elements further into its storage, same strides.
    pub(crate) fn shifted(self, elems: isize) -> Mat {
        match self {
            Mat::F32(p, cs, rs) => Mat::F32(p.wrapping_offset(elems), cs, rs),
            Mat::F16(p, cs, rs) => Mat::F16(p.wrapping_offset(elems), cs, rs),
            Mat::Bf16(p, cs, rs) => Mat::Bf16(p.wrapping_offset(elems), cs, rs),
            Mat::Packed(..) => {
                assert_eq!(elems, 0, "a packed operand is used whole");
                self
            }
        }
    }
}

/// A GEMM operand over `t`'s storage from its start offset, `(i, j)` at `i·rs + j·cs`, by the
/// tensor's dtype (f32, f16 or bf16).
pub(crate) fn mat(t: &FlexTensor, cs: isize, rs: isize) -> Mat {
    let start = t.layout().start_offset();
    match t.dtype() {
        DType::BF16 => Mat::Bf16(t.storage::<half::bf16>()[start..].as_ptr().cast(), cs, rs),
        DType::F16 => Mat::F16(t.storage::<f16>()[start..].as_ptr().cast(), cs, rs),
        _ => Mat::F32(t.storage::<f32>()[start..].as_ptr(), cs, rs),
    }
}

/// Largest f16 weight [`widened_once`] copies (f32 bytes): the UNet's 64×64- and 32×32-level
/// weights (up to 13 MB) are below it, the 16×16 level's 1280×10240 GEGLU projection (52 MB,
/// read by only two row tiles) stays widened per tile rather than add its copy to the peak.
const WIDEN_ONCE_MAX: usize = 16 << 20;

/// `w` (an f16 weight) widened to f32 once, same layout, for a call whose tasks would each
/// widen the same panels again, `reuse` times over: a 64×64-level Linear has 32 row tiles,
/// so per tile its weight was converted 32 times (f16→f32 was ~5% of an SD step on f16
/// weights). `None`, widen per tile as before, for other dtypes, `reuse` < 3, a weight above
/// [`WIDEN_ONCE_MAX`] or one that is a view into a larger buffer.
pub(crate) fn widened_once(w: &FlexTensor, reuse: usize) -> Option<FlexTensor> {
    if w.dtype() != DType::F16 || reuse < 3 || 4 * w.layout().num_elements() > WIDEN_ONCE_MAX {
        return None;
    }
    widened(w)
}

/// An f16 or bf16 tensor widened to f32 (exactly), same layout, in parallel: Flex's cast runs
/// on one thread (an SD step's three stride-2 convolutions took 0.14 s on f16 weights against
/// 0.095 s on f32; 0.105 s with this). `None` for other dtypes or a view into a larger buffer.
pub(crate) fn widened(w: &FlexTensor) -> Option<FlexTensor> {
    let out = match w.dtype() {
        DType::F16 => widen_whole(w, w.storage::<f16>())?,
        DType::BF16 => widen_whole(w, w.storage::<half::bf16>())?,
        _ => return None,
    };
    Some(FlexTensor::new(
        Bytes::from_elems(out),
        w.layout().clone(),
        DType::F32,
    ))
}

/// `src`, the storage of `w`, in f32, converted in parallel chunks; `None` where `w` is a view
/// into a larger buffer.
fn widen_whole<T: Widen + Sync>(w: &FlexTensor, src: &[T]) -> Option<Vec<f32>> {
    let layout = w.layout();
    if layout.start_offset() != 0 || src.len() != layout.num_elements() {
        return None;
    }
    const CHUNK: usize = 1 << 16;
    // SAFETY: `widen` writes each value of its piece (the lengths match).
    let out = unsafe {
        Unfilled::par_chunks(src.len(), CHUNK, |i, o| {
            T::widen(&src[i * CHUNK..][..o.len()], o)
        })
    };
    Some(out)
}

/// A weight element type and its exact widening to f32, a slice or one value at a time (f32
/// itself: a copy).
pub(crate) trait Widen: Sized {
    /// `dst[i] = src[i]` as f32 (exact); the lengths must match.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// One value as f32 (exact).
    fn wide(self) -> f32;
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn wide(self) -> f32 {
        self
    }
}

impl Widen for f16 {
    /// 16 values per `vcvtph2ps` with AVX-512F; elsewhere `half`'s conversion (8 per F16C
    /// call where the CPU has it). `half`'s call per 8 values, not inlined, had been 5% of an
    /// SD 1.5 image's samples on f16 weights (its `f16x8_to_f32x8` alone 3.7%).
    fn widen(src: &[f16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: lengths differ");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected just above; the lengths match.
            return unsafe { widen_f16_avx512(src, dst) };
        }
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn wide(self) -> f32 {
        self.to_f32()
    }
}

impl Widen for half::bf16 {
    /// The bits shifted into the high half of an f32 (vectorised in [`widen_bf16`]).
    fn widen(src: &[half::bf16], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: lengths differ");
        widen_bf16(src, dst);
    }
    fn wide(self) -> f32 {
        self.to_f32()
    }
}

super::simd_dispatch! {
    /// bf16 → f32 as a shift of the bits, which the compiler vectorises.
    fn widen_bf16(src: &[half::bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

/// [`Widen`] for f16 in AVX-512 registers, 64 values per step.
///
/// # Safety
/// The CPU must have AVX-512F, and `dst` be as long as `src`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let (s, d) = (src.as_ptr().cast::<__m256i>(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY (all): i + 64 ≤ n, then i + 16 ≤ n, values i.. of both slices; unaligned
    // loads and stores.
    unsafe {
        while i + 64 <= n {
            for j in 0..4 {
                let v = _mm256_loadu_si256(s.byte_add(2 * (i + 16 * j)));
                _mm512_storeu_ps(d.add(i + 16 * j), _mm512_cvtph_ps(v));
            }
            i += 64;
        }
        while i + 16 <= n {
            _mm512_storeu_ps(
                d.add(i),
                _mm512_cvtph_ps(_mm256_loadu_si256(s.byte_add(2 * i))),
            );
            i += 16;
        }
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

thread_local! {
    /// Where a task widens the f16 operand of its GEMM: one weight panel (a Linear tile's
    /// `K × 256` columns, a convolution tap's channel block), reused call after call.
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One tile's GEMM: `dst = [dst +] scale · lhs · rhs` (`+` if `accumulate`), `lhs` `m×k`,
/// `rhs` `k×n`, into the `m×n` row-major window at `dst` (row stride `dst_rs`).
#[derive(Clone, Copy)]
pub(crate) struct Product {
    pub(crate) mnk: [usize; 3],
    pub(crate) dst: *mut f32,
    pub(crate) dst_rs: usize,
    pub(crate) accumulate: bool,
    pub(crate) scale: f32,
}

impl Product {
    /// [`gemm_tile`] with f32 operands `(pointer, column stride, row stride)`.
    ///
    /// # Safety
    /// As [`gemm_tile`].
    unsafe fn f32(self, a: (*const f32, isize, isize), b: (*const f32, isize, isize)) {
        let Product {
            mnk,
            dst,
            dst_rs,
            accumulate,
            scale,
        } = self;
        // SAFETY: forwarded to the caller.
        unsafe { gemm_tile(mnk, dst, dst_rs, accumulate, a, b, scale) }
    }
}

/// `p` on the calling thread: in f32 for f32 and f16 operands (f16 widened first), in bf16
/// with f32 sums when either operand is bf16 or packed for it.
///
/// # Safety
/// Every element addressed through the operands and `p.dst` must be in bounds, and `p.dst`
/// must not alias the operands or another thread's tile.
pub(crate) unsafe fn gemm(p: Product, lhs: Mat, rhs: Mat) {
    let [m, n, k] = p.mnk;
    // SAFETY (all): forwarded to the caller; a widened operand is a contiguous copy of the
    // f16 one's elements, which are in bounds by the same promise.
    unsafe {
        match (lhs, rhs) {
            (Mat::F32(a, acs, ars), Mat::F32(b, bcs, brs)) => p.f32((a, acs, ars), (b, bcs, brs)),
            (Mat::F16(..), Mat::F32(b, bcs, brs)) => WIDE.with_borrow_mut(|wide| {
                widen(lhs, m, k, wide);
                p.f32((wide.as_ptr(), 1, k as isize), (b, bcs, brs))
            }),
            (Mat::F32(a, acs, ars), Mat::F16(..)) => WIDE.with_borrow_mut(|wide| {
                widen(rhs, k, n, wide);
                p.f32((a, acs, ars), (wide.as_ptr(), 1, n as isize))
            }),
            // Both f16 (no kernel passes that today: activations are f32): both widened.
            (Mat::F16(..), Mat::F16(..)) => WIDE.with_borrow_mut(|wide| {
                let mut b = Vec::new();
                widen(lhs, m, k, wide);
                widen(rhs, k, n, &mut b);
                p.f32((wide.as_ptr(), 1, k as isize), (b.as_ptr(), 1, n as isize))
            }),
            _ => bf16::gemm_tile(p, lhs, rhs),
        }
    }
}

/// The `rows × cols` f16 matrix `src` into `out`, contiguous row-major f32.
///
/// # Safety
/// `src` is an `F16` operand with every `(i, j)` in bounds.
unsafe fn widen(src: Mat, rows: usize, cols: usize, out: &mut Vec<f32>) {
    let Mat::F16(p, cs, rs) = src else {
        unreachable!("widen takes f16 operands")
    };
    // Grown, never cleared: every value the product reads is written below (zeroing the
    // panel first had been a memset per tile).
    if out.len() < rows * cols {
        out.resize(rows * cols, 0.0);
    }
    for (i, row) in out[..rows * cols].chunks_exact_mut(cols.max(1)).enumerate() {
        // SAFETY: (i, j) in bounds, as the caller promises.
        unsafe {
            let first = p.offset(i as isize * rs).cast::<f16>();
            if cs == 1 {
                f16::widen(std::slice::from_raw_parts(first, cols), row);
            } else {
                for (j, r) in row.iter_mut().enumerate() {
                    *r = (*first.offset(j as isize * cs)).to_f32();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::{Mat, Product, Widen, gemm};

    /// Every f16 and bf16 bit pattern widens to the bits `half` gives it (NaNs: still NaN),
    /// through slices of every length mod 64 and start mod 16, so the vector body and the tail
    /// both see each pattern.
    #[test]
    fn widen_is_exact_for_every_bit_pattern() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let same =
            |got: f32, want: f32| got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan();
        for (start, len) in [
            (0usize, 65536usize),
            (3, 65533),
            (16, 77),
            (5, 63),
            (1, 1),
            (0, 0),
        ] {
            let f: Vec<f16> = bits[start..start + len]
                .iter()
                .map(|&b| f16::from_bits(b))
                .collect();
            let mut out = vec![0.0f32; len];
            f16::widen(&f, &mut out);
            for (g, h) in out.iter().zip(&f) {
                assert!(same(*g, h.to_f32()), "f16 {:#06x}: {g}", h.to_bits());
            }
            let b: Vec<half::bf16> = bits[start..start + len]
                .iter()
                .map(|&b| half::bf16::from_bits(b))
                .collect();
            half::bf16::widen(&b, &mut out);
            for (g, h) in out.iter().zip(&b) {
                assert!(same(*g, h.to_f32()), "bf16 {:#06x}: {g}", h.to_bits());
            }
        }
    }

    /// f16 operands (either side, both, strided) give the f32 product of their values.
    #[test]
    fn f16_operands_are_widened_exactly() {
        let [m, n, k] = [5usize, 7, 9];
        let a: Vec<f32> = (0..m * k)
            .map(|t| f16::from_f32(t as f32 * 0.37 - 4.0).to_f32())
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|t| f16::from_f32(2.5 - t as f32 * 0.11).to_f32())
            .collect();
        let a16: Vec<u16> = a.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        // b by columns: column stride k, row stride 1.
        let b16: Vec<u16> = (0..k * n)
            .map(|t| f16::from_f32(b[(t % k) * n + t / k]).to_bits())
            .collect();
        let want: Vec<f32> = (0..m * n)
            .map(|t| (0..k).map(|p| a[(t / n) * k + p] * b[p * n + t % n]).sum())
            .collect();
        let (fa, fb) = (
            Mat::F32(a.as_ptr(), 1, k as isize),
            Mat::F32(b.as_ptr(), 1, n as isize),
        );
        let (ha, hb) = (
            Mat::F16(a16.as_ptr(), 1, k as isize),
            Mat::F16(b16.as_ptr(), k as isize, 1),
        );
        for (lhs, rhs) in [(ha, fb), (fa, hb), (ha, hb)] {
            let mut dst = vec![0.0f32; m * n];
            let p = Product {
                mnk: [m, n, k],
                dst: dst.as_mut_ptr(),
                dst_rs: n,
                accumulate: false,
                scale: 1.0,
            };
            // SAFETY: the operands are m×k and k×n as described; dst is m×n.
            unsafe { gemm(p, lhs, rhs) };
            for (g, w) in dst.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
    }
}
