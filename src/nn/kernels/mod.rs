//! The one place where backend-specific kernels are chosen.
//!
//! Layers and ops call these functions, which take the CPU backend's fused kernels (`cpu`,
//! for f32 Flex tensors) or a GPU backend's own (`gpu`) where they apply and answer `None`
//! (or give the input back) everywhere else: the caller then runs plain Burn ops, so model
//! code stays generic over `B: Backend`. Every `cfg(feature = "cpu")` probe of `nn` is here.
//!
//! Model code does not call this module: it uses the layers and ops of `nn` (and [`run`]).

// Without the `cpu` feature the probes compile away and their operands go unused.
#![cfg_attr(not(feature = "cpu"), allow(unused_variables))]

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

#[cfg(feature = "cpu")]
use super::cpu::{self, from_flex, to_flex};

mod conv;
pub use conv::*;

/// Flex operands of a CPU kernel: each tensor given, when every one of them is f32 Flex.
#[cfg(feature = "cpu")]
fn flex_opt<B: Backend, const D: usize>(
    t: Option<&Tensor<B, D>>,
) -> Option<Option<burn_flex::FlexTensor>> {
    t.map_or(Some(None), |t| to_flex(t).map(Some))
}

/// A Linear's or convolution's weight as the CPU's GEMM kernels take it: f32, f16 (widened as
/// read) or bf16, which makes the layer compute in bf16 (see [`compute_dtype`]).
#[cfg(feature = "cpu")]
fn gemm_weight<B: Backend, const D: usize>(w: &Tensor<B, D>) -> Option<burn_flex::FlexTensor> {
    cpu::to_flex_of(w, &cpu::GEMM_WEIGHTS)
}

/// The dtype of the activations of a model whose GEMM weights (Linear, Conv2d) are stored as
/// `weights` on `B`: the same, except bf16 on the CPU, where the kernels multiply bf16 weights
/// with f32 activations rounded as they are packed and everything between the layers (norms,
/// softmax, residuals) stays f32 (`--precision bf16`).
pub fn compute_dtype<B: Backend>(weights: DType) -> DType {
    #[cfg(feature = "cpu")]
    if weights == DType::BF16 && cpu::is_flex::<B>() {
        return DType::F32;
    }
    weights
}

/// `x W + b (+ residual)` with `W` stored `[in, out]` (`WeightLayout::InOut`), by the CPU's
/// GEMM with the bias and the residual added in its output pass.
pub fn linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
    residual: Option<&Tensor<B, D>>,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let (Some(fx), Some(fw), Some(fb)) = (to_flex(x), gemm_weight(w), flex_opt(bias)) {
        let r = residual.and_then(to_flex);
        let mut out_dims = x.dims();
        out_dims[D - 1] = w.dims()[1];
        let r_ok = residual.is_none_or(|r| r.dims() == out_dims);
        if r.is_some() == residual.is_some() && r_ok {
            return Some(from_flex(cpu::linear(&fx, &fw, fb.as_ref(), r.as_ref())));
        }
    }
    None
}

/// `geglu(x W + b)` with `W` `[in, out]`, fused on the CPU without the `2I`-wide intermediate.
pub fn linear_geglu<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let (Some(fx), Some(fw), Some(fb)) = (to_flex(x), gemm_weight(w), flex_opt(bias))
        && w.dims()[1].is_multiple_of(2)
    {
        return Some(from_flex(cpu::linear_geglu(&fx, &fw, fb.as_ref())));
    }
    None
}

/// `x Wᵀ (+ b)` with `W` `[out, in]` in PyTorch's layout, for f32 inputs on the CPU backend:
/// a few rows (a decode step) read each weight row once, more go through a GEMM that reads W
/// as stored; `W` may be f32 or f16 (an f16 checkpoint kept as stored: half the bytes to
/// stream, same result as widening it at load). `None` where that does not apply (other
/// backends, dtypes), and the caller multiplies as usual.
pub fn matvec_rows<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    w: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    matvec_rows_many(x, [(w, bias)]).map(|[y]| y)
}

/// [`matvec_rows`] of one `x` against several `(W, bias)` in one parallel loop (a layer's
/// q/k/v projections): `None` where any of them does not take the GEMV.
pub fn matvec_rows_many<B: Backend, const D: usize, const N: usize>(
    x: &Tensor<B, D>,
    weights: [(&Tensor<B, 2>, Option<&Tensor<B, 1>>); N],
) -> Option<[Tensor<B, D>; N]> {
    #[cfg(feature = "cpu")]
    if let Some(fx) = to_flex(x)
        && let Some(held) = weights
            .iter()
            .map(|&(w, b)| Some((cpu::to_flex_of(w, &[DType::F32, DType::F16])?, flex_opt(b)?)))
            .collect::<Option<Vec<_>>>()
    {
        let refs: Vec<_> = held.iter().map(|(w, b)| (w, b.as_ref())).collect();
        let outs = cpu::gemv_many(&fx, &refs)?;
        return outs
            .into_iter()
            .map(from_flex)
            .collect::<Vec<_>>()
            .try_into()
            .ok();
    }
    None
}

/// Whether the GEMM and GEMV kernels of backend `B` ([`linear`], the convolutions,
/// [`matvec_rows`]) take f16 weights under f32 activations, widening them as they read them
/// (exact): the CPU backend. A loader then keeps an f16 file's weights f16 in memory.
pub fn reads_f16_weights<B: Backend>() -> bool {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        return true;
    }
    false
}

/// GroupNorm of `x` `[N, C, H, W]` (then SiLU if `silu`), one parallel pass on the CPU.
pub fn group_norm<B: Backend>(
    x: &Tensor<B, 4>,
    groups: usize,
    eps: f64,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    silu: bool,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if let (Some(fx), Some(g), Some(b)) = (to_flex(x), to_flex(gamma), to_flex(beta)) {
        return Some(from_flex(cpu::group_norm(&fx, groups, eps, &g, &b, silu)));
    }
    None
}

/// LayerNorm over the last dimension with an optional scale and shift (DALL·E's norms have
/// only the shift), statistics in f64 lanes on the CPU.
pub fn layer_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: Option<&Tensor<B, 1>>,
    beta: Option<&Tensor<B, 1>>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let (Some(fx), Some(g), Some(b)) = (to_flex(x), flex_opt(gamma), flex_opt(beta)) {
        return Some(from_flex(cpu::layer_norm(&fx, g.as_ref(), b.as_ref(), eps)));
    }
    None
}

/// CLIP's `x · σ(1.702 x)` in one parallel pass on the CPU.
pub fn quick_gelu<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let Some(fx) = to_flex(x) {
        return Some(from_flex(cpu::quick_gelu(&fx)));
    }
    None
}

/// `gelu(gate) · value` (exact GELU) in one parallel pass on the CPU.
pub fn gelu_mul<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    value: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let (Some(g), Some(v)) = (to_flex(gate), to_flex(value)) {
        return cpu::gelu_mul(&g, &v).map(from_flex);
    }
    None
}

/// GEGLU's gating of `h` `[…, 2I]` in one parallel pass on the CPU.
pub fn geglu<B: Backend, const D: usize>(h: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    if let Some(fh) = to_flex(h) {
        return Some(from_flex(cpu::geglu(&fh)));
    }
    None
}

/// `[B, M, N]` → contiguous `[B, N, M]` by a parallel tiled copy on the CPU.
pub fn transpose_last2<B: Backend>(x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "cpu")]
    if let Some(out) = to_flex(x).and_then(|f| cpu::transpose_last2(&f)) {
        return Some(from_flex(out));
    }
    None
}

/// `a` and `b` `[N, C·, H, W]` joined along the channels by a parallel copy on the CPU.
pub fn cat_channels<B: Backend>(a: &Tensor<B, 4>, b: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if let Some(out) = to_flex(a)
        .zip(to_flex(b))
        .and_then(|(a, b)| cpu::cat_channels(&a, &b))
    {
        return Some(from_flex(out));
    }
    None
}

/// Attention with the default `1/√d` scale on the CPU: kiln's one-query kernel for decode
/// steps (one query, not causal; mask or not), its blocked kernel without a mask, whose
/// products are bf16 (f32 sums) if `in_bf16`.
pub fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    masked: Option<&Tensor<B, 4, Bool>>,
    causal: bool,
    in_bf16: bool,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    if let (Some(fq), Some(fk), Some(fv)) = (to_flex(q), to_flex(k), to_flex(v)) {
        // One query, not causal (a decode step): a dot product per key, mask or not.
        let one = || match masked {
            Some(m) => cpu::attention_one(&fq, &fk, &fv, Some(&cpu::to_flex_bool(m)?)),
            None => cpu::attention_one(&fq, &fk, &fv, None),
        };
        let out = (q.dims()[2] == 1 && !causal).then(one).flatten();
        let out = out.or_else(|| {
            masked
                .is_none()
                .then(|| cpu::attention(&fq, &fk, &fv, causal, in_bf16))
                .flatten()
        });
        return out.map(from_flex);
    }
    None
}

/// Whether a decode step attends over only the cache slots written so far (kiln's CPU kernel
/// reads that prefix in place). GPU backends attend over the whole cache, later slots masked,
/// so that every step has the same shapes: cubecl keys its autotune results by shape buckets,
/// and with autotune on lavapipe a kernel tuned at 32 keys was picked at 33 and failed there
/// ("Rhs dimension n=33 must be a multiple of plane size 8", a panic inside cubecl); one shape
/// also compiles once instead of once per step.
pub fn attends_cache_prefix<B: Backend>() -> bool {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        return true;
    }
    false
}

/// `value` `[R, H, 1, D]` written into position `t` of `cache` `[R, H, P, D]` in place on the
/// CPU when the cache is not shared; the cache back as `Err` otherwise.
pub fn write_position<B: Backend>(
    cache: Tensor<B, 4>,
    t: usize,
    value: &Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    #[cfg(feature = "cpu")]
    let cache = match cpu::write_position(cache, t, value) {
        Ok(done) => return Ok(done),
        Err(cache) => cache,
    };
    Err(cache)
}

/// What a stretch of model code run by [`run`] is made of; the backend decides from it how its
/// kernels' threads wait between ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stretch {
    /// Layers of large ops (a text encoder pass, a VQGAN decode).
    Layers,
    /// Many small ops back to back (a DALL·E decode step: ~100 parallel loops of 10–300 µs).
    SmallOps,
}

/// Runs `f`, a stretch of model code, where the backend's kernels run it best.
///
/// On the CPU backend that is a worker thread of the kernels' pool (rayon's global pool). A
/// parallel loop started from a worker costs ~5 µs here; from any other thread (the engine's,
/// the CLI's) ~25 µs, since rayon queues the job, wakes a worker and parks the caller until it
/// is done. A DALL·E decode step runs ~100 such loops. For [`Stretch::SmallOps`] the pool's
/// other workers also spin between the kernels' parallel loops instead of parking (see
/// `cpu::team`), since waking a parked worker costs as much as such a loop; Flex's own
/// parallel ops inside `f` then run on one thread, so only for stretches made of the kernels in
/// `cpu`. Other backends run `f` where they are, on the thread that owns their device streams.
pub fn run<B: Backend, R: Send>(stretch: Stretch, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        // On a pool worker: its host reads are this thread's (see `host::on_behalf`).
        let f = super::host::on_behalf(f);
        return super::host::credit(match stretch {
            Stretch::Layers => rayon::scope(|_| f()),
            Stretch::SmallOps => cpu::with_team(f),
        });
    }
    f()
}
