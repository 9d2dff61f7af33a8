//! Euler ancestral (diffusers `EulerAncestralDiscreteScheduler`, A1111 "Euler a"): an Euler step
//! down to `σ_down`, then fresh noise of standard deviation `σ_up`, with `σ_down² + σ_up² = σ_next²`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

pub struct EulerAncestral {
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerAncestral {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: SigmaSchedule::discrete(cfg, steps),
            prediction: cfg.prediction_type,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }
}

impl<B: Backend> Scheduler<B> for EulerAncestral {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let (sigma, next) = (self.schedule.sigmas()[i], self.schedule.sigmas()[i + 1]);
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
