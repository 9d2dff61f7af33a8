//! The convolution probes of [`super`]: the CPU's shifted-GEMM and Winograd kernels, the GPU
//! backends' half-precision im2col GEMM.

// Without the `cpu` feature the probes compile away and their operands go unused.
#![cfg_attr(not(feature = "cpu"), allow(unused_variables))]

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

#[cfg(feature = "cpu")]
use super::super::cpu::{self, from_flex, to_flex};
use super::super::gpu;
#[cfg(feature = "cpu")]
use super::{flex_opt, gemm_weight};

/// What the fused CPU convolution ([`conv3x3_fused`]) does to its input rows as it reads them.
pub enum ConvInput<'a, B: Backend> {
    /// GroupNorm (`groups`, `eps`, affine `gamma`/`beta`), then SiLU if `silu`.
    Norm {
        groups: usize,
        eps: f64,
        gamma: &'a Tensor<B, 1>,
        beta: &'a Tensor<B, 1>,
        silu: bool,
    },
    /// Nearest-neighbour ×2 upsampling.
    Upsample2x,
}

/// Stride 1, odd kernel, padding k/2 on every side (1×1 included): what `cpu::conv_same` takes.
#[cfg(feature = "cpu")]
fn is_same(kernel: usize, stride: usize, padding: [usize; 4]) -> bool {
    stride == 1 && kernel % 2 == 1 && padding == [kernel / 2; 4]
}

/// What the CPU's shifted-GEMM kernels take ([`conv_shifted`]): "same" convolutions and
/// stride-2 ones with an odd kernel and any padding.
#[cfg(feature = "cpu")]
fn is_shifted(kernel: usize, stride: usize, padding: [usize; 4]) -> bool {
    is_same(kernel, stride, padding) || (stride == 2 && kernel % 2 == 1)
}

/// The convolution weight `[O, C, k, k]` as the CPU kernels read it best: held as
/// `[k, k, O, C]` for a k > 1 convolution of the shifted-GEMM kernels on Flex (see
/// `cpu::relayout_conv_weight`), as loaded everywhere else. For a weight given as a tensor.
pub fn conv_weight<B: Backend>(
    w: Tensor<B, 4>,
    stride: usize,
    padding: [usize; 4],
) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    {
        let k = w.dims()[2];
        if cpu::is_flex::<B>() && k > 1 && is_shifted(k, stride, padding) {
            return cpu::relayout_conv_weight(w);
        }
    }
    w
}

/// [`conv_weight`] for a lazily initialised parameter: the re-layout happens when it is loaded.
pub fn conv_weight_param<B: Backend>(
    w: Param<Tensor<B, 4>>,
    kernel: usize,
    stride: usize,
    padding: [usize; 4],
) -> Param<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() && kernel > 1 && is_shifted(kernel, stride, padding) {
        return w.load_mapper(cpu::relayout_conv_weight);
    }
    w
}

/// A convolution of `x` `[N, C, H, W]` by `w` `[O, C, k, k]` (odd k) by the CPU's shifted-GEMM or
/// Winograd kernels, plus `add` (shaped as the output, or `[N, O, 1, 1]`) folded into the
/// output pass: "same" ones (stride 1, padding k/2) and stride-2 ones with any padding. `None`
/// for other cases and backends.
pub fn conv_shifted<B: Backend>(
    x: &Tensor<B, 4>,
    w: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    add: Option<&Tensor<B, 4>>,
    stride: usize,
    padding: [usize; 4],
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if is_shifted(w.dims()[2], stride, padding)
        && let (Some(fx), Some(fw), Some(fb), Some(fa)) =
            (to_flex(x), gemm_weight(w), flex_opt(bias), flex_opt(add))
    {
        let (fb, fa) = (fb.as_ref(), fa.as_ref());
        return match stride {
            1 => cpu::conv_same(&fx, &fw, fb, fa),
            _ => cpu::conv_stride2(&fx, &fw, fb, fa, padding),
        }
        .map(from_flex);
    }
    None
}

/// [`conv_shifted`] (k = 3, stride 1) of `input` applied to `x`, computed inside the CPU
/// Winograd kernel's input pass, so the normalised or upsampled tensor is never made. `None`
/// where that kernel does not take the case.
pub fn conv3x3_fused<B: Backend>(
    input: ConvInput<'_, B>,
    x: &Tensor<B, 4>,
    w: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    add: Option<&Tensor<B, 4>>,
    stride: usize,
    padding: [usize; 4],
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if is_same(w.dims()[2], stride, padding)
        && let (Some(fx), Some(fw), Some(fb), Some(fa)) =
            (to_flex(x), gemm_weight(w), flex_opt(bias), flex_opt(add))
    {
        let norm;
        let input = match input {
            ConvInput::Norm {
                groups,
                eps,
                gamma,
                beta,
                silu,
            } => {
                norm = (to_flex(gamma)?, to_flex(beta)?);
                cpu::Input::Norm {
                    groups,
                    eps,
                    gamma: &norm.0,
                    beta: &norm.1,
                    silu,
                }
            }
            ConvInput::Upsample2x => cpu::Input::Upsample2x,
        };
        return cpu::conv3x3_of(input, &fx, &fw, fb.as_ref(), fa.as_ref()).map(from_flex);
    }
    None
}

/// An f16 or bf16 weight widened to f32 on Flex, in parallel (Flex's own cast is one thread);
/// `None` elsewhere, where the caller casts as usual.
pub fn widened<B: Backend>(w: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if let Some(fw) = gemm_weight(w) {
        return cpu::widened(&fw).map(from_flex);
    }
    None
}

/// `conv2d(x, w, bias)` in half precision on a backend other than Flex (whose f16 convolution
/// is already an im2col GEMM): there, Burn's direct convolution kernel would sum in f16, so it
/// runs as one matmul over the gathered taps (`gpu::conv2d_gemm`). `x` back as `Err` elsewhere.
pub fn conv2d_half<B: Backend>(
    x: Tensor<B, 4>,
    w: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    stride: usize,
    padding: [usize; 4],
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        return Err(x);
    }
    if !matches!(x.dtype(), DType::F16 | DType::BF16) {
        return Err(x);
    }
    Ok(gpu::conv2d_gemm(
        x,
        w.clone(),
        bias.cloned(),
        stride,
        padding,
    ))
}
