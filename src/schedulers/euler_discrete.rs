//! Euler (diffusers `EulerDiscreteScheduler`, Karras et al. Algorithm 2 with `s_churn = 0`):
//! sigma-space, so the model input is scaled by `1/√(σ²+1)` and the timesteps may be fractional.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

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

pub struct EulerDiscrete {
    timesteps: Vec<f64>,
    /// One per timestep, then a final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let t = cfg.num_train_timesteps;
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let timesteps: Vec<f64> = match spacing {
            // Euler keeps linspace timesteps fractional, unlike DDIM/PNDM.
            TimestepSpacing::Linspace => linspace_f64(0.0, (t - 1) as f64, steps)
                .into_iter()
                .rev()
                .collect(),
            _ => super::spaced_timesteps(cfg, steps, spacing),
        };
        let train_sigmas: Vec<f64> = cfg
            .alphas_cumprod()
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt() as f32 as f64)
            .collect();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&ts| interp(ts, &train_sigmas) as f32 as f64)
            .collect();
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

    fn sigma_space(&self) -> bool {
        true
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
