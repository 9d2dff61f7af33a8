//! Small layers with PyTorch parameter names (`weight`, `bias`) and PyTorch layouts, so
//! checkpoint keys map onto module paths without renaming or transposing at load time.
//!
//! Parameters start uninitialised (lazy zeros): the loader replaces every one of them, and a
//! full-size model must not cost its size in RAM twice while loading.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

mod conv;
mod conv_gemm;
#[cfg(feature = "cpu")]
mod cpu;
mod ops;

pub use conv::Conv2d;
pub use ops::*;

fn zeros<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    Initializer::Zeros.init(shape, device)
}

/// `y = x Wᵀ + b`. Checkpoints hold `W` as PyTorch does, `[out, in]`, and that is the shape the
/// loader checks; on load the weight is stored transposed and contiguous, `[in, out]`, because
/// multiplying by a transposed *view* makes Flex copy `W` on every call.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// A contiguous copy of `t` transposed (once, at load time).
fn transposed_copy<B: Backend>(t: Tensor<B, 2>) -> Tensor<B, 2> {
    let (device, dtype) = (t.device(), t.dtype());
    Tensor::from_data(t.transpose().into_data(), (&device, dtype))
}

impl<B: Backend> Linear<B> {
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        let weight = zeros([d_out, d_in], device)
            .init_mapper(|t| t.transpose())
            .load_mapper(transposed_copy);
        Self {
            weight,
            bias: bias.then(|| zeros([d_out], device)),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_impl(x, None)
    }

    /// `self.forward(x) + residual` (same shape as the output); on the CPU backend the GEMM
    /// accumulates onto the residual instead of a separate add.
    pub fn forward_add<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.forward_impl(x, Some(residual))
    }

    /// `geglu(self.forward(x))`; on the CPU backend fused, without the `2I`-wide intermediate.
    pub fn forward_geglu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        #[cfg(feature = "cpu")]
        if let Some((fx, w, b)) = self.flex_operands(&x)
            && self.weight.dims()[1].is_multiple_of(2)
        {
            return cpu::from_flex(cpu::linear_geglu(&fx, &w, b.as_ref()));
        }
        geglu(self.forward(x))
    }

    /// `x`, the weight and the bias as f32 Flex tensors, when all of them are: what the CPU
    /// kernels take.
    #[cfg(feature = "cpu")]
    fn flex_operands<const D: usize>(
        &self,
        x: &Tensor<B, D>,
    ) -> Option<(
        burn_flex::FlexTensor,
        burn_flex::FlexTensor,
        Option<burn_flex::FlexTensor>,
    )> {
        let (fx, w) = (cpu::to_flex(x)?, cpu::to_flex(&self.weight.val())?);
        let b = match &self.bias {
            Some(b) => Some(cpu::to_flex(&b.val())?),
            None => None,
        };
        Some((fx, w, b))
    }

    fn forward_impl<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        #[cfg(feature = "cpu")]
        if let Some((fx, w, b)) = self.flex_operands(&x) {
            let r = residual.as_ref().and_then(cpu::to_flex);
            let out_dims = {
                let mut d = x.dims();
                d[D - 1] = self.weight.dims()[1];
                d
            };
            let r_ok = residual.as_ref().is_none_or(|r| r.dims() == out_dims);
            if r.is_some() == residual.is_some() && r_ok {
                return cpu::from_flex(cpu::linear(&fx, &w, b.as_ref(), r.as_ref()));
            }
        }
        let y = x.matmul(self.weight.val().unsqueeze::<D>());
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze::<D>(),
            None => y,
        };
        match residual {
            Some(r) => y + r,
            None => y,
        }
    }
}

/// GroupNorm over `[N, C, H, W]` (or any rank ≥ 3 with channels at dim 1).
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub num_groups: usize,
    pub eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn new(num_groups: usize, channels: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: zeros([channels], device),
            bias: zeros([channels], device),
            num_groups,
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(x, false)
    }

    /// `silu(self.forward(x))`, fused on the CPU backend.
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_act(x, true)
    }

    fn forward_act(&self, x: Tensor<B, 4>, act: bool) -> Tensor<B, 4> {
        #[cfg(feature = "cpu")]
        if let (Some(fx), Some(g), Some(b)) = (
            cpu::to_flex(&x),
            cpu::to_flex(&self.weight.val()),
            cpu::to_flex(&self.bias.val()),
        ) {
            let y = cpu::group_norm(&fx, self.num_groups, self.eps, &g, &b, act);
            return cpu::from_flex(y);
        }
        let y = self.forward_generic(x);
        if act { silu(y) } else { y }
    }

    fn forward_generic(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        // Statistics in f32 even for f16 models: f16 sums over 40k values lose the mean.
        let dtype = x.dtype();
        let xg = x
            .cast(DType::F32)
            .reshape([n, self.num_groups, (c / self.num_groups) * h * w]);
        let xg = xg.clone() - mean_last(xg);
        let var = mean_last(xg.clone() * xg.clone());
        let xg = xg / (var + self.eps).sqrt();
        let x = xg.reshape([n, c, h, w]).cast(dtype);
        x * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// Longest row [`mean_last`] hands to one reduction.
const REDUCE_CHUNK: usize = 4096;

/// Mean over the last dimension (kept, size 1) of `[A, B, L]`, as means of equal chunks of at
/// most [`REDUCE_CHUNK`] elements, then the mean of those.
///
/// Why not `mean_dim(2)`: with Burn 0.21's wgpu backend on Mesa lavapipe, `sum_dim`/`mean_dim`
/// over rows longer than 65,536 elements silently drop elements once a reduction reaches 2^18
/// of them (`Tensor::<Wgpu, 2>::from_data` of a `[4, 131072]` tensor: `.sum_dim(1)` gives rows
/// 2 and 3 as 0; `[1, 300000]` sums only the first 262,144), with and without fusion; and even
/// where it is right, it sums a row sequentially in f32 (relative error ~1e-3 at 65,536
/// elements). GroupNorm at 256×256 and more (the VQGAN's last level, SD's VAE at 512×512) has
/// such rows. Chunks keep every reduction short and the sum pairwise-like on every backend.
fn mean_last<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [a, b, l] = x.dims();
    if l <= REDUCE_CHUNK {
        return x.mean_dim(2);
    }
    match (2..=REDUCE_CHUNK).rev().find(|k| l.is_multiple_of(*k)) {
        Some(k) => mean_last(
            x.reshape([a, b * (l / k), k])
                .mean_dim(2)
                .reshape([a, b, l / k]),
        ),
        // A prime length (never a GroupNorm's in practice): one reduction.
        None => x.mean_dim(2),
    }
}

/// LayerNorm over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(d: usize, eps: f64, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: zeros([d], device),
            bias: bias.then(|| zeros([d], device)),
            eps,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        #[cfg(feature = "cpu")]
        if let (Some(fx), Some(g)) = (cpu::to_flex(&x), cpu::to_flex(&self.weight.val())) {
            let b = self.bias.as_ref().and_then(|b| cpu::to_flex(&b.val()));
            if b.is_some() == self.bias.is_some() {
                return cpu::from_flex(cpu::layer_norm(&fx, Some(&g), b.as_ref(), self.eps));
            }
        }
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = ((x - mean) / (var + self.eps).sqrt()).cast(dtype);
        let x = x * self.weight.val().unsqueeze::<D>();
        match &self.bias {
            Some(b) => x + b.val().unsqueeze::<D>(),
            None => x,
        }
    }
}

/// Token embedding table `[vocab, d]`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    pub fn new(n: usize, d: usize, device: &B::Device) -> Self {
        Self {
            weight: zeros([n, d], device),
        }
    }

    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}

/// 3×3 convolution, stride 1, padding 1: the workhorse of UNet and VAE.
pub fn conv3x3<B: Backend>(c_in: usize, c_out: usize, device: &B::Device) -> Conv2d<B> {
    Conv2d::new(c_in, c_out, 3, 1, [1; 4], device)
}

/// 1×1 convolution.
pub fn conv1x1<B: Backend>(c_in: usize, c_out: usize, device: &B::Device) -> Conv2d<B> {
    Conv2d::new(c_in, c_out, 1, 1, [0; 4], device)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::activation::gelu;

    use super::*;

    /// Linear with and without bias, with and without a fused residual, against plain ops.
    #[test]
    fn linear_forward_add_matches_plain_ops() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<Flex, 3>::random([2, 5, 7], n, &d);
        let w = Tensor::<Flex, 2>::random([7, 3], n, &d);
        let b = Tensor::<Flex, 1>::random([3], n, &d);
        let r = Tensor::<Flex, 3>::random([2, 5, 3], n, &d);
        for bias in [None, Some(b)] {
            let lin = Linear {
                weight: Param::from_tensor(w.clone()),
                bias: bias.clone().map(Param::from_tensor),
            };
            let mut want = x.clone().matmul(w.clone().unsqueeze::<3>());
            if let Some(b) = &bias {
                want = want + b.clone().unsqueeze::<3>();
            }
            for (got, want) in [
                (lin.forward(x.clone()), want.clone()),
                (lin.forward_add(x.clone(), r.clone()), want + r.clone()),
            ] {
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "max |diff| {err}");
            }
        }
    }

    /// The fused GEGLU projection against plain ops, on shapes that split into several
    /// partial tiles (300 rows, 2·70 columns) and with a tiny one.
    #[test]
    fn linear_geglu_matches_plain_ops() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        for [m, k, inner] in [[300, 9, 70], [1, 3, 1]] {
            let x = Tensor::<Flex, 3>::random([1, m, k], n, &d);
            let w = Tensor::<Flex, 2>::random([k, 2 * inner], n, &d);
            let b = Tensor::<Flex, 1>::random([2 * inner], n, &d);
            for bias in [None, Some(b)] {
                let lin = Linear {
                    weight: Param::from_tensor(w.clone()),
                    bias: bias.clone().map(Param::from_tensor),
                };
                let mut h = x.clone().matmul(w.clone().unsqueeze::<3>());
                if let Some(b) = &bias {
                    h = h + b.clone().unsqueeze::<3>();
                }
                let want = h.clone().narrow(2, 0, inner) * gelu(h.narrow(2, inner, inner));
                let got = lin.forward_geglu(x.clone());
                assert_eq!(got.dims(), [1, m, inner]);
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "[{m},{k},{inner}] max |diff| {err}");
            }
        }
    }
}
