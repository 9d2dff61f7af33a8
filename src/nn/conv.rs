//! `Conv2d` with PyTorch parameter names and layout (`weight` `[O, C, k, k]`, `bias` `[O]`).
//!
//! Burn's own `Conv2d` module would do, but its forward cannot be routed: the stride-1 "same"
//! convolutions that are most of a UNet step go to the CPU kernel in `cpu::conv_same`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d as conv2d_op, interpolate};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PaddedConvOptions};
use burn::tensor::{DType, Tensor};

use super::conv_gemm::conv2d_gemm;
#[cfg(feature = "cpu")]
use super::cpu::{self, from_flex, to_flex};
use super::{GroupNorm, zeros};
#[cfg(feature = "cpu")]
use burn_flex::FlexTensor;

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
        #[cfg(feature = "cpu")]
        let weight = if super::cpu::is_flex::<B>() && kernel > 1 && is_same(kernel, stride, padding)
        {
            weight.load_mapper(relayout)
        } else {
            weight
        };
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
        #[cfg(feature = "cpu")]
        let weight = {
            let k = weight.dims()[2];
            if super::cpu::is_flex::<B>() && k > 1 && is_same(k, stride, padding) {
                relayout(weight)
            } else {
                weight
            }
        };
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            stride,
            padding,
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
        #[cfg(feature = "cpu")]
        if let (Some(g), Some(b)) = (to_flex(&norm.weight.val()), to_flex(&norm.bias.val())) {
            let input = cpu::Input::Norm {
                groups: norm.num_groups,
                eps: norm.eps,
                gamma: &g,
                beta: &b,
                silu,
            };
            if let Some(y) = self.forward_cpu(input, &x, add.as_ref()) {
                return y;
            }
        }
        self.forward_impl(norm.forward_act(x, silu), add)
    }

    /// `self.forward` of `x` upsampled ×2 (nearest neighbour), without making the upsampled
    /// tensor on the CPU.
    pub fn forward_upsample2x(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        #[cfg(feature = "cpu")]
        if let Some(y) = self.forward_cpu(cpu::Input::Upsample2x, &x, None) {
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
    #[cfg(feature = "cpu")]
    fn forward_cpu(
        &self,
        input: cpu::Input<'_>,
        x: &Tensor<B, 4>,
        add: Option<&Tensor<B, 4>>,
    ) -> Option<Tensor<B, 4>> {
        let (fx, w, b, a) = self.flex_operands(x, add)?;
        cpu::conv3x3_of(input, &fx, &w, b.as_ref(), a.as_ref()).map(from_flex)
    }

    /// Input, weight, bias and add as Flex tensors, when this is a "same" convolution the CPU
    /// kernels take and every operand given is an f32 Flex tensor.
    #[cfg(feature = "cpu")]
    #[allow(clippy::type_complexity)]
    fn flex_operands(
        &self,
        x: &Tensor<B, 4>,
        add: Option<&Tensor<B, 4>>,
    ) -> Option<(
        FlexTensor,
        FlexTensor,
        Option<FlexTensor>,
        Option<FlexTensor>,
    )> {
        if !is_same(self.weight.dims()[2], self.stride, self.padding) {
            return None;
        }
        let (fx, w) = (to_flex(x)?, to_flex(&self.weight.val())?);
        let b = match &self.bias {
            Some(b) => Some(to_flex(&b.val())?),
            None => None,
        };
        let a = match add {
            Some(a) => Some(to_flex(a)?),
            None => None,
        };
        Some((fx, w, b, a))
    }

    fn forward_impl(&self, x: Tensor<B, 4>, add: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        #[cfg(feature = "cpu")]
        if let Some((fx, w, b, a)) = self.flex_operands(&x, add.as_ref())
            && let Some(y) = cpu::conv_same(&fx, &w, b.as_ref(), a.as_ref())
        {
            return from_flex(y);
        }
        let y = self.forward_generic(x);
        match add {
            Some(a) => y + a,
            None => y,
        }
    }

    fn forward_generic(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if half_on_gpu::<B>(x.dtype()) {
            let bias = self.bias.as_ref().map(|b| b.val());
            return conv2d_gemm(x, self.weight.val(), bias, self.stride, self.padding);
        }
        let [top, left, bottom, right] = self.padding;
        let options = PaddedConvOptions::asymmetric(
            [self.stride; 2],
            [top, left],
            [bottom, right],
            [1, 1],
            1,
        );
        conv2d_op(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            options,
        )
    }
}

/// Half precision on a backend other than Flex (whose f16 convolution is already an im2col
/// GEMM): there, Burn's direct convolution kernel would sum in f16 (see `conv_gemm`).
fn half_on_gpu<B: Backend>(dtype: DType) -> bool {
    #[cfg(feature = "cpu")]
    if super::cpu::is_flex::<B>() {
        return false;
    }
    matches!(dtype, DType::F16 | DType::BF16)
}

#[cfg(feature = "cpu")]
/// Stride 1, odd kernel, padding k/2 on every side (1×1 included): what `cpu::conv_same` takes.
fn is_same(kernel: usize, stride: usize, padding: [usize; 4]) -> bool {
    stride == 1 && kernel % 2 == 1 && padding == [kernel / 2; 4]
}

/// The f32 weight held as [k, k, O, C] in memory, seen through a permuted view with the
/// logical shape [O, C, k, k]: per kernel tap a contiguous O×C matrix that gemm reads in place
/// (1.5x faster on the 8×8 UNet level, where re-packing the weight cost as much as the GEMM).
#[cfg(feature = "cpu")]
fn relayout<B: Backend>(w: Tensor<B, 4>) -> Tensor<B, 4> {
    if w.dtype() != burn::tensor::DType::F32 {
        return w;
    }
    let device = w.device();
    Tensor::<B, 4>::from_data(w.permute([2, 3, 0, 1]).into_data(), &device).permute([2, 3, 0, 1])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

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
            // Winograd (k = 3, ≥ 32×32): odd sizes leave partial tiles on both edges.
            (2, 16, 24, 33, 35, 3, true),
            (1, 5, 150, 32, 32, 3, false),
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
            for weight in [wt.clone(), relayout(wt.clone())] {
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
                    assert!(
                        err <= 1e-5 * scale.max(1.0),
                        "{what} {batch}x{c}x{h}x{w} k{k} -> {o}: max |diff| {err} (scale {scale})"
                    );
                }
            }
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
            (1, 4, 4, 8, 8, 2, true),
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
