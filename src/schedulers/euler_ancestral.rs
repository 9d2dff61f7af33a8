//! Euler ancestral (diffusers `EulerAncestralDiscreteScheduler`, A1111 "Euler a"): an Euler step
//! down to `σ_down`, then fresh noise of standard deviation `σ_up`, with `σ_down² + σ_up² = σ_next²`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::{add_noise_sigma, discrete_timesteps, sigmas_at, train_sigmas};
use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SchedulerOptions, TimestepSpacing};
use crate::error::Result;

pub(super) fn build<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(EulerAncestral::new(cfg, steps)))
}

pub struct EulerAncestral {
    timesteps: Vec<f64>,
    /// One per timestep, then a final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerAncestral {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let timesteps = discrete_timesteps(cfg, steps, spacing);
        let sigmas = sigmas_at(&train_sigmas(cfg), &timesteps);
        let max = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: cfg.prediction_type,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl<B: Backend> Scheduler<B> for EulerAncestral {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn add_noise(
        &self,
        _: &SchedulerConfig,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        add_noise_sigma(original, noise, self.sigmas[i])
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, i: usize) -> Tensor<B, 4> {
        let s = self.sigmas[i];
        sample / (s * s + 1.0).sqrt()
    }

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
        let sigma_up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let sigma_down = (next * next - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        // x + (x − x₀)/σ · dt, written on (x, out) so the tensors see two multiply-adds.
        let stepped = match self.prediction {
            // x₀ = x − σ·ε, so (x − x₀)/σ = ε.
            PredictionType::Epsilon => sample + out * dt,
            PredictionType::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                // x₀ = −σ/c·v + x/c²  ⇒  (x − x₀)/σ = x·(1 − 1/c²)/σ + v/c.
                sample.clone() + (sample * ((1.0 - 1.0 / (c * c)) / sigma) + out / c) * dt
            }
        };
        // diffusers draws the noise on every step, including the last (where σ_up = 0).
        stepped + noise() * sigma_up
    }
}
