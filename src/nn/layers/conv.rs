//! `Conv2d` with PyTorch parameter names and layout (`weight` `[O, C, k, k]`, `bias` `[O]`).
//!
//! Burn's own `Conv2d` module would do, but its forward cannot be routed: the stride-1 "same"
//! convolutions that are most of a UNet step, and its stride-2 ones, go to the CPU kernels of
//! `cpu::conv`, and f16 ones on the GPU backends to `gpu::conv2d_gemm` (both chosen in
//! `nn::kernels`).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d as conv2d_op, interpolate};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PaddedConvOptions};
use burn::tensor::{DType, Tensor};

use super::super::kernels::{self, ConvInput};
use super::{GroupNorm, zeros};

#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    /// Zero padding as (top, left, bottom, right).
    pub padding: [usize; 4],
}

impl<B: Backend> Conv2d<B> {
    /// A square `kernel`×`kernel` convolution with a bias; `padding` is (top, left, bottom,
    /// right).
    pub fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: [usize; 4],
        device: &B::Device,
    ) -> Self {
        let weight = zeros([c_out, c_in, kernel, kernel], device);
        let weight = kernels::conv_weight_param(weight, kernel, stride, padding);
        Self {
            weight,
            bias: Some(zeros([c_out], device)),
            stride,
            padding,
        }
    }

    /// A convolution from given tensors, laid out as a loaded one would be.
    pub fn from_tensors(
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        stride: usize,
        padding: [usize; 4],
    ) -> Self {
        let weight = kernels::conv_weight(weight, stride, padding);
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            stride,
            padding,
        }
    }

    /// The dtype this layer's input and output are in: its bias's, which loaders keep in the
    /// activations' dtype, where the weight may be held otherwise (bf16 or f16 under f32 on
    /// the CPU); without a bias, the weight's as [`kernels::compute_dtype`] reads it.
    pub fn compute_dtype(&self) -> burn::tensor::DType {
        match &self.bias {
            Some(b) => b.val().dtype(),
            None => kernels::compute_dtype::<B>(self.weight.val().dtype()),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_impl(x, None)
    }

    /// `self.forward(x) + add`, where `add` is shaped as the output (a residual) or
    /// `[N, O, 1, 1]` (per image and channel); fused into the CPU kernel's output pass.
    pub fn forward_add(&self, x: Tensor<B, 4>, add: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_impl(x, Some(add))
    }

    /// `self.forward_add(norm.forward(x), add)`, with SiLU after the norm if `silu` (and no
    /// add for `None`). The CPU kernel normalises the input rows as it reads them, so the
    /// normalised tensor (as big as `x`) is never made; same bits as the unfused layers.
    pub fn forward_norm(
        &self,
        norm: &GroupNorm<B>,
        silu: bool,
        x: Tensor<B, 4>,
        add: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (gamma, beta) = (norm.weight.val(), norm.bias.val());
        let input = ConvInput::Norm {
            groups: norm.num_groups,
            eps: norm.eps,
            gamma: &gamma,
            beta: &beta,
            silu,
        };
        if let Some(y) = self.forward_fused(input, &x, add.as_ref()) {
            return y;
        }
        self.forward_impl(norm.forward_act(x, silu), add)
    }

    /// `self.forward` of `x` upsampled ×2 (nearest neighbour), without making the upsampled
    /// tensor on the CPU.
    pub fn forward_upsample2x(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(y) = self.forward_fused(ConvInput::Upsample2x, &x, None) {
            return y;
        }
        let [_, _, h, w] = x.dims();
        let up = interpolate(
            x,
            [2 * h, 2 * w],
            InterpolateOptions::new(InterpolateMode::Nearest),
        );
        self.forward(up)
    }

    /// The fused CPU kernel for `input` applied to `x`, where it takes the case.
    fn forward_fused(
        &self,
        input: ConvInput<'_, B>,
        x: &Tensor<B, 4>,
        add: Option<&Tensor<B, 4>>,
    ) -> Option<Tensor<B, 4>> {
        let (w, b) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        let (stride, padding) = (self.stride, self.padding);
        kernels::conv3x3_fused(input, x, &w, b.as_ref(), add, stride, padding)
    }

    fn forward_impl(&self, x: Tensor<B, 4>, add: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let (w, b) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        let (stride, padding) = (self.stride, self.padding);
        if let Some(y) = kernels::conv_shifted(&x, &w, b.as_ref(), add.as_ref(), stride, padding) {
            return y;
        }
        let y = match kernels::conv2d_half(x, &w, b.as_ref(), stride, padding) {
            Ok(y) => y,
            Err(x) => self.forward_generic(x, w, b),
        };
        match add {
            Some(a) => y + a,
            None => y,
        }
    }

    /// Burn's convolution.
    fn forward_generic(
        &self,
        x: Tensor<B, 4>,
        w: Tensor<B, 4>,
        b: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 4> {
        let [top, left, bottom, right] = self.padding;
        let options = PaddedConvOptions::asymmetric(
            [self.stride; 2],
            [top, left],
            [bottom, right],
            [1, 1],
            1,
        );
        // An f16 or bf16 weight under f32 activations (an fp16 file's, or `--precision bf16`,
        // on the CPU) where no kernel took the case (a stride-2 convolution): widened for this
        // call only.
        let w = if w.dtype() == x.dtype() {
            w
        } else if x.dtype() == DType::F32
            && let Some(wide) = kernels::widened(&w)
        {
            wide
        } else {
            w.cast(x.dtype())
        };
        conv2d_op(x, w, b, options)
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::nn::cpu::relayout_conv_weight;

    /// The CPU kernel against Burn's own convolution, on shapes that hit its edge cases:
    /// k = 5, odd widths, a single row band, channel blocks split across tasks, 1×1 planes,
    /// Winograd planes with partial tiles,
    /// the relaid-out weight and a contiguous one, with and without bias.
    #[test]
    fn same_conv_kernel_matches_burn_conv() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for &(batch, c, o, h, w, k, bias) in &[
            (1, 3, 5, 7, 9, 3, true),
            (2, 16, 200, 4, 3, 3, true),
            (1, 8, 12, 1, 1, 3, false),
            (3, 5, 7, 6, 11, 5, true),
            (2, 64, 96, 40, 33, 3, true),
            (2, 24, 40, 9, 13, 1, true),
            // Winograd F(4×4) (k = 3, ≥ 32×32): odd sizes leave partial tiles on both edges;
            // a long channel sum, where its transforms' rounding adds up most.
            (2, 16, 24, 33, 35, 3, true),
            (1, 5, 150, 32, 32, 3, false),
            (1, 640, 8, 34, 32, 3, true),
            // F(4×4) by output-channel blocks from 16×16 planes: partial tiles, output blocks
            // split below 64 with a partial last one, input channels in two pieces (of 528
            // at 16 output channels a block).
            (2, 8, 24, 16, 20, 3, true),
            (2, 600, 200, 17, 23, 3, true),
            // F(2×2) by blocks from 8×8 where the batch has 32 tiles: likewise (at 16 output
            // channels a block, pieces of 1200 input channels); one 8×8 image stays direct.
            (2, 1300, 40, 9, 11, 3, true),
            (1, 4, 3, 8, 8, 3, false),
            (4, 4, 3, 8, 8, 3, false),
        ] {
            let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d);
            let wt = Tensor::<Flex, 4>::random([o, c, k, k], n, &d);
            let b = bias.then(|| Tensor::<Flex, 1>::random([o], n, &d));
            let want = conv2d_op(
                x.clone(),
                wt.clone(),
                b.clone(),
                PaddedConvOptions::asymmetric([1, 1], [k / 2; 2], [k / 2; 2], [1, 1], 1),
            );
            for weight in [wt.clone(), relayout_conv_weight(wt.clone())] {
                let conv = Conv2d {
                    weight: Param::from_tensor(weight),
                    bias: b.clone().map(Param::from_tensor),
                    stride: 1,
                    padding: [k / 2; 4],
                };
                let residual = Tensor::<Flex, 4>::random([batch, o, h, w], n, &d);
                let per_image = Tensor::<Flex, 4>::random([batch, o, 1, 1], n, &d);
                for (what, got, want) in [
                    ("plain", conv.forward(x.clone()), want.clone()),
                    (
                        "+residual",
                        conv.forward_add(x.clone(), residual.clone()),
                        want.clone() + residual,
                    ),
                    (
                        "+per-image bias",
                        conv.forward_add(x.clone(), per_image.clone()),
                        want.clone() + per_image,
                    ),
                ] {
                    assert_eq!(got.dims(), want.dims());
                    let err: f32 = (got - want.clone()).abs().max().into_scalar();
                    let scale: f32 = want.abs().max().into_scalar();
                    // F(4×4)'s transforms scale by up to 8 and 1/24: 1.1e-5 of scale on the
                    // 640-channel case, where F(2×2) and the direct kernel stay under 1e-5.
                    let tol = if k == 3 && h * w >= 16 * 16 {
                        4e-5
                    } else {
                        1e-5
                    };
                    assert!(
                        err <= tol * scale.max(1.0),
                        "{what} {batch}x{c}x{h}x{w} k{k} -> {o}: max |diff| {err} (scale {scale})"
                    );
                }
            }
        }
    }

    /// Stride-2 convolutions (the phase-split kernel) against Burn's: symmetric padding 1 as
    /// SD's downsamplers, VAE encoder's asymmetric (0, 1, 0, 1), odd sizes, k = 5 and 1,
    /// a 1-pixel output, channel blocks split across tasks, with a residual added.
    #[test]
    fn stride2_conv_kernel_matches_burn_conv() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for &(batch, c, o, h, w, k, pad) in &[
            (2, 16, 24, 16, 16, 3, [1; 4]),
            (1, 3, 5, 7, 9, 3, [1; 4]),
            (2, 8, 200, 10, 10, 3, [0, 0, 1, 1]),
            (1, 5, 7, 11, 6, 5, [2, 1, 2, 0]),
            (2, 6, 4, 5, 5, 1, [0; 4]),
            (1, 4, 6, 2, 2, 3, [0, 0, 1, 1]),
        ] {
            let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d);
            let wt = Tensor::<Flex, 4>::random([o, c, k, k], n, &d);
            let b = Tensor::<Flex, 1>::random([o], n, &d);
            let [top, left, bottom, right] = pad;
            let opts =
                PaddedConvOptions::asymmetric([2, 2], [top, left], [bottom, right], [1, 1], 1);
            let want = conv2d_op(x.clone(), wt.clone(), Some(b.clone()), opts);
            let conv = Conv2d::from_tensors(wt, Some(b), 2, pad);
            let residual = Tensor::<Flex, 4>::random(want.dims(), n, &d);
            let got = kernels::conv_shifted(
                &x,
                &conv.weight.val(),
                conv.bias.as_ref().map(|b| b.val()).as_ref(),
                Some(&residual),
                2,
                pad,
            )
            .expect("the stride-2 kernel takes the case");
            let want = want + residual;
            assert_eq!(got.dims(), want.dims());
            let err: f32 = (got - want.clone()).abs().max().into_scalar();
            let scale: f32 = want.abs().max().into_scalar();
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{batch}x{c}x{h}x{w} k{k} pad {pad:?} -> {o}: max |diff| {err} (scale {scale})"
            );
        }
    }

    /// f16 weights (an fp16 checkpoint's, kept as stored) give the bits of the same values in
    /// f32: widened once per call (1×1 over three row bands of two images), per task (3×3 at
    /// 7×7, direct), inside the Winograd weight transforms (by blocks at 8×8 and 16×20, by
    /// tiles at 32×33) and, for Burn's own convolution (stride 2), before the call.
    #[test]
    fn f16_weights_equal_f32_weights() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for (c, o, h, w, k, stride) in [
            (24, 40, 40, 33, 1, 1),
            (16, 24, 7, 7, 3, 1),
            (16, 24, 8, 8, 3, 1),
            (8, 24, 16, 20, 3, 1),
            (8, 24, 32, 33, 3, 1),
            (8, 16, 9, 12, 3, 2),
        ] {
            let x = Tensor::<Flex, 4>::random([2, c, h, w], n, &d);
            let w32 = Tensor::<Flex, 4>::random([o, c, k, k], n, &d)
                .cast(DType::F16)
                .cast(DType::F32);
            let b = Tensor::<Flex, 1>::random([o], n, &d);
            let conv = |weight: Tensor<Flex, 4>| Conv2d {
                weight: Param::from_tensor(relayout_conv_weight(weight)),
                bias: Some(Param::from_tensor(b.clone())),
                stride,
                padding: [k / 2; 4],
            };
            let (c16, c32) = (conv(w32.clone().cast(DType::F16)), conv(w32));
            assert_eq!(
                bits(c16.forward(x.clone())),
                bits(c32.forward(x)),
                "{c}->{o} {h}x{w} k{k} stride {stride}"
            );
        }
    }

    fn bits(t: Tensor<Flex, 4>) -> Vec<u32> {
        let v = t.into_data().to_vec::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// The norm and the upsampling done inside the convolution's input pass give the same bits
    /// as the layers run one after the other, on Winograd planes (odd sizes, partial tiles, a
    /// task spanning several tile rows and one covering part of a row) and on a plane too small
    /// for it (which takes the unfused path), with and without SiLU, bias and residual.
    #[test]
    fn fused_input_passes_match_the_unfused_layers() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for &(batch, c, o, h, w, groups, bias) in &[
            (2, 8, 12, 33, 35, 4, true),
            (1, 6, 5, 32, 300, 2, false),
            // By output-channel blocks: F(2×2) at 9×11 (F(4×4) upsampled to 18×22), and
            // F(4×4) at 17×20 (by tiles upsampled).
            (2, 8, 70, 9, 11, 4, true),
            (1, 6, 20, 17, 20, 2, false),
            (1, 4, 4, 7, 7, 2, true),
        ] {
            let x = Tensor::<Flex, 4>::random([batch, c, h, w], n, &d) * 3.0 + 1.0;
            let norm = GroupNorm {
                weight: Param::from_tensor(Tensor::random([c], n, &d)),
                bias: Param::from_tensor(Tensor::random([c], n, &d)),
                num_groups: groups,
                eps: 1e-6,
            };
            let wt = Tensor::<Flex, 4>::random([o, c, 3, 3], n, &d);
            let b = bias.then(|| Tensor::<Flex, 1>::random([o], n, &d));
            let conv = Conv2d::from_tensors(wt, b, 1, [1; 4]);
            let residual = Tensor::<Flex, 4>::random([batch, o, h, w], n, &d);
            for silu in [true, false] {
                let unfused = conv.forward_add(norm.forward_act(x.clone(), silu), residual.clone());
                let fused = conv.forward_norm(&norm, silu, x.clone(), Some(residual.clone()));
                assert_eq!(fused.dims(), unfused.dims());
                assert!(
                    bits(fused) == bits(unfused),
                    "norm (silu {silu}) {batch}x{c}x{h}x{w} -> {o}"
                );
            }
            let fused = conv.forward_norm(&norm, true, x.clone(), None);
            assert!(bits(fused) == bits(conv.forward(norm.forward_silu(x.clone()))));

            let up = interpolate(
                x.clone(),
                [2 * h, 2 * w],
                InterpolateOptions::new(InterpolateMode::Nearest),
            );
            let fused = conv.forward_upsample2x(x.clone());
            assert_eq!(fused.dims(), [batch, o, 2 * h, 2 * w]);
            assert!(
                bits(fused) == bits(conv.forward(up)),
                "upsample {batch}x{c}x{h}x{w} -> {o}"
            );
        }
    }
}
