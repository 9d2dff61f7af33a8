//! `Conv2d` with PyTorch parameter names and layout (`weight` `[O, C, k, k]`, `bias` `[O]`).
//!
//! Burn's own `Conv2d` module would do, but its forward cannot be routed: the stride-1 "same"
//! convolutions that are most of a UNet step go to the CPU kernel in `cpu::conv_same`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d as conv2d_op;
use burn::tensor::ops::PaddedConvOptions;

use super::zeros;

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

    fn forward_impl(&self, x: Tensor<B, 4>, add: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        #[cfg(feature = "cpu")]
        {
            use super::cpu::{conv_same, from_flex, to_flex};
            if is_same(self.weight.dims()[2], self.stride, self.padding)
                && let (Some(fx), Some(w)) = (to_flex(&x), to_flex(&self.weight.val()))
            {
                let b = self.bias.as_ref().and_then(|b| to_flex(&b.val()));
                let a = add.as_ref().and_then(to_flex);
                if b.is_some() == self.bias.is_some()
                    && a.is_some() == add.is_some()
                    && let Some(y) = conv_same(&fx, &w, b.as_ref(), a.as_ref())
                {
                    return from_flex(y);
                }
            }
        }
        let y = self.forward_generic(x);
        match add {
            Some(a) => y + a,
            None => y,
        }
    }

    fn forward_generic(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
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
}
