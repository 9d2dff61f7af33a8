//! Heun (diffusers `HeunDiscreteScheduler`, Karras et al. Algorithm 1 with no churn): each step
//! is an Euler predictor and a trapezoidal corrector, so it calls the model twice. diffusers
//! expresses that as a longer timestep list `[t0, t1, t1, t2, t2, …]` (2n−1 entries; the last
//! step is a plain Euler step onto σ = 0), and the loop simply visits every entry.

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
    Ok(Box::new(Heun::<B>::new(cfg, steps)))
}

pub struct Heun<B: Backend> {
    timesteps: Vec<f64>,
    /// `[σ0, σ1, σ1, σ2, σ2, …, σ_{n−1}, σ_{n−1}, 0]`: one per entry of `timesteps`, then 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
    /// The predictor's derivative, step size and starting sample while a corrector is due.
    first: Option<(Tensor<B, 4>, f64, Tensor<B, 4>)>,
}

impl<B: Backend> Heun<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let base = discrete_timesteps(cfg, steps, spacing);
        let base_sigmas = sigmas_at(&train_sigmas(cfg), &base);
        let n = base.len();
        let mut timesteps = vec![base[0]];
        let mut sigmas = vec![base_sigmas[0]];
        for k in 1..n {
            timesteps.extend([base[k], base[k]]);
            sigmas.extend([base_sigmas[k], base_sigmas[k]]);
        }
        sigmas.push(0.0);
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
            first: None,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `(x − x₀)/σ` for the model output at noise level `sigma`.
    fn derivative(&self, out: Tensor<B, 4>, sample: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
        match self.prediction {
            PredictionType::Epsilon => out,
            PredictionType::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                sample * ((1.0 - 1.0 / (c * c)) / sigma) + out / c
            }
        }
    }
}

impl<B: Backend> Scheduler<B> for Heun<B> {
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

    fn order(&self) -> usize {
        2
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
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        match self.first.take() {
            None => {
                // Predictor: Euler from σ_i to σ_{i+1}; remember it for the corrector.
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let d = self.derivative(out, sample.clone(), sigma);
                let dt = next - sigma;
                let prev = sample.clone() + d.clone() * dt;
                self.first = Some((d, dt, sample));
                prev
            }
            Some((d1, dt, start)) => {
                // Corrector: average the derivatives at both ends, restart from the first sample.
                let d2 = self.derivative(out, sample, self.sigmas[i]);
                start + (d1 + d2) * (dt / 2.0)
            }
        }
    }
}
