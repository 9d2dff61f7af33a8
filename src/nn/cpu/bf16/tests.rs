//! The bf16 GEMM against the same products in f64 from the bf16-rounded operands: edges of
//! every block size, strided and transposed operands, both operand types, accumulate, scale.

use half::bf16;

use super::{Mat, PackedA, Packs, Product, gemm_tile, gemm_widened};

/// The portable path (CPUs without AVX512-BF16), as `gemm_tile` would call it there.
unsafe fn widened(p: Product, lhs: Mat, rhs: Mat) {
    let mut packs = Packs::default();
    // SAFETY: forwarded.
    unsafe { gemm_widened(p, lhs, rhs, &mut packs) }
}

type Gemm = unsafe fn(Product, Mat, Mat);

/// A deterministic spread of values in (-2, 2).
fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 4.0 - 2.0
        })
        .collect()
}

fn round(v: f32) -> f64 {
    bf16::from_f32(v).to_f64()
}

/// The kernel this CPU runs: AMX tiles where it has AMX-BF16 (odd strip counts, padded k
/// blocks), the AVX512-BF16 kernel with `KILN_AMX=off` or without AMX.
#[test]
fn matches_f64_products_of_rounded_operands() {
    check(gemm_tile);
}

#[test]
fn portable_path_matches_f64_products_of_rounded_operands() {
    check(widened);
}

fn check(gemm: Gemm) {
    let shapes = [
        [1, 1, 1],
        [13, 33, 3],
        [12, 32, 256],
        [25, 70, 257],
        [77, 40, 600],
        [3, 100, 1],
        [77, 1, 64],
        [77, 96, 64],
    ];
    for (t, &[m, n, k]) in shapes.iter().enumerate() {
        // case 4: A packed once beforehand (a convolution's weight), from a transposed view;
        // case 5: B stored by columns (attention's Kᵀ).
        for case in 0..6 {
            let (transposed_a, bf16_b, accumulate) =
                (case & 1 == 1 || case == 4, case & 2 == 2, case == 3);
            let a = values(m * k, t as u32 * 7 + case);
            let b = values(k * n, t as u32 * 11 + case + 100);
            let b16: Vec<u16> = b.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            // A stored row-major, or column-major (a transposed view, cs = m).
            let a_store: Vec<f32> = if transposed_a {
                (0..m * k).map(|t| a[(t % m) * k + t / m]).collect()
            } else {
                a.clone()
            };
            let lhs = if transposed_a {
                Mat::F32(a_store.as_ptr(), m as isize, 1)
            } else {
                Mat::F32(a_store.as_ptr(), 1, k as isize)
            };
            let packed = (case == 4).then(|| PackedA::new(lhs, m, k));
            let lhs = packed.as_ref().map_or(lhs, PackedA::mat);
            let b_cols: Vec<f32> = (0..k * n).map(|t| b[(t % k) * n + t / k]).collect();
            let rhs = if case == 5 {
                Mat::F32(b_cols.as_ptr(), k as isize, 1)
            } else if bf16_b {
                Mat::Bf16(b16.as_ptr(), 1, n as isize)
            } else {
                Mat::F32(b.as_ptr(), 1, n as isize)
            };
            let dst_rs = n + 3;
            let start = values(m * dst_rs, 999);
            let mut dst = start.clone();
            // Scale 1 (cases 0, 2, 3) lets whole AMX windows skip the scaled epilogue.
            let scale = if matches!(case, 0 | 2 | 3) { 1.0 } else { 0.5 };
            // SAFETY: every operand is exactly its stated size; dst is m rows of dst_rs.
            let p = Product {
                mnk: [m, n, k],
                dst: dst.as_mut_ptr(),
                dst_rs,
                accumulate,
                scale,
            };
            unsafe { gemm(p, lhs, rhs) };
            for i in 0..m {
                for j in 0..dst_rs {
                    let got = dst[i * dst_rs + j] as f64;
                    if j >= n {
                        assert_eq!(got, start[i * dst_rs + j] as f64, "wrote past column n");
                        continue;
                    }
                    let (mut want, mut mag) = (0.0f64, 0.0f64);
                    for p in 0..k {
                        let prod = round(a[i * k + p]) * round(b[p * n + j]);
                        want += prod;
                        mag += prod.abs();
                    }
                    want *= scale as f64;
                    if accumulate {
                        want += start[i * dst_rs + j] as f64;
                    }
                    // f32 sums of k products: within a few ulps of their magnitude.
                    let tol = 1e-6 * (mag + 1.0) * (k as f64).sqrt().max(1.0);
                    assert!(
                        (got - want).abs() <= tol,
                        "{m}x{n}x{k} case {case} at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
