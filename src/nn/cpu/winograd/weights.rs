//! The weight side: `U = G g Gᵀ` for every output channel, each variant supplying its `G`.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::nn::cpu::{PackedA, Unfilled, Widen};

/// `U[ξ][o][c]` from the `[O, C, 3, 3]` weight `w` (f32, f16 or bf16, any strides): per output
/// channel, its 9 taps are gathered as rows over the input channels ([`gather_taps`]), then
/// transformed 16 channels at a time. (Transforming channel by channel, with 16 scattered
/// stores each, cost as much as the bf16 GEMMs of a 640-channel 32×32 convolution.)
///
/// `taps_of(taps, c, out)` is the variant's transform of one channel's taps into its
/// `positions` rows of `U`.
pub(super) fn transform_weights(
    w: &FlexTensor,
    o: usize,
    c: usize,
    positions: usize,
    taps_of: impl Fn(&[f32], usize, &mut [&mut [f32]]) + Sync,
) -> Vec<f32> {
    let mut u = Unfilled::new(positions * o * c);
    let u_ptr = u.ptr();
    (0..o)
        .into_par_iter()
        .for_each_init(Vec::new, |taps: &mut Vec<f32>, oi| {
            let u_ptr = u_ptr;
            gather_taps(w, oi, c, taps);
            let mut rows: Vec<&mut [f32]> = (0..positions)
                // SAFETY: rows (ξ, oi) of u, c long each; each oi is written by one task.
                .map(|xi| unsafe {
                    std::slice::from_raw_parts_mut(u_ptr.0.add((xi * o + oi) * c), c)
                })
                .collect();
            taps_of(taps, c, &mut rows);
        });
    // SAFETY: every output channel's task writes its row of every transform position.
    unsafe { u.filled() }
}

/// [`transform_weights`] packed for the bf16 GEMM as it is made, one operand per position:
/// each output channel's rows go from the worker's cache straight into the packed strips
/// (the f32 `U` and its packing pass had been 6% of a bf16 SD UNet step's samples; the step
/// went 2.45 -> 2.41 s, 3 alternated pairs).
pub(super) fn transform_weights_packed(
    w: &FlexTensor,
    o: usize,
    c: usize,
    positions: usize,
    taps_of: impl Fn(&[f32], usize, &mut [&mut [f32]]) + Sync,
) -> Vec<PackedA> {
    PackedA::build_rows(positions, o, c, Vec::new, |taps, oi, rows| {
        gather_taps(w, oi, c, taps);
        taps_of(taps, c, rows);
    })
}

/// Output channel `oi`'s 9 taps `[kh][kw]` of `w` as rows of its `c` input channels, in f32.
/// A tap's row is converted or copied as a slice where the channels are contiguous
/// (`Conv2d`'s `[k, k, O, C]` layout): element by element it was 5% of a 640-channel 32×32
/// convolution's samples (12.8 -> 11.8 ms, medians of 4 alternated pairs, 2 Xeon cores).
fn gather_taps(w: &FlexTensor, oi: usize, c: usize, taps: &mut Vec<f32>) {
    let st = w.layout().strides();
    let (so, sc, sh, sw) = (st[0], st[1], st[2], st[3]);
    let w0 = w.layout().start_offset() as isize;
    taps.resize(9 * c, 0.0);
    for (t, row) in taps.chunks_exact_mut(c).enumerate() {
        let base = w0 + oi as isize * so + (t / 3) as isize * sh + (t % 3) as isize * sw;
        let at = |ci: usize| (base + ci as isize * sc) as usize;
        match w.dtype() {
            DType::BF16 if sc == 1 => {
                half::bf16::widen(&w.storage::<half::bf16>()[at(0)..at(0) + c], row)
            }
            DType::BF16 => {
                let ws = w.storage::<half::bf16>();
                row.iter_mut()
                    .enumerate()
                    .for_each(|(ci, r)| *r = ws[at(ci)].to_f32());
            }
            DType::F16 if sc == 1 => {
                half::f16::widen(&w.storage::<half::f16>()[at(0)..at(0) + c], row)
            }
            DType::F16 => {
                let ws = w.storage::<half::f16>();
                row.iter_mut()
                    .enumerate()
                    .for_each(|(ci, r)| *r = ws[at(ci)].to_f32());
            }
            _ if sc == 1 => row.copy_from_slice(&w.storage::<f32>()[at(0)..at(0) + c]),
            _ => {
                let ws = w.storage::<f32>();
                row.iter_mut()
                    .enumerate()
                    .for_each(|(ci, r)| *r = ws[at(ci)]);
            }
        }
    }
}

/// A variant's `G` (N×3), the weight transform's half, applied to three values.
pub(super) trait WeightTransform<const N: usize> {
    fn g(v: [f32; 3]) -> [f32; N];
}

/// `U = G g Gᵀ` for `c` channels at once: `taps` holds the 9 taps `g[kh][kw]` as rows of `c`,
/// `out[N·i + j]` (N² rows) receives `U[i][j]` per channel. `G` over the columns of `g`, then
/// over the rows, in lanes of 16 channels held in arrays and copied out whole (stored value
/// by value into the N² slices it stayed scalar).
#[inline(always)]
pub(super) fn transform_taps_with<T: WeightTransform<N>, const N: usize>(
    taps: &[f32],
    c: usize,
    out: &mut [&mut [f32]],
) {
    const L: usize = 16;
    for c0 in (0..c).step_by(L) {
        let len = L.min(c - c0);
        let g: [[f32; L]; 9] = std::array::from_fn(|t| {
            let mut v = [0.0f32; L];
            v[..len].copy_from_slice(&taps[t * c + c0..t * c + c0 + len]);
            v
        });
        // G g: each column kw of g through G (N rows of lanes per column).
        let cols: [[[f32; L]; N]; 3] = std::array::from_fn(|kw| {
            let [a, b, d] = [&g[kw], &g[3 + kw], &g[6 + kw]];
            let mut r = [[0.0f32; L]; N];
            for l in 0..L {
                let v = T::g([a[l], b[l], d[l]]);
                for i in 0..N {
                    r[i][l] = v[i];
                }
            }
            r
        });
        // · Gᵀ over each row i.
        for i in 0..N {
            let mut rows = [[0.0f32; L]; N];
            for l in 0..L {
                let row = T::g([cols[0][i][l], cols[1][i][l], cols[2][i][l]]);
                for j in 0..N {
                    rows[j][l] = row[j];
                }
            }
            for (j, row) in rows.iter().enumerate() {
                out[N * i + j][c0..c0 + len].copy_from_slice(&row[..len]);
            }
        }
    }
}
