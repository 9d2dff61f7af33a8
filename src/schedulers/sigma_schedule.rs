//! [`SigmaSchedule`]: the timesteps and noise levels of the sigma-keeping samplers (Euler, Euler a,
//! Heun, LMS, DPM-Solver, UniPC), with what follows from them alone: the starting noise factor,
//! the UNet input scaling and `add_noise`. Each sampler holds one and adds its own `step`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::{
    add_noise_sigma, add_noise_vp, discrete_timesteps, karras, log_sigmas, multistep_timesteps,
    sigma_to_t, sigmas_at, train_sigmas,
};
use super::{SchedulerConfig, TimestepSpacing, interp, linspace_f64, spaced_timesteps};

/// How a sampler's samples carry the noise, which decides `scale_model_input`, `add_noise` and
/// the starting noise factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    /// k-diffusion style (Euler family): `x = x₀ + σ·ε`, so the UNet input is scaled by
    /// `1/√(σ²+1)` and the starting noise by about σ_max.
    Sigma,
    /// Variance preserving (multistep solvers): `x = α·x₀ + σ_vp·ε`, fed to the UNet as it is.
    Vp,
}

/// Timesteps, in the order the loop visits them, and one sigma per timestep followed by a final 0.
#[derive(Debug, Clone)]
pub struct SigmaSchedule {
    timesteps: Vec<f64>,
    /// One per timestep, then a final 0 (the multistep solvers' `final_sigmas_type = "zero"`).
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    space: Space,
}

/// The sigma samplers' `timestep_spacing` when the config does not say (diffusers' default).
fn spacing(cfg: &SchedulerConfig) -> TimestepSpacing {
    cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace)
}

impl SigmaSchedule {
    /// The Euler-family `set_timesteps` of Euler a, Heun and LMS: float32 timesteps, fractional
    /// under `linspace`, and the training sigmas interpolated at them.
    pub fn discrete(cfg: &SchedulerConfig, steps: usize) -> Self {
        let spacing = spacing(cfg);
        let timesteps = discrete_timesteps(cfg, steps, spacing);
        let sigmas = sigmas_at(&train_sigmas(cfg), &timesteps);
        Self::sigma_space(timesteps, sigmas, spacing)
    }

    /// Euler's `set_timesteps`. With `karras_sigmas`, Karras sigmas between the σ of the first
    /// and last spaced timestep, each mapped back to a fractional train timestep (diffusers keeps
    /// them unrounded here, unlike DPM-Solver).
    pub fn euler(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool) -> Self {
        let t = cfg.num_train_timesteps;
        let spacing = spacing(cfg);
        let spaced: Vec<f64> = match spacing {
            // Euler keeps linspace timesteps fractional, unlike DDIM/PNDM.
            TimestepSpacing::Linspace => linspace_f64(0.0, (t - 1) as f64, steps)
                .into_iter()
                .rev()
                .collect(),
            _ => spaced_timesteps(cfg, steps, spacing),
        };
        let train = train_sigmas(cfg);
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = if karras_sigmas {
            let (hi, lo) = (interp(spaced[0], &train), interp(spaced[steps - 1], &train));
            let ks = karras(&[lo, hi], steps);
            let logs = log_sigmas(&train);
            (
                ks.iter()
                    .map(|&s| sigma_to_t(s, &logs) as f32 as f64)
                    .collect(),
                ks.iter().map(|&s| s as f32 as f64).collect(),
            )
        } else {
            let sigmas = spaced
                .iter()
                .map(|&ts| interp(ts, &train) as f32 as f64)
                .collect();
            (spaced, sigmas)
        };
        sigmas.push(0.0);
        Self::sigma_space(timesteps, sigmas, spacing)
    }

    /// The multistep solvers' `set_timesteps` (DPM-Solver, UniPC), whose samples are VP-scaled.
    /// With `karras_sigmas`, Karras sigmas over the whole training range, each mapped back to the
    /// nearest (rounded) train timestep for the UNet.
    pub fn multistep(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool) -> Self {
        let train = train_sigmas(cfg);
        let (timesteps, sigmas) = if karras_sigmas {
            let sigmas = karras(&train, steps);
            let logs = log_sigmas(&train);
            let ts = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &logs).round_ties_even())
                .collect();
            let mut sigmas: Vec<f64> = sigmas.into_iter().map(|s| s as f32 as f64).collect();
            sigmas.push(0.0);
            (ts, sigmas)
        } else {
            let ts = multistep_timesteps(cfg, steps, spacing(cfg));
            let sigmas = sigmas_at(&train, &ts);
            (ts, sigmas)
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma: 1.0,
            space: Space::Vp,
        }
    }

    /// A sigma-space schedule; the starting noise is σ_max, or `√(σ_max²+1)` under `leading`
    /// spacing, as diffusers' `init_noise_sigma`.
    fn sigma_space(timesteps: Vec<f64>, sigmas: Vec<f64>, spacing: TimestepSpacing) -> Self {
        let max = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            space: Space::Sigma,
        }
    }

    /// Heun's layout: every timestep but the first visited twice, `[t0, t1, t1, t2, t2, …]`, and
    /// the sigmas `[σ0, σ1, σ1, …, σ_{n−1}, σ_{n−1}, 0]` (the maximum, so the starting noise, is
    /// unchanged).
    pub fn doubled(&self) -> Self {
        let (base, base_sigmas) = (&self.timesteps, &self.sigmas);
        let mut timesteps = vec![base[0]];
        let mut sigmas = vec![base_sigmas[0]];
        for k in 1..base.len() {
            timesteps.extend([base[k], base[k]]);
            sigmas.extend([base_sigmas[k], base_sigmas[k]]);
        }
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            ..*self
        }
    }

    /// The model timesteps, in the order the loop visits them.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// One per timestep, then a final 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Factor applied to the starting noise.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// The UNet input at step `i`: `x/√(σ²+1)` in sigma space, `x` for VP samples.
    pub fn scale_model_input<B: Backend>(&self, sample: Tensor<B, 4>, i: usize) -> Tensor<B, 4> {
        match self.space {
            Space::Sigma => {
                let s = self.sigmas[i];
                sample / (s * s + 1.0).sqrt()
            }
            Space::Vp => sample,
        }
    }

    /// `original` noised to this schedule's own `sigmas[i]` (not the σ of a rounded timestep).
    pub fn add_noise<B: Backend>(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        match self.space {
            Space::Sigma => add_noise_sigma(original, noise, self.sigmas[i]),
            Space::Vp => add_noise_vp(original, noise, self.sigmas[i]),
        }
    }
}
