//! Sigma-space schedule math shared by the k-diffusion-style samplers (Euler a, Heun, LMS) and
//! the multistep solvers (DPM++, UniPC), following diffusers' `set_timesteps` helpers, including
//! where they round to f32.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{SchedulerConfig, TimestepSpacing, linspace_f64, spaced_timesteps};

/// Training sigmas `√((1−ᾱ)/ᾱ)`, one per train timestep, as the f32 values torch computes.
pub fn train_sigmas(cfg: &SchedulerConfig) -> Vec<f64> {
    cfg.alphas_cumprod()
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt() as f32 as f64)
        .collect()
}

/// Timesteps of the Euler-family `set_timesteps` (Euler a, Heun, LMS): float32, fractional under
/// `linspace`.
pub fn discrete_timesteps(
    cfg: &SchedulerConfig,
    steps: usize,
    spacing: TimestepSpacing,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => linspace_f64(0.0, (cfg.num_train_timesteps - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32 as f64)
            .collect(),
        _ => spaced_timesteps(cfg, steps, spacing),
    }
}

/// Integer timesteps of the multistep solvers (DPM-Solver, UniPC): `steps + 1` points with the
/// last (t = 0) dropped, so the final step lands on σ = 0 rather than re-visiting t = 0.
pub fn multistep_timesteps(
    cfg: &SchedulerConfig,
    steps: usize,
    spacing: TimestepSpacing,
) -> Vec<f64> {
    let t = cfg.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut ts: Vec<f64> = linspace_f64(0.0, (t - 1) as f64, steps + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            ts.reverse();
            ts.pop();
            ts
        }
        TimestepSpacing::Leading => {
            let ratio = t / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => spaced_timesteps(cfg, steps, spacing),
    }
}

pub use super::interp;

/// Sigmas interpolated at (possibly fractional) timesteps, then a final 0, all rounded to f32.
pub fn sigmas_at(train: &[f64], timesteps: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = timesteps
        .iter()
        .map(|&t| interp(t, train) as f32 as f64)
        .collect();
    s.push(0.0);
    s
}

/// Karras et al. (2022) noise levels: `n` points evenly spaced in σ^(1/ρ), ρ = 7, from the
/// largest to the smallest training sigma (the last and first of the ascending `train`; a
/// two-element `[min, max]` works too).
pub fn karras(train: &[f64], n: usize) -> Vec<f64> {
    let (min, max) = (train[0], train[train.len() - 1]);
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace_f64(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional train timestep whose sigma is `sigma`, interpolating
/// linearly in log σ (`log_sigmas` ascending, as f32 like numpy's).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let below = log_sigmas
        .iter()
        .take_while(|&&l| log_sigma - l >= 0.0)
        .count();
    let low = below.saturating_sub(1).min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `ln σ` of the training sigmas, rounded to f32 as `np.log` of an f32 array is.
pub fn log_sigmas(train: &[f64]) -> Vec<f64> {
    train.iter().map(|s| s.ln() as f32 as f64).collect()
}

/// VP coefficients of a sigma: `α = 1/√(σ²+1)`, `σ_vp = σ·α`, and `λ = ln α − ln σ_vp`
/// (`+∞` at σ = 0, which the solvers' formulas handle as exp(−∞) = 0).
pub fn alpha_sigma_lambda(sigma: f64) -> (f64, f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    let s = sigma * alpha;
    (alpha, s, alpha.ln() - s.ln())
}

/// `add_noise` of the Euler family (Euler, Euler a, Heun, LMS), whose samples live in sigma space:
/// `x₀ + σ·ε`, unscaled.
pub(crate) fn add_noise_sigma<B: Backend>(
    original: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    sigma: f64,
) -> Tensor<B, 4> {
    original + noise * sigma
}

/// `add_noise` of the multistep solvers (DPM-Solver, UniPC), whose samples are VP-scaled:
/// `α·x₀ + σ_vp·ε` with `α = 1/√(σ²+1)`, `σ_vp = σ·α` (diffusers' `_sigma_to_alpha_sigma_t`).
pub(crate) fn add_noise_vp<B: Backend>(
    original: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    sigma: f64,
) -> Tensor<B, 4> {
    let (alpha, sigma_vp, _) = alpha_sigma_lambda(sigma);
    original * alpha + noise * sigma_vp
}
