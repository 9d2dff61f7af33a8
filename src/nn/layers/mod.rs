//! Small layers with PyTorch parameter names (`weight`, `bias`) and PyTorch layouts, so
//! checkpoint keys map onto module paths without renaming or transposing at load time.
//!
//! Parameters start uninitialised (lazy zeros): the loader replaces every one of them, and a
//! full-size model must not cost its size in RAM twice while loading.
//!
//! Each layer calls `nn::kernels` for a backend's own kernel and runs plain Burn ops where it
//! has none.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

mod conv;
mod linear;
mod norm;

pub use conv::Conv2d;
pub use linear::{Linear, WeightLayout};
pub use norm::{GroupNorm, LayerNorm};

fn zeros<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Param<Tensor<B, D>> {
    Initializer::Zeros.init(shape, device)
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
