//! DDPM (diffusers `DDPMScheduler`, `variance_type = "fixed_small"`): ancestral sampling of the
//! posterior q(x_{t−1} | x_t, x₀) at the inference timesteps, fresh noise on every step with t > 0.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{AlphaSchedule, Noise, PredictionType, Scheduler, SchedulerConfig, delegate_schedule};

pub struct Ddpm {
    schedule: AlphaSchedule,
    prediction: PredictionType,
    clip_sample: bool,
}

impl Ddpm {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: AlphaSchedule::spaced(cfg, steps),
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.unwrap_or(true),
        }
    }
}

impl<B: Backend> Scheduler<B> for Ddpm {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let t = self.schedule.timesteps()[i] as i64;
        // The previous timestep is the next one in the list; after the last, ᾱ = 1.
        let a_t = self.schedule.alpha(t);
        let a_prev = self.schedule.next_alpha(i).unwrap_or(1.0);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let alpha = a_t / a_prev;
        let beta = 1.0 - alpha;
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - out * b_t.sqrt()) / a_t.sqrt(),
            PredictionType::VPrediction => sample.clone() * a_t.sqrt() - out * b_t.sqrt(),
        };
        let x0 = if self.clip_sample {
            x0.clamp(-1.0, 1.0)
        } else {
            x0
        };
        // Formula (7) of the DDPM paper: the posterior mean.
        let mean = x0 * (a_prev.sqrt() * beta / b_t) + sample * (alpha.sqrt() * b_prev / b_t);
        if t == 0 {
            return mean;
        }
        let variance = (b_prev / b_t * beta).max(1e-20);
        mean + noise() * variance.sqrt()
    }
}
