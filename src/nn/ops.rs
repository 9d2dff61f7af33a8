//! The layers' functional half: activations, the CPU GEMV for DALL·E's projections, the
//! decode cache write, the thread-pool entry points and the layout and attention helpers.
//! Each calls a fused kernel in `cpu` when the backend is Flex and falls back to plain Burn
//! ops everywhere else.

use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

#[cfg(feature = "cpu")]
use super::cpu;

pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::silu(x)
}

/// CLIP's activation: `x · σ(1.702 x)`.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    if let Some(fx) = cpu::to_flex(&x) {
        return cpu::from_flex(cpu::quick_gelu(&fx));
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
    #[cfg(feature = "cpu")]
    if let (Some(g), Some(v)) = (cpu::to_flex(&gate), cpu::to_flex(&value))
        && let Some(out) = cpu::gelu_mul(&g, &v)
    {
        return cpu::from_flex(out);
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
    #[cfg(feature = "cpu")]
    if let (Some(fx), Some(b)) = (cpu::to_flex(&x), cpu::to_flex(&bias)) {
        return cpu::from_flex(cpu::layer_norm(&fx, None, Some(&b), eps));
    }
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    ((x - mean) / (var + eps).sqrt()).cast(dtype) + bias.unsqueeze::<D>()
}

/// GEGLU's gating: `h` `[…, 2I]` → `value · gelu(gate)` `[…, I]`, value first (diffusers).
pub fn geglu<B: Backend, const D: usize>(h: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    if let Some(fh) = cpu::to_flex(&h) {
        return cpu::from_flex(cpu::geglu(&fh));
    }
    let inner = h.dims()[D - 1] / 2;
    let value = h.clone().narrow(D - 1, 0, inner);
    let gate = h.narrow(D - 1, inner, inner);
    value * gelu_exact(gate)
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
    {
        use burn::tensor::DType;
        let fx = cpu::to_flex(x)?;
        let mut held = Vec::with_capacity(N);
        for (w, b) in weights {
            let fb = match b {
                Some(b) => Some(cpu::to_flex(b)?),
                None => None,
            };
            held.push((cpu::to_flex_of(w, &[DType::F32, DType::F16])?, fb));
        }
        let refs: Vec<_> = held.iter().map(|(w, b)| (w, b.as_ref())).collect();
        let outs = cpu::gemv_many(&fx, &refs)?;
        outs.into_iter()
            .map(cpu::from_flex)
            .collect::<Vec<_>>()
            .try_into()
            .ok()
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = (x, weights);
        None
    }
}

/// `cache` `[R, H, P, D]` with `value` `[R, H, 1, D]` written at position `t` (a decode
/// step's keys or values), in place on the CPU backend when the cache is not shared.
pub fn write_position<B: Backend>(
    cache: Tensor<B, 4>,
    t: usize,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    let cache = match cpu::write_position(cache, t, &value) {
        Ok(done) => return done,
        Err(cache) => cache,
    };
    let [r, h, _, d] = cache.dims();
    cache.slice_assign([0..r, 0..h, t..t + 1, 0..d], value)
}

/// Whether [`matvec_rows`] on backend `B` takes f16 weights (the CPU backend).
pub fn gemv_reads_f16<B: Backend>() -> bool {
    #[cfg(feature = "cpu")]
    {
        cpu::is_flex::<B>()
    }
    #[cfg(not(feature = "cpu"))]
    {
        false
    }
}

/// Runs `f` on a worker thread of the CPU kernels' pool (rayon's global pool) when `B` is
/// the CPU backend. A parallel loop started from a worker costs ~5 µs here; from any other
/// thread (the engine's, the CLI's) ~25 µs, since rayon queues the job, wakes a worker and
/// parks the caller until it is done. A DALL·E decode step runs ~100 such loops. Other
/// backends run `f` where they are, on the thread that owns their device streams.
pub fn on_cpu_pool<B: Backend, R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        return rayon::scope(|_| f());
    }
    f()
}

/// [`on_cpu_pool`] with the pool's other workers spinning between the CPU kernels' parallel
/// loops instead of parking (see `cpu::team`): for a stretch of many small loops such as a
/// decode step, where waking a parked worker costs as much as the loop. Flex's own parallel
/// ops inside `f` run on one thread, so only for stretches made of the kernels in `cpu`.
pub fn on_cpu_team<B: Backend, R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "cpu")]
    if cpu::is_flex::<B>() {
        return cpu::with_team(f);
    }
    f()
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

/// `[B, M, N]` → `[B, N, M]`, materialised by a parallel kernel on the CPU (a lazy view
/// elsewhere: GPU backends fuse or copy it themselves).
fn swap_last2<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "cpu")]
    if let Some(out) = cpu::to_flex(&x).and_then(|f| cpu::transpose_last2(&f)) {
        return cpu::from_flex(out);
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
    use burn::tensor::ops::AttentionModuleOptions;
    #[cfg(feature = "cpu")]
    if let (Some(fq), Some(fk), Some(fv)) = (cpu::to_flex(&q), cpu::to_flex(&k), cpu::to_flex(&v)) {
        // One query, not causal (a decode step): a dot product per key, mask or not.
        let one = || match &masked {
            Some(m) => cpu::attention_one(&fq, &fk, &fv, Some(&cpu::to_flex_bool(m)?)),
            None => cpu::attention_one(&fq, &fk, &fv, None),
        };
        let out = if q.dims()[2] == 1 && !causal {
            one()
        } else {
            None
        };
        let out = out.or_else(|| {
            masked
                .is_none()
                .then(|| cpu::attention(&fq, &fk, &fv, causal))
                .flatten()
        });
        if let Some(out) = out {
            return cpu::from_flex(out);
        }
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

    /// The GEMV against a plain matmul: 1, 8, 13 and 32 rows (one group, two, four), then
    /// 33 and 130 rows (the many-row kernel: one panel and a partial one, three), a ragged K
    /// and N (several blocks, the last partial), with and without bias.
    #[test]
    fn matvec_rows_matches_matmul() {
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w = Tensor::<Flex, 2>::random([600, 37], n, &d);
        let b = Tensor::<Flex, 1>::random([600], n, &d);
        for [r, s] in [[1, 1], [8, 1], [13, 1], [32, 1], [3, 11], [2, 65]] {
            let x = Tensor::<Flex, 3>::random([r, s, 37], n, &d);
            let rows = r * s;
            for bias in [None, Some(&b)] {
                let got = matvec_rows(&x, &w, bias).expect("f32 rows take the GEMV");
                let mut want = x.clone().matmul(w.clone().transpose().unsqueeze::<3>());
                if let Some(b) = bias {
                    want = want + b.clone().unsqueeze::<3>();
                }
                let err: f32 = (got - want).abs().max().into_scalar();
                assert!(err < 1e-5, "{rows} rows: max |diff| {err}");
            }
        }
    }

    /// One GEMV over several weights (f32 with bias, f16, different widths) gives each one's
    /// own bits; a weight of another width declines the lot.
    #[test]
    fn matvec_rows_many_equals_one_by_one() {
        use burn::tensor::DType;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w0 = Tensor::<Flex, 2>::random([600, 37], n, &d);
        let b0 = Tensor::<Flex, 1>::random([600], n, &d);
        let w1 = Tensor::<Flex, 2>::random([70, 37], n, &d).cast(DType::F16);
        let x = Tensor::<Flex, 3>::random([3, 1, 37], n, &d);
        let [y0, y1] = matvec_rows_many(&x, [(&w0, Some(&b0)), (&w1, None)]).expect("GEMV");
        let want0 = matvec_rows(&x, &w0, Some(&b0)).expect("GEMV");
        let want1 = matvec_rows(&x, &w1, None).expect("GEMV");
        assert_eq!(y0.into_data(), want0.into_data());
        assert_eq!(y1.into_data(), want1.into_data());
        let other = Tensor::<Flex, 2>::random([5, 36], n, &d);
        assert!(matvec_rows_many(&x, [(&w0, None), (&other, None)]).is_none());
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

    /// f16 weights (as an f16 checkpoint keeps them) give exactly the bits of the same
    /// weights widened to f32, for every row count the kernel specialises.
    #[test]
    fn matvec_rows_f16_weights_equal_widened() {
        use burn::tensor::DType;
        let d = Default::default();
        let n = Distribution::Normal(0.0, 1.0);
        let w16 = Tensor::<Flex, 2>::random([300, 70], n, &d).cast(DType::F16);
        let w32 = w16.clone().cast(DType::F32);
        for rows in 1..=8 {
            let x = Tensor::<Flex, 3>::random([rows, 1, 70], n, &d);
            let got = matvec_rows(&x, &w16, None).expect("f16 weights take the GEMV");
            let want = matvec_rows(&x, &w32, None).expect("f32 weights take the GEMV");
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(got.into_data(), want.clone().into_data(), "{rows} rows");
            let plain = x.matmul(w32.clone().transpose().unsqueeze::<3>());
            let err: f32 = (want - plain).abs().max().into_scalar();
            assert!(err < 1e-4, "{rows} rows: max |diff| {err}");
        }
    }
}
