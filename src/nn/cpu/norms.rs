//! GroupNorm (with its SiLU, or as the affine form a convolution applies on the fly) and
//! LayerNorm as single parallel passes over contiguous rows.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::rows::rows_per_task;
use super::{Unfilled, contiguous, dims, math, new_tensor, simd_dispatch, slice};

/// Mean and 1/σ of `x` (biased variance, two passes as `var_mean_bias` does).
#[inline(always)]
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = math::sum_map(x, |v| v) / n;
    let m = mean as f32;
    let var = math::sum_map(x, |v| (v - m) * (v - m)) / n;
    (m, (1.0 / (var + eps).sqrt()) as f32)
}

/// A GroupNorm channel as `x · scale + shift`: the one place both the GroupNorm pass and the
/// convolutions that normalise their input on the fly (`group_norm_affine`) get it from, so
/// they give the same bits.
#[inline(always)]
fn affine(mean: f32, rstd: f32, gamma: f32, beta: f32) -> (f32, f32) {
    let scale = gamma * rstd;
    (scale, beta - mean * scale)
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
            let (scale, shift) = affine(mean, rstd, gamma[ch], beta[ch]);
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

/// A GroupNorm's operands made contiguous, with `x`'s shape, the values per channel (`hw`)
/// and the channels per group (`cg`).
struct GroupOperands {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    shape: Vec<usize>,
    hw: usize,
    cg: usize,
}

impl GroupOperands {
    fn new(x: &FlexTensor, groups: usize, gamma: &FlexTensor, beta: &FlexTensor) -> Self {
        let x = contiguous(x);
        let shape = dims(&x);
        let c = shape[1];
        let hw = x.layout().num_elements() / (shape[0] * c);
        let (gamma, beta) = (contiguous(gamma), contiguous(beta));
        Self {
            x,
            gamma,
            beta,
            shape,
            hw,
            cg: c / groups,
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
    let GroupOperands {
        x,
        gamma,
        beta,
        shape,
        hw,
        cg,
    } = GroupOperands::new(x, groups, gamma, beta);
    let (gs, bs) = (slice(&gamma), slice(&beta));
    let xs = slice(&x);
    // SAFETY: `norm_group` writes each of its group's values.
    let out = unsafe {
        Unfilled::par_chunks(xs.len(), cg * hw, |i, o| {
            let g = i % groups;
            let ch = g * cg..(g + 1) * cg;
            let xg = &xs[i * cg * hw..][..o.len()];
            norm_group(xg, o, &gs[ch.clone()], &bs[ch], hw, eps, act);
        })
    };
    new_tensor(out, shape)
}

/// The GroupNorm of `x` `[N, C, …]` as per image and channel `(scale, shift)`, `[N·C]` each:
/// `group_norm(x)[n, c] = x[n, c] · scale[n·C + c] + shift[n·C + c]`, bit for bit.
pub(crate) fn group_norm_affine(
    x: &FlexTensor,
    groups: usize,
    eps: f64,
    gamma: &FlexTensor,
    beta: &FlexTensor,
) -> (Vec<f32>, Vec<f32>) {
    let GroupOperands {
        x,
        gamma,
        beta,
        hw,
        cg,
        ..
    } = GroupOperands::new(x, groups, gamma, beta);
    let (gs, bs) = (slice(&gamma), slice(&beta));
    let per_group: Vec<Vec<(f32, f32)>> = slice(&x)
        .par_chunks(cg * hw)
        .enumerate()
        .map(|(i, xg)| {
            let (mean, rstd) = group_stats(xg, eps);
            let ch = (i % groups) * cg;
            (ch..ch + cg)
                .map(|ch| affine(mean, rstd, gs[ch], bs[ch]))
                .collect()
        })
        .collect();
    per_group.into_iter().flatten().unzip()
}

simd_dispatch! {
    /// [`stats`] compiled for the vector units, as `norm_group` runs it.
    fn group_stats(x: &[f32], eps: f64) -> (f32, f32) {
        stats(x, eps)
    }
}

simd_dispatch! {
    /// Rows of `d` values; without `gamma` the scale is 1 (DALL·E's bias-only norms).
    fn norm_rows(
        x: &[f32],
        out: &mut [f32],
        d: usize,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        eps: f64,
    ) {
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let (mean, rstd) = stats(xr, eps);
            match (gamma, beta) {
                (Some(g), Some(b)) => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd * g[i] + b[i];
                    }
                }
                (Some(g), None) => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd * g[i];
                    }
                }
                (None, Some(b)) => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd + b[i];
                    }
                }
                (None, None) => {
                    for i in 0..d {
                        or[i] = (xr[i] - mean) * rstd;
                    }
                }
            }
        }
    }
}

/// LayerNorm over the last dimension, scale `gamma` (1 without) and shift `beta`.
pub(crate) fn layer_norm(
    x: &FlexTensor,
    gamma: Option<&FlexTensor>,
    beta: Option<&FlexTensor>,
    eps: f64,
) -> FlexTensor {
    let x = contiguous(x);
    let shape = dims(&x);
    let d = shape[shape.len() - 1];
    let gamma = gamma.map(contiguous);
    let beta = beta.map(contiguous);
    let (gs, bs) = (gamma.as_ref().map(slice), beta.as_ref().map(slice));
    let xs = slice(&x);
    let chunk = rows_per_task(d) * d;
    // SAFETY: `norm_rows` writes each value of its rows.
    let out = unsafe {
        Unfilled::par_chunks(xs.len(), chunk, |i, o| {
            norm_rows(&xs[i * chunk..][..o.len()], o, d, gs, bs, eps)
        })
    };
    new_tensor(out, shape)
}
