//! `y = x Wᵀ (+ b)` with `W` in PyTorch's `[out, in]` layout, computed as `(W xᵀ)ᵀ`.
//!
//! Why not `crate::nn::Linear`: multiplying by the transposed *view* of W makes Flex (0.21) copy
//! W on every call, which dominates one-token decode steps (measured 1024→16385 with 2 rows:
//! 148 ms per call against 11 ms here). With W as the contiguous left operand nothing is copied
//! but the small result; for 256-row inputs it is as fast as a pre-transposed weight. Decode
//! steps (a few rows) on the CPU take `nn::matvec_rows`, which reads each weight row once.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Dense<B> {
    /// Lazily zero-initialised (the loader replaces every parameter).
    pub fn new(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Zeros.init([d_out, d_in], device),
            bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
        }
    }

    /// `x` `[B, S, in]` → `[B, S, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d_in] = x.dims();
        let w = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(y) = crate::nn::matvec_rows(&x, &w, bias.as_ref()) {
            return y;
        }
        let d_out = w.dims()[0];
        let xt = x.reshape([1, b * s, d_in]).swap_dims(1, 2); // [1, in, B·S]
        let y = w
            .unsqueeze::<3>()
            .matmul(xt)
            .swap_dims(1, 2)
            .reshape([b, s, d_out]);
        match bias {
            Some(bias) => y + bias.unsqueeze::<3>(),
            None => y,
        }
    }
}
