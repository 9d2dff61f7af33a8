//! The layers' functional half: activations, the decode cache write, and the layout and
//! attention helpers. Each takes a backend's own kernel where `kernels` has one (the CPU's
//! fused kernels on Flex) and runs plain Burn ops everywhere else.

use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::kernels;

pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::silu(x)
}

/// CLIP's activation: `x · σ(1.702 x)`.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(y) = kernels::quick_gelu(&x) {
        return y;
    }
    x.clone() * sigmoid(x * 1.702)
}

/// The exact (erf) GELU PyTorch uses by default.
pub fn gelu_exact<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    gelu(x)
}

/// `gelu(gate) · value` (the exact GELU), one fused pass on the CPU.
pub fn gelu_mul<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    value: Tensor<B, D>,
) -> Tensor<B, D> {
    if let Some(y) = kernels::gelu_mul(&gate, &value) {
        return y;
    }
    gelu_exact(gate) * value
}

/// LayerNorm over the last dimension with a scale of 1 and a `bias` (DALL·E's bias-only
/// norms), statistics in f32 for f16 inputs.
pub fn bias_layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    bias: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    if let Some(y) = kernels::layer_norm(&x, None, Some(&bias), eps) {
        return y;
    }
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    ((x - mean) / (var + eps).sqrt()).cast(dtype) + bias.unsqueeze::<D>()
}

/// GEGLU's gating: `h` `[…, 2I]` → `value · gelu(gate)` `[…, I]`, value first (diffusers).
pub fn geglu<B: Backend, const D: usize>(h: Tensor<B, D>) -> Tensor<B, D> {
    if let Some(y) = kernels::geglu(&h) {
        return y;
    }
    let inner = h.dims()[D - 1] / 2;
    let value = h.clone().narrow(D - 1, 0, inner);
    let gate = h.narrow(D - 1, inner, inner);
    value * gelu_exact(gate)
}

/// `cache` `[R, H, P, D]` with `value` `[R, H, 1, D]` written at position `t` (a decode
/// step's keys or values), in place on the CPU backend when the cache is not shared.
pub fn write_position<B: Backend>(
    cache: Tensor<B, 4>,
    t: usize,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let cache = match kernels::write_position(cache, t, &value) {
        Ok(done) => return done,
        Err(cache) => cache,
    };
    let [r, h, _, d] = cache.dims();
    cache.slice_assign([0..r, 0..h, t..t + 1, 0..d], value)
}

/// `[B, C, H, W]` → contiguous tokens `[B, H·W, C]`.
pub fn nchw_to_tokens<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, h, w] = x.dims();
    swap_last2(x.reshape([b, c, h * w]))
}

/// Tokens `[B, H·W, C]` → contiguous `[B, C, H, W]`.
pub fn tokens_to_nchw<B: Backend>(t: Tensor<B, 3>, [h, w]: [usize; 2]) -> Tensor<B, 4> {
    let [b, _, c] = t.dims();
    swap_last2(t).reshape([b, c, h, w])
}

/// `a` `[N, Ca, H, W]` and `b` `[N, Cb, H, W]` → `[N, Ca + Cb, H, W]`.
pub fn cat_channels<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Tensor<B, 4> {
    if let Some(y) = kernels::cat_channels(&a, &b) {
        return y;
    }
    Tensor::cat(vec![a, b], 1)
}

/// `[B, M, N]` → `[B, N, M]`, materialised by a parallel kernel on the CPU (a lazy view
/// elsewhere: GPU backends fuse or copy it themselves).
fn swap_last2<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    if let Some(y) = kernels::transpose_last2(&x) {
        return y;
    }
    x.swap_dims(1, 2)
}

/// `[B, S, H·Dh]` → `[B, H, S, Dh]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, d] = x.dims();
    x.reshape([b, s, heads, d / heads]).swap_dims(1, 2)
}

/// `[B, H, S, Dh]` → `[B, S, H·Dh]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, dh] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * dh])
}

/// Scaled dot-product attention with the default `1/√d` scale (keeps the fused kernels on
/// GPU backends, which fall back to the unfused path for a custom scale).
pub fn sdpa<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    sdpa_masked(q, k, v, None, causal)
}

/// [`sdpa`] inside a layer whose projection weights are held as `weights`: bf16 ones on the
/// CPU (`--precision bf16`) make the score and output products bf16 too (f32 sums; softmax
/// in f32), as diffusers' bf16 attention is.
pub fn sdpa_for<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
    weights: burn::tensor::DType,
) -> Tensor<B, 4> {
    attend(q, k, v, None, causal, weights == burn::tensor::DType::BF16)
}

/// [`sdpa`] where `masked` (true: ignore that key, shaped like the scores) may hide keys.
/// The CPU backend takes kiln's one-query kernel for decode steps (mask or not) and its
/// blocked kernel without a mask; Burn's attention does the rest.
pub fn sdpa_masked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Option<Tensor<B, 4, burn::tensor::Bool>>,
    causal: bool,
) -> Tensor<B, 4> {
    attend(q, k, v, masked, causal, false)
}

fn attend<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    masked: Option<Tensor<B, 4, burn::tensor::Bool>>,
    causal: bool,
    in_bf16: bool,
) -> Tensor<B, 4> {
    use burn::tensor::ops::AttentionModuleOptions;
    if let Some(y) = kernels::attention(&q, &k, &v, masked.as_ref(), causal, in_bf16) {
        return y;
    }
    let opts = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    burn::tensor::module::attention(q, k, v, masked, None, opts)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn quick_gelu_matches_plain_ops() {
        let x = Tensor::<Flex, 2>::random(
            [3, 70_001],
            Distribution::Normal(0.0, 4.0),
            &Default::default(),
        );
        let want = x.clone() * sigmoid(x.clone() * 1.702);
        let err: f32 = (quick_gelu(x) - want).abs().max().into_scalar();
        assert!(err < 1e-6, "max |diff| {err}");
    }

    /// The CPU kernels for DALL·E's bias-only LayerNorm and its GLU gating against plain ops.
    #[test]
    fn bias_layer_norm_and_gelu_mul_match_plain_ops() {
        let d = Default::default();
        let n = Distribution::Normal(0.5, 2.0);
        let x = Tensor::<Flex, 3>::random([2, 3, 70], n, &d);
        let bias = Tensor::<Flex, 1>::random([70], n, &d);
        let (var, mean) = x.clone().var_mean_bias(2);
        let want = (x.clone() - mean) / (var + 1e-5).sqrt() + bias.clone().unsqueeze::<3>();
        let err: f32 = (bias_layer_norm(x.clone(), bias, 1e-5) - want)
            .abs()
            .max()
            .into_scalar();
        assert!(err < 1e-5, "layer norm: max |diff| {err}");
        let v = Tensor::<Flex, 3>::random([2, 3, 70], n, &d);
        let want = gelu_exact(x.clone()) * v.clone();
        let err: f32 = (gelu_mul(x, v) - want).abs().max().into_scalar();
        assert!(err < 1e-5, "gelu mul: max |diff| {err}");
    }

    /// The parallel channel join equals `Tensor::cat`: pieces of 65 536 values that cross
    /// from `a` to `b` and from one image to the next, `b` strided.
    #[test]
    fn cat_channels_matches_cat() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let a = Tensor::<Flex, 4>::random([3, 5, 100, 70], n, &d);
        let b = Tensor::<Flex, 4>::random([3, 100, 70, 7], n, &d).permute([0, 3, 1, 2]);
        let want = Tensor::cat(vec![a.clone(), b.clone()], 1).into_data();
        assert_eq!(cat_channels(a, b).into_data(), want);
    }

    /// The parallel NCHW ↔ tokens transposes equal the lazy views, on sides that are not
    /// multiples of the 64-wide tiles.
    #[test]
    fn token_layout_round_trip() {
        let d = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 70, 9, 15], Distribution::Normal(0.0, 1.0), &d);
        let t = nchw_to_tokens(x.clone());
        let want = x.clone().reshape([2, 70, 135]).swap_dims(1, 2);
        assert_eq!(t.clone().into_data(), want.into_data());
        assert_eq!(tokens_to_nchw(t, [9, 15]).into_data(), x.into_data());
    }

    /// The in-place cache write equals `slice_assign`, for an unshared cache (in place), a
    /// shared one (copied, the other handle unchanged) and a strided value.
    #[test]
    fn write_position_matches_slice_assign() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let cache = Tensor::<Flex, 4>::random([2, 3, 5, 4], n, &d);
        let value = Tensor::<Flex, 4>::random([2, 1, 3, 4], n, &d).swap_dims(1, 2);
        let want = cache
            .clone()
            .slice_assign([0..2, 0..3, 3..4, 0..4], value.clone());
        let before = cache.clone().into_data();
        let shared = cache.clone();
        let got = write_position(cache, 3, value.clone());
        assert_eq!(got.into_data(), want.clone().into_data());
        assert_eq!(
            shared.clone().into_data(),
            before,
            "a shared cache is not written through"
        );
        let unshared = shared + 0.0;
        assert_eq!(
            write_position(unshared, 3, value).into_data(),
            want.into_data()
        );
    }
}
