//! A convolution as one matrix product over its gathered taps (im2col), for f16/bf16 on the GPU
//! backends.
//!
//! Why: Burn 0.21's cubecl backends accumulate a half-precision matmul in f32 (cubek's
//! `MatmulElems::from_globals`), but their direct convolution kernel — which the autotuner
//! picks wherever no tensor-core kernel launches (Mesa lavapipe, small shapes) — keeps its
//! running sum in f16. A UNet 3×3 over 320 channels sums 2,880 products per output; in f16 that
//! made the tiny SD pipeline's f16 error 8–10× the CPU's. Gathering the taps costs one
//! `[N, Ck², H', W']` copy per call, so it is done in row bands of at most [`BAND_BYTES`].

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Most bytes one band's gathered taps may take (SD's UNet at 512² needs 94 MB at most; an f16
/// VAE at 512² would need 1.2 GB for its last level in one piece).
const BAND_BYTES: usize = 128 << 20;

/// `conv2d(x, weight, bias)` with `weight` `[O, C, k, k]`, `stride` on both axes and zero
/// `padding` (top, left, bottom, right); groups and dilation 1.
pub fn conv2d_gemm<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: [usize; 4],
) -> Tensor<B, 4> {
    banded(x, weight, bias, stride, padding, BAND_BYTES)
}

/// [`conv2d_gemm`] with a given band budget (the tests force several bands).
fn banded<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    [top, left, bottom, right]: [usize; 4],
    band_bytes: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [o, _, k, _] = weight.dims();
    let (hp, wp) = (h + top + bottom, w + left + right);
    let (oh, ow) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
    // Pad so that every tap's stride·out rows and columns exist (a stride that does not divide
    // the padded size leaves up to stride-1 extra zeros, which no output reads).
    let (extra_h, extra_w) = ((k - 1 + stride * oh) - hp, (k - 1 + stride * ow) - wp);
    let x = if top + left + bottom + right + extra_h + extra_w > 0 {
        // Not `Tensor::pad`: Burn 0.21 fills its canvas in the default float dtype, and the
        // fused backends then refuse the f16 slice-assign (DTypeMismatch).
        let canvas = Tensor::zeros([n, c, hp + extra_h, wp + extra_w], (&x.device(), x.dtype()));
        canvas.slice_assign([0..n, 0..c, top..top + h, left..left + w], x)
    } else {
        x
    };
    // [O, C, k, k] read as [1, O, Ck²] in place: the gathered rows are channel-major too.
    let w2 = weight.reshape([1, o, c * k * k]);
    let row_bytes = n * k * k * c * ow * x.dtype().size();
    let band = (band_bytes / row_bytes.max(1)).clamp(1, oh);
    let mut outs = Vec::with_capacity(oh.div_ceil(band));
    for r0 in (0..oh).step_by(band) {
        let rows = band.min(oh - r0);
        let xb = x.clone().narrow(2, r0 * stride, stride * rows + k - 1);
        let cols = gather_taps(xb, k, stride, rows, ow).reshape([n, c * k * k, rows * ow]);
        outs.push(w2.clone().matmul(cols).reshape([n, o, rows, ow]));
    }
    // One band (the usual case) is the output itself: `cat` would copy it.
    let y = match outs.len() {
        1 => outs.remove(0),
        _ => Tensor::cat(outs, 2),
    };
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1]),
        None => y,
    }
}

/// `[N, C, s·rows + k - 1, s·ow + k - 1]` → `[N, C, k², rows, ow]` (c, ky, kx), the order of
/// the weight's `[C, k, k]`, so that the weight needs no re-layout.
fn gather_taps<B: Backend>(
    x: Tensor<B, 4>,
    k: usize,
    stride: usize,
    rows: usize,
    ow: usize,
) -> Tensor<B, 5> {
    let [n, c, _, _] = x.dims();
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        for kx in 0..k {
            let tap = x
                .clone()
                .narrow(2, ky, stride * rows)
                .narrow(3, kx, stride * ow);
            let tap = if stride == 1 {
                tap
            } else {
                // Every stride-th row and column: split each axis into (out, phase), keep phase 0.
                tap.reshape([n * c * rows, stride, ow, stride])
                    .narrow(1, 0, 1)
                    .narrow(3, 0, 1)
                    .reshape([n, c, rows, ow])
            };
            taps.push(tap);
        }
    }
    match taps.len() {
        // A 1×1 kernel's one tap is a view of `x`: `stack` would copy it.
        1 => taps.remove(0).unsqueeze_dim(2),
        _ => Tensor::stack(taps, 2),
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::PaddedConvOptions;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    /// The gathered-taps GEMM against Burn's convolution: 3×3 same, stride 2 with SD's
    /// asymmetric (0, 1) padding and with odd sizes, 1×1, k = 5; in one band and in bands of
    /// one output row.
    #[test]
    fn gemm_conv_matches_burn_conv() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for &(batch, c, o, h, w, k, stride, pad) in &[
            (2, 5, 7, 9, 11, 3, 1, [1, 1, 1, 1]),
            (1, 4, 6, 8, 8, 3, 2, [0, 0, 1, 1]),
            (2, 3, 4, 9, 7, 3, 2, [1, 1, 1, 1]),
            (1, 6, 3, 5, 4, 1, 1, [0, 0, 0, 0]),
            (1, 2, 3, 10, 9, 5, 1, [2, 2, 2, 2]),
        ] {
            let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d);
            let wt = Tensor::<Flex, 4>::random([o, c, k, k], n, &d);
            let b = Tensor::<Flex, 1>::random([o], n, &d);
            let [t, l, bo, r] = pad;
            let options = PaddedConvOptions::asymmetric([stride; 2], [t, l], [bo, r], [1, 1], 1);
            let want = conv2d(x.clone(), wt.clone(), Some(b.clone()), options);
            // One band, and one output row per band.
            for budget in [BAND_BYTES, 1] {
                let got = banded(x.clone(), wt.clone(), Some(b.clone()), stride, pad, budget);
                assert_eq!(
                    got.dims(),
                    want.dims(),
                    "{batch}x{c}x{h}x{w} k{k} s{stride}"
                );
                let err: f32 = (got - want.clone()).abs().max().into_scalar();
                assert!(
                    err < 1e-4,
                    "{batch}x{c}x{h}x{w} k{k} s{stride} budget {budget}: max |diff| {err}"
                );
            }
        }
    }
}
