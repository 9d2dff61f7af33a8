//! Euler (diffusers `EulerDiscreteScheduler`, Karras et al. Algorithm 2 with `s_churn = 0`):
//! sigma-space, so the model input is scaled by `1/√(σ²+1)` and the timesteps may be fractional.
//! "Euler Karras" is the same sampler on Karras sigmas (`use_karras_sigmas=True`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::{add_noise_sigma, karras, log_sigmas, sigma_to_t, train_sigmas};
use super::{
    Noise, PredictionType, Scheduler, SchedulerConfig, SchedulerOptions, TimestepSpacing, interp,
    linspace_f64,
};
use crate::error::Result;

pub(super) fn build<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(EulerDiscrete::new(cfg, steps)))
}

pub(super) fn build_karras<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(EulerDiscrete::new_karras(cfg, steps)))
}

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One per timestep, then a final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self::with_sigmas(cfg, steps, false)
    }

    /// Karras sigmas between the σ of the first and last spaced timestep, each mapped back to a
    /// fractional train timestep (diffusers keeps them unrounded here, unlike DPM-Solver).
    pub fn new_karras(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self::with_sigmas(cfg, steps, true)
    }

    fn with_sigmas(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool) -> Self {
        let t = cfg.num_train_timesteps;
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let spaced: Vec<f64> = match spacing {
            // Euler keeps linspace timesteps fractional, unlike DDIM/PNDM.
            TimestepSpacing::Linspace => linspace_f64(0.0, (t - 1) as f64, steps)
                .into_iter()
                .rev()
                .collect(),
            _ => super::spaced_timesteps(cfg, steps, spacing),
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

impl<B: Backend> Scheduler<B> for EulerDiscrete {
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
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let sigma = self.sigmas[i];
        let x0 = match self.prediction {
            PredictionType::Epsilon => sample.clone() - out * sigma,
            PredictionType::VPrediction => {
                out * (-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample.clone() / (sigma * sigma + 1.0)
            }
        };
        let derivative = (sample.clone() - x0) / sigma;
        sample + derivative * (self.sigmas[i + 1] - sigma)
    }
}
