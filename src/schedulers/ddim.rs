//! DDIM (diffusers `DDIMScheduler`): deterministic at `eta = 0` (the pipelines' default); with
//! `eta > 0` each step adds fresh noise of standard deviation `η·√variance`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{AlphaSchedule, Noise, PredictionType, Scheduler, SchedulerConfig, delegate_schedule};

pub struct Ddim {
    schedule: AlphaSchedule,
    step_ratio: i64,
    prediction: PredictionType,
    clip_sample: bool,
    eta: f64,
}

impl Ddim {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: AlphaSchedule::spaced(cfg, steps),
            step_ratio: (cfg.num_train_timesteps / steps) as i64,
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.unwrap_or(true),
            eta: 0.0,
        }
    }

    /// η in [0, 1] (checked by `SchedulerKind::build_with`).
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }
}

impl<B: Backend> Scheduler<B> for Ddim {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let t = self.schedule.timesteps()[i] as i64;
        let (a_t, a_prev) = (
            self.schedule.alpha(t),
            self.schedule.alpha(t - self.step_ratio),
        );
        let b_t = 1.0 - a_t;
        let (x0, eps) = match self.prediction {
            PredictionType::Epsilon => ((sample - out.clone() * b_t.sqrt()) / a_t.sqrt(), out),
            PredictionType::VPrediction => (
                sample.clone() * a_t.sqrt() - out.clone() * b_t.sqrt(),
                out * a_t.sqrt() + sample * b_t.sqrt(),
            ),
        };
        // Like diffusers, the direction term keeps the unclipped ε.
        let x0 = if self.clip_sample {
            x0.clamp(-1.0, 1.0)
        } else {
            x0
        };
        // Formula (16) of the DDIM paper: σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)).
        let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        let prev_sample = x0 * a_prev.sqrt() + eps * (1.0 - a_prev - std * std).sqrt();
        if self.eta > 0.0 {
            prev_sample + noise() * std
        } else {
            prev_sample
        }
    }
}
