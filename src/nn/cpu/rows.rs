//! Normalisations, GEGLU and Linear+bias as single parallel passes over contiguous rows.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{contiguous, math, new_tensor, simd_dispatch, slice};

fn dims(t: &FlexTensor) -> Vec<usize> {
    let s = t.layout().shape();
    (0..s.num_dims()).map(|i| s[i]).collect()
}

/// Mean and 1/σ of `x` (biased variance, two passes as `var_mean_bias` does).
#[inline(always)]
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = math::sum_map(x, |v| v) / n;
    let m = mean as f32;
    let var = math::sum_map(x, |v| (v - m) * (v - m)) / n;
    (m, (1.0 / (var + eps).sqrt()) as f32)
}

simd_dispatch! {
    /// One group of a GroupNorm: `x` holds `gamma.len()` channels of `hw` values each.
    fn norm_group(
        x: &[f32],
        out: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        hw: usize,
        eps: f64,
        act: bool,
    ) {
        let (mean, rstd) = stats(x, eps);
        for (ch, (xc, oc)) in x.chunks_exact(hw).zip(out.chunks_exact_mut(hw)).enumerate() {
            let scale = gamma[ch] * rstd;
            let shift = beta[ch] - mean * scale;
            if act {
                for (o, &v) in oc.iter_mut().zip(xc) {
                    *o = math::silu(v * scale + shift);
                }
            } else {
                for (o, &v) in oc.iter_mut().zip(xc) {
                    *o = v * scale + shift;
                }
            }
        }
    }
}

/// GroupNorm over `[N, C, …]` with per-channel affine, optionally followed by SiLU.
pub(crate) fn group_norm(
    x: &FlexTensor,
    groups: usize,
    eps: f64,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    act: bool,
) -> FlexTensor {
    let x = contiguous(x);
    let shape = dims(&x);
    let (c, numel) = (shape[1], x.layout().num_elements());
    let hw = numel / (shape[0] * c);
    let cg = c / groups;
    let (gamma, beta) = (contiguous(gamma), contiguous(beta));
    let (gs, bs) = (slice(&gamma), slice(&beta));
    let mut out = vec![0.0f32; numel];
    out.par_chunks_mut(cg * hw)
        .zip(slice(&x).par_chunks(cg * hw))
        .enumerate()
        .for_each(|(i, (o, xg))| {
            let g = i % groups;
            let ch = g * cg..(g + 1) * cg;
            norm_group(xg, o, &gs[ch.clone()], &bs[ch], hw, eps, act);
        });
    new_tensor(out, shape)
}

simd_dispatch! {
    fn norm_rows(x: &[f32], out: &mut [f32], gamma: &[f32], beta: Option<&[f32]>, eps: f64) {
        let d = gamma.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let (mean, rstd) = stats(xr, eps);
            match beta {
                Some(b) => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd * gamma[i] + b[i];
                    }
                }
                None => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd * gamma[i];
                    }
                }
            }
        }
    }
}

/// Rows per parallel task: enough work per task (~64k values) to amortise scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

/// LayerNorm over the last dimension.
pub(crate) fn layer_norm(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: Option<&FlexTensor>,
    eps: f64,
) -> FlexTensor {
    let x = contiguous(x);
    let shape = dims(&x);
    let d = shape[shape.len() - 1];
    let gamma = contiguous(gamma);
    let beta = beta.map(contiguous);
    let (gs, bs) = (slice(&gamma), beta.as_ref().map(slice));
    let mut out = vec![0.0f32; x.layout().num_elements()];
    let chunk = rows_per_task(d) * d;
    out.par_chunks_mut(chunk)
        .zip(slice(&x).par_chunks(chunk))
        .for_each(|(o, xr)| norm_rows(xr, o, gs, bs, eps));
    new_tensor(out, shape)
}

simd_dispatch! {
    fn geglu_rows(h: &[f32], out: &mut [f32], inner: usize) {
        for (hr, or) in h.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
            let (value, gate) = hr.split_at(inner);
            for i in 0..inner {
                or[i] = value[i] * math::gelu(gate[i]);
            }
        }
    }
}

/// GEGLU: `[…, 2I]` → `value · gelu(gate)` `[…, I]` (value first, as diffusers splits).
pub(crate) fn geglu(h: &FlexTensor) -> FlexTensor {
    let h = contiguous(h);
    let mut shape = dims(&h);
    let last = shape.len() - 1;
    let inner = shape[last] / 2;
    shape[last] = inner;
    let mut out = vec![0.0f32; h.layout().num_elements() / 2];
    let rows = rows_per_task(inner);
    out.par_chunks_mut(rows * inner)
        .zip(slice(&h).par_chunks(rows * 2 * inner))
        .for_each(|(o, hr)| geglu_rows(hr, o, inner));
    new_tensor(out, shape)
}

/// `x Wt + b` with `Wt` `[K, N]` contiguous: the bias is written first and the GEMM
/// accumulates onto it, so the add costs no extra pass.
pub(crate) fn linear(x: &FlexTensor, wt: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let x = contiguous(x);
    let wt = contiguous(wt);
    let mut shape = dims(&x);
    let last = shape.len() - 1;
    let k = shape[last];
    let n = dims(&wt)[1];
    let m = x.layout().num_elements() / k.max(1);
    shape[last] = n;
    let mut out = match bias {
        Some(b) => {
            let b = contiguous(b);
            let b = slice(&b);
            let mut out = vec![0.0f32; m * n];
            out.par_chunks_mut(rows_per_task(n) * n)
                .for_each(|c| c.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(b)));
            out
        }
        None => vec![0.0f32; m * n],
    };
    let parallelism = if m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `out` is m×n, `x` m×k and `wt` k×n, all contiguous row-major f32 slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            slice(&x).as_ptr(),
            1,
            k as isize,
            slice(&wt).as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    new_tensor(out, shape)
}
