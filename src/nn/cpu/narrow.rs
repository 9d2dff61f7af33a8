//! The f32 product with operands read where they lie: each left value broadcast (from its
//! row, or from a column the caller laid out), each right row loaded 32 columns at a time as
//! one or two vectors, so neither operand is packed. For the small-plane Winograd blocks
//! ([`super::winograd`]'s 16×16 and 8×8 levels: 64 output channels × 32 tile columns × 128
//! or 288 channels per product), where the gemm crate packed every left piece again after its
//! transform and ran its 32-row edge kernel: on that shape, hot in cache, one thread, it did
//! 61 GMAC/s against this kernel's 76 (12 rows × 32 columns, 24 accumulators). And for
//! attention with scores held keys × queries ([`super::attention_kq`]): 90–95 GMAC/s there,
//! by columns (the FMA peak of one core is 106–113).
//!
//! Each output is `Σ_k a·b` accumulated in order of `k` with fused multiply-adds (onto the
//! old value when accumulating), as the gemm crate's f32 kernels also do per panel.

use super::{Mat, Product, gemm};

/// Register tile: rows of the left operand per tile with two 16-lane column vectors (24
/// accumulators: 12 rows measured 76 GMAC/s, 8 rows 63–72, 16 rows spilled to 54).
const ROWS: usize = 12;

/// The left operand `a` (`m × k`) as it lies in memory.
#[derive(Clone, Copy)]
pub(crate) enum Lhs {
    /// `(pointer, row stride)`, contiguous along `k`: `a[i][k]` at `i·stride + k`.
    Rows(*const f32, usize),
    /// `(pointer, stride of k)`, contiguous along the rows: `a[i][k]` at `k·stride + i`. A
    /// tile's values for one `k` then lie side by side and are broadcast at fixed offsets
    /// from one pointer; with `Rows`, each of the 12 row addresses took an add of its own
    /// (hot in cache, one thread, [512 × 256 × 40]: 84–87 GMAC/s by rows, 90–95 by columns).
    Cols(*const f32, usize),
}

/// `p` with `lhs` as given and `rhs` `(pointer, row stride)` contiguous along `n`: this kernel
/// where the CPU has AVX-512F, else [`gemm`].
///
/// # Safety
/// As [`gemm`]: every element addressed is in bounds, `p.dst` aliases neither operand nor
/// another thread's window.
pub(crate) unsafe fn product(p: Product, lhs: Lhs, rhs: (*const f32, usize)) {
    // SAFETY: forwarded to the caller; no column maxima.
    unsafe { product_max(p, lhs, rhs, &mut []) }
}

/// [`product`], also raising `col_max[j]` (if not empty: `n` values) to the maximum of the
/// product's column `j`, taken from the registers before they are stored (for attention's
/// softmax, which then need not read its scores once more for their maxima).
///
/// # Safety
/// As [`product`].
pub(crate) unsafe fn product_max(
    p: Product,
    lhs: Lhs,
    rhs: (*const f32, usize),
    col_max: &mut [f32],
) {
    let [m, n, _] = p.mnk;
    assert!(
        col_max.is_empty() || col_max.len() >= n,
        "one maximum per column"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && p.scale == 1.0 {
        let col_max = if col_max.is_empty() {
            std::ptr::null_mut()
        } else {
            col_max.as_mut_ptr()
        };
        // SAFETY: the feature was detected just above; bounds are the caller's promise and
        // col_max holds n values.
        return unsafe { x86::product(p, lhs, rhs, col_max) };
    }
    let lhs = match lhs {
        Lhs::Rows(a, ld) => Mat::F32(a, 1, ld as isize),
        Lhs::Cols(a, ld) => Mat::F32(a, ld as isize, 1),
    };
    // SAFETY: forwarded to the caller.
    unsafe { gemm(p, lhs, Mat::F32(rhs.0, 1, rhs.1 as isize)) }
    if !col_max.is_empty() {
        for i in 0..m {
            // SAFETY: row i of the m × n output the product just wrote.
            let row = unsafe { std::slice::from_raw_parts(p.dst.add(i * p.dst_rs), n) };
            for (mx, &x) in col_max.iter_mut().zip(row) {
                *mx = if x > *mx { x } else { *mx };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::low_lanes;
    use super::{Lhs, Product, ROWS};

    /// [`super::product`] by tiles of up to [`ROWS`] rows × 32 columns (16 at the last
    /// columns where fewer are left), masked at the last columns.
    ///
    /// # Safety
    /// AVX-512F must be available; as [`super::product`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        p: Product,
        lhs: Lhs,
        rhs: (*const f32, usize),
        col_max: *mut f32,
    ) {
        let [m, n, k] = p.mnk;
        let (a, lda, by_cols) = match lhs {
            Lhs::Rows(a, ld) => (a, ld, false),
            Lhs::Cols(a, ld) => (a, ld, true),
        };
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(32);
            let mut i0 = 0;
            while i0 < m {
                let rows = (m - i0).min(ROWS);
                let t = Tile {
                    k,
                    a,
                    lda,
                    by_cols,
                    b: rhs.0.wrapping_add(j0),
                    ldb: rhs.1,
                    c: p.dst.wrapping_add(j0),
                    ldc: p.dst_rs,
                    cols,
                    accumulate: p.accumulate,
                    col_max: if col_max.is_null() {
                        col_max
                    } else {
                        col_max.wrapping_add(j0)
                    },
                }
                .rows_from(i0);
                // SAFETY (all): the tile lies inside the product, whose elements the caller
                // promises are in bounds.
                unsafe {
                    match (rows, cols > 16, by_cols) {
                        (ROWS, true, false) => t.run::<ROWS, 2, false>(),
                        (ROWS, false, false) => t.run::<ROWS, 1, false>(),
                        (ROWS, true, true) => t.run::<ROWS, 2, true>(),
                        (ROWS, false, true) => t.run::<ROWS, 1, true>(),
                        (r, true, _) => t.run_short::<2>(r),
                        (r, false, _) => t.run_short::<1>(r),
                    }
                }
                i0 += rows;
            }
            j0 += cols;
        }
    }

    /// One register tile: `c[i][j] (+)= Σ_k a[i][k] · b[k·ldb + j]`, `j < cols`, with `a[i][k]`
    /// at `k·lda + i` if `by_cols`, else at `i·lda + k`.
    #[derive(Clone, Copy)]
    struct Tile {
        k: usize,
        a: *const f32,
        lda: usize,
        by_cols: bool,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
        /// The maxima of this tile's columns, or null.
        col_max: *mut f32,
    }

    impl Tile {
        /// The lanes of column vector `v` that hold columns `< cols`.
        #[inline(always)]
        fn mask(&self, v: usize) -> __mmask16 {
            low_lanes(self.cols.saturating_sub(16 * v))
        }

        /// Fewer than [`ROWS`] rows (a block's last): the largest tile that fits, then the rest.
        #[target_feature(enable = "avx512f")]
        unsafe fn run_short<const V: usize>(&self, rows: usize) {
            let r = match rows {
                8.. => 8,
                4.. => 4,
                2.. => 2,
                1 => 1,
                _ => return,
            };
            // SAFETY (all): r ≤ rows ≤ the rows left, so each call stays inside the tile.
            unsafe {
                match (r, self.by_cols) {
                    (8, false) => self.run::<8, V, false>(),
                    (4, false) => self.run::<4, V, false>(),
                    (2, false) => self.run::<2, V, false>(),
                    (1, false) => self.run::<1, V, false>(),
                    (8, true) => self.run::<8, V, true>(),
                    (4, true) => self.run::<4, V, true>(),
                    (2, true) => self.run::<2, V, true>(),
                    _ => self.run::<1, V, true>(),
                }
                self.rows_from(r).run_short::<V>(rows - r);
            }
        }

        /// The same tile from row `i` on.
        fn rows_from(&self, i: usize) -> Tile {
            Tile {
                a: self
                    .a
                    .wrapping_add(if self.by_cols { i } else { i * self.lda }),
                c: self.c.wrapping_add(i * self.ldc),
                ..*self
            }
        }

        /// `R` rows × `V` column vectors, `a` by columns if `C` (= `by_cols`).
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize, const V: usize, const C: bool>(&self) {
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
                        let at = if C {
                            kk * self.lda + i
                        } else {
                            i * self.lda + kk
                        };
                        let av = _mm512_set1_ps(*self.a.add(at));
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
                if !self.col_max.is_null() {
                    for (v, &mask) in masks.iter().enumerate() {
                        let mut mx = acc[0][v];
                        for row in &acc[1..] {
                            mx = _mm512_max_ps(mx, row[v]);
                        }
                        let at = self.col_max.add(16 * v);
                        let old = _mm512_maskz_loadu_ps(mask, at);
                        _mm512_mask_storeu_ps(at, mask, _mm512_max_ps(old, mx));
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
    /// output, fresh and accumulating, the left operand by rows and by columns; the column
    /// maxima of [`product_max`] against the output's.
    #[test]
    fn matches_f64_over_ragged_shapes() {
        for (m, n, k) in [
            (64, 32, 128),
            (23, 17, 9),
            (13, 5, 31),
            (1, 70, 3),
            (12, 48, 40),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a: Vec<f32> = (0..m * lda)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02)
                .collect();
            let b: Vec<f32> = (0..k * ldb)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.03)
                .collect();
            // The same left operand stored by columns, k values m + 3 apart.
            let ldt = m + 3;
            let mut at = vec![f32::NAN; k * ldt];
            for i in 0..m {
                for kk in 0..k {
                    at[kk * ldt + i] = a[i * lda + kk];
                }
            }
            let lhs = [Lhs::Rows(a.as_ptr(), lda), Lhs::Cols(at.as_ptr(), ldt)];
            for (accumulate, lhs) in [false, true]
                .into_iter()
                .flat_map(|acc| lhs.map(|l| (acc, l)))
            {
                let c0: Vec<f32> = (0..m * ldc).map(|i| (i % 11) as f32 * 0.5).collect();
                let mut c = c0.clone();
                let p = Product {
                    mnk: [m, n, k],
                    dst: c.as_mut_ptr(),
                    dst_rs: ldc,
                    accumulate,
                    scale: 1.0,
                };
                let max0: Vec<f32> = (0..n + 2)
                    .map(|j| if j % 3 == 0 { f32::NEG_INFINITY } else { 0.3 })
                    .collect();
                let mut col_max = max0.clone();
                // SAFETY: the operands and output hold every element of these shapes.
                unsafe { product_max(p, lhs, (b.as_ptr(), ldb), &mut col_max) };
                for j in 0..n + 2 {
                    let want = if j < n {
                        (0..m).map(|i| c[i * ldc + j]).fold(max0[j], f32::max)
                    } else {
                        max0[j]
                    };
                    assert_eq!(col_max[j], want, "[{m}x{n}x{k}] column {j}'s maximum");
                }
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
                        let want = dot
                            + if accumulate {
                                f64::from(c0[i * ldc + j])
                            } else {
                                0.0
                            };
                        assert!(
                            (f64::from(got) - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "[{m}x{n}x{k}] acc {accumulate} by cols {} ({i}, {j}): {got} vs {want}",
                            matches!(lhs, Lhs::Cols(..))
                        );
                    }
                }
            }
        }
    }
}
