//! The f32 product of a narrow right operand (a few dozen columns) read where it lies: each
//! left value is broadcast from its row, each right row loaded as one or two vectors, so
//! neither operand is packed. For the small-plane Winograd blocks ([`super::winograd`]'s
//! 16×16 and 8×8 levels: 64 output channels × 32 tile columns × 128 or 288 channels per
//! product), where the gemm crate packed every left piece again after its transform and ran
//! its 32-row edge kernel: on that shape, hot in cache, one thread, it did 61 GMAC/s against
//! this kernel's 76 (12 rows × 32 columns, 24 accumulators).
//!
//! Each output is `Σ_k a·b` accumulated in order of `k` with fused multiply-adds (onto the
//! old value when accumulating), as the gemm crate's f32 kernels also do per panel.

use super::{Mat, Product, gemm};

/// Register tile: rows of the left operand per tile with two 16-lane column vectors (24
/// accumulators: 12 rows measured 76 GMAC/s, 8 rows 63–72, 16 rows spilled to 54).
const ROWS: usize = 12;

/// `p` with `lhs` `(pointer, row stride)` contiguous along `k` and `rhs` `(pointer, row
/// stride)` contiguous along `n`: this kernel where the CPU has AVX-512F, else [`gemm`].
///
/// # Safety
/// As [`gemm`]: every element addressed is in bounds, `p.dst` aliases neither operand nor
/// another thread's window.
pub(crate) unsafe fn product(p: Product, lhs: (*const f32, usize), rhs: (*const f32, usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && p.scale == 1.0 {
        // SAFETY: the feature was detected just above; bounds are the caller's promise.
        return unsafe { x86::product(p, lhs, rhs) };
    }
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm(
            p,
            Mat::F32(lhs.0, 1, lhs.1 as isize),
            Mat::F32(rhs.0, 1, rhs.1 as isize),
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Product, ROWS};

    /// [`super::product`] by tiles of up to [`ROWS`] rows × 32 columns (16 at the last
    /// columns where fewer are left), masked at the last columns.
    ///
    /// # Safety
    /// AVX-512F must be available; as [`super::product`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(p: Product, lhs: (*const f32, usize), rhs: (*const f32, usize)) {
        let [m, n, k] = p.mnk;
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(32);
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(ROWS);
                let t = Tile {
                    k,
                    a: lhs.0.wrapping_add(i0 * lhs.1),
                    lda: lhs.1,
                    b: rhs.0.wrapping_add(j0),
                    ldb: rhs.1,
                    c: p.dst.wrapping_add(i0 * p.dst_rs + j0),
                    ldc: p.dst_rs,
                    cols,
                    accumulate: p.accumulate,
                };
                // SAFETY (all): the tile lies inside the product, whose elements the caller
                // promises are in bounds.
                unsafe {
                    match (rows, cols > 16) {
                        (ROWS, true) => t.run::<ROWS, 2>(),
                        (ROWS, false) => t.run::<ROWS, 1>(),
                        (r, true) => t.run_short::<2>(r),
                        (r, false) => t.run_short::<1>(r),
                    }
                }
                i0 += rows;
            }
            j0 += cols;
        }
    }

    /// One register tile: `c[i][j] (+)= Σ_k a[i·lda + k] · b[k·ldb + j]`, `j < cols`.
    #[derive(Clone, Copy)]
    struct Tile {
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    }

    impl Tile {
        /// The lanes of column vector `v` that hold columns `< cols`.
        #[inline(always)]
        fn mask(&self, v: usize) -> __mmask16 {
            let live = self.cols.saturating_sub(16 * v).min(16);
            ((1u32 << live) - 1) as __mmask16
        }

        /// Fewer than [`ROWS`] rows (a block's last): the largest tile that fits, then the rest.
        #[target_feature(enable = "avx512f")]
        unsafe fn run_short<const V: usize>(&self, rows: usize) {
            // SAFETY (all): rows ≤ the rows left, so each call stays inside the tile.
            unsafe {
                match rows {
                    8.. => {
                        self.run::<8, V>();
                        self.rows_from(8).run_short::<V>(rows - 8);
                    }
                    4.. => {
                        self.run::<4, V>();
                        self.rows_from(4).run_short::<V>(rows - 4);
                    }
                    2.. => {
                        self.run::<2, V>();
                        self.rows_from(2).run_short::<V>(rows - 2);
                    }
                    1 => self.run::<1, V>(),
                    _ => {}
                }
            }
        }

        /// The same tile from row `i` on.
        fn rows_from(&self, i: usize) -> Tile {
            Tile {
                a: self.a.wrapping_add(i * self.lda),
                c: self.c.wrapping_add(i * self.ldc),
                ..*self
            }
        }

        /// `R` rows × `V` column vectors.
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            // Loops, not `array::from_fn` closures, which may compile out of line without the
            // target feature.
            let mut masks = [0; V];
            for (v, m) in masks.iter_mut().enumerate() {
                *m = self.mask(v);
            }
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            // SAFETY (all): rows < R and columns under the masks lie inside the tile.
            unsafe {
                if self.accumulate {
                    for (i, row) in acc.iter_mut().enumerate() {
                        for (v, a) in row.iter_mut().enumerate() {
                            *a = _mm512_maskz_loadu_ps(masks[v], self.c.add(i * self.ldc + 16 * v));
                        }
                    }
                }
                for kk in 0..self.k {
                    let brow = self.b.add(kk * self.ldb);
                    let mut bv = [_mm512_setzero_ps(); V];
                    for (v, b) in bv.iter_mut().enumerate() {
                        *b = _mm512_maskz_loadu_ps(masks[v], brow.add(16 * v));
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*self.a.add(i * self.lda + kk));
                        for (a, &b) in row.iter_mut().zip(&bv) {
                            *a = _mm512_fmadd_ps(av, b, *a);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (v, &a) in row.iter().enumerate() {
                        _mm512_mask_storeu_ps(self.c.add(i * self.ldc + 16 * v), masks[v], a);
                    }
                }
            }
        }
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product over ragged shapes (row tails of every size below 12, column
    /// tails inside the first and second vector, several column chunks), strided operands and
    /// output, fresh and accumulating.
    #[test]
    fn matches_f64_over_ragged_shapes() {
        for (m, n, k) in [(64, 32, 128), (23, 17, 9), (13, 5, 31), (1, 70, 3), (12, 48, 40)] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a: Vec<f32> = (0..m * lda).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02).collect();
            let b: Vec<f32> = (0..k * ldb).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.03).collect();
            for accumulate in [false, true] {
                let c0: Vec<f32> = (0..m * ldc).map(|i| (i % 11) as f32 * 0.5).collect();
                let mut c = c0.clone();
                let p = Product {
                    mnk: [m, n, k],
                    dst: c.as_mut_ptr(),
                    dst_rs: ldc,
                    accumulate,
                    scale: 1.0,
                };
                // SAFETY: the operands and output hold every element of these shapes.
                unsafe { product(p, (a.as_ptr(), lda), (b.as_ptr(), ldb)) };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, c0[i * ldc + j], "[{m}x{n}x{k}] wrote past column {j}");
                            continue;
                        }
                        let dot: f64 = (0..k)
                            .map(|kk| f64::from(a[i * lda + kk]) * f64::from(b[kk * ldb + j]))
                            .sum();
                        let want = dot + if accumulate { f64::from(c0[i * ldc + j]) } else { 0.0 };
                        assert!(
                            (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "[{m}x{n}x{k}] acc {accumulate} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
