//! GroupNorm and LayerNorm with PyTorch's parameter names; statistics in f32 for f16 models.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::super::kernels;
use super::super::ops::silu;
use super::zeros;

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

    /// `self.forward(x)`, then SiLU if `act`.
    pub(crate) fn forward_act(&self, x: Tensor<B, 4>, act: bool) -> Tensor<B, 4> {
        let (g, b) = (&self.weight.val(), &self.bias.val());
        if let Some(y) = kernels::group_norm(&x, self.num_groups, self.eps, g, b, act) {
            return y;
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
        let (g, b) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        if let Some(y) = kernels::layer_norm(&x, Some(&g), b.as_ref(), self.eps) {
            return y;
        }
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = ((x - mean) / (var + self.eps).sqrt()).cast(dtype);
        let x = x * g.unsqueeze::<D>();
        match b {
            Some(b) => x + b.unsqueeze::<D>(),
            None => x,
        }
    }
}
