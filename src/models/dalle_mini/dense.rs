//! `y = x Wᵀ (+ b)` with `W` in PyTorch's `[out, in]` layout, computed as `(W xᵀ)ᵀ`.
//!
//! Why not `crate::nn::Linear`: multiplying by the transposed *view* of W makes Flex (0.21) copy
//! W on every call, which dominates one-token decode steps (measured 1024→16385 with 2 rows:
//! 148 ms per call against 11 ms here). With W as the contiguous left operand nothing is copied
//! but the small result; for 256-row inputs it is as fast as a pre-transposed weight. That is
//! the path of the GPU backends: on the CPU every call takes `nn::matvec_rows`, a GEMV that
//! reads each weight row once for a decode step's few rows and a GEMM reading W as stored for
//! more (the text encoder, the VQGAN's attention).
//!
//! On the CPU an f16 checkpoint's BART weights stay f16 in memory (`keep_f16`): a decode step
//! streams every weight once, so half the bytes is nearly half the time, and widening f16 to
//! f32 is exact, so the results are those of an f32 load.

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
        // f16 weights under f32 activations (see `keep_f16`): widened for this call only.
        let w = if w.dtype() == x.dtype() {
            w
        } else {
            w.cast(x.dtype())
        };
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

/// `layers[i].forward(x)` for each, as one parallel GEMV over all their weights on the CPU
/// (one loop start and join instead of N; a decode step has 12 layers × (q/k/v, GLU
/// fc0/fc1)).
pub fn forward_many<B: Backend, const N: usize>(
    layers: [&Dense<B>; N],
    x: Tensor<B, 3>,
) -> [Tensor<B, 3>; N] {
    let vals = layers.map(|l| (l.weight.val(), l.bias.as_ref().map(|b| b.val())));
    let refs = std::array::from_fn(|i| (&vals[i].0, vals[i].1.as_ref()));
    crate::nn::matvec_rows_many(&x, refs).unwrap_or_else(|| layers.map(|l| l.forward(x.clone())))
}

/// Whether the loader keeps parameter `path` (as stored, `file` dtype) in f16 where the model
/// computes in f32: the BART projection weights on the CPU backend, whose GEMV and GEMM read
/// f16 directly. Everything else (norms, embeddings, other backends) is widened at load.
pub fn keep_f16<B: Backend>(path: &str, file: burn::tensor::DType) -> bool {
    const DENSE: [&str; 8] = [
        "k_proj", "v_proj", "q_proj", "out_proj", "fc0", "fc1", "fc2", "lm_head",
    ];
    let mut seg = path.rsplit('.');
    file == burn::tensor::DType::F16
        && crate::nn::gemv_reads_f16::<B>()
        && seg.next() == Some("weight")
        && seg.next().is_some_and(|s| DENSE.contains(&s))
}
