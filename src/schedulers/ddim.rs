//! DDIM (diffusers `DDIMScheduler`) with `eta = 0`, the deterministic sampler the pipelines default to.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing, spaced_timesteps};

pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    prediction: PredictionType,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = cfg.alphas_cumprod();
        let final_alpha_cumprod = if cfg.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Self {
            timesteps: spaced_timesteps(cfg, steps, cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading)),
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: cfg.num_train_timesteps / steps,
            prediction: cfg.prediction_type,
        }
    }
}

impl<B: Backend> Scheduler<B> for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _: usize) -> Tensor<B, 4> {
        sample
    }

    fn step(&mut self, out: Tensor<B, 4>, i: usize, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        let t = self.timesteps[i] as i64;
        let prev = t - self.step_ratio as i64;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let (x0, eps) = match self.prediction {
            PredictionType::Epsilon => ((sample - out.clone() * b_t.sqrt()) / a_t.sqrt(), out),
            PredictionType::VPrediction => (
                sample.clone() * a_t.sqrt() - out.clone() * b_t.sqrt(),
                out * a_t.sqrt() + sample * b_t.sqrt(),
            ),
        };
        x0 * a_prev.sqrt() + eps * (1.0 - a_prev).sqrt()
    }
}
