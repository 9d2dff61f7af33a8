//! LCM (diffusers `LCMScheduler`, for latent-consistency checkpoints and LoRA-merged weights):
//! each step maps the sample straight to a denoised estimate (with the consistency boundary
//! scalings), then re-noises it to the next timestep with fresh noise, except on the last step.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{AlphaSchedule, Noise, PredictionType, Scheduler, SchedulerConfig, delegate_schedule};
use crate::error::{Error, Result};

/// diffusers' defaults `original_inference_steps` (the distillation schedule) and `timestep_scaling`.
const ORIGINAL_STEPS: usize = 50;
const TIMESTEP_SCALING: f64 = 10.0;

pub struct Lcm {
    schedule: AlphaSchedule,
    prediction: PredictionType,
    clip_sample: bool,
}

impl Lcm {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let original = ORIGINAL_STEPS.min(cfg.num_train_timesteps);
        if steps > original {
            return Err(Error::invalid(format!(
                "the LCM scheduler takes at most {original} steps, got {steps}"
            )));
        }
        // The distillation schedule k−1, 2k−1, …, T−1 (descending), sampled at `steps` evenly
        // spaced positions, floored as numpy floors `linspace(0, original, steps, endpoint=False)`.
        let k = cfg.num_train_timesteps / original;
        let origin: Vec<usize> = (1..=original).rev().map(|j| j * k - 1).collect();
        let stride = original as f64 / steps as f64;
        let timesteps = (0..steps)
            .map(|j| origin[((j as f64 * stride).floor() as usize).min(original - 1)] as f64)
            .collect();
        Ok(Self {
            schedule: AlphaSchedule::new(cfg, timesteps),
            prediction: cfg.prediction_type,
            clip_sample: cfg.clip_sample.unwrap_or(false),
        })
    }
}

impl<B: Backend> Scheduler<B> for Lcm {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let t = self.schedule.timesteps()[i];
        let a_t = self.schedule.alpha(t as i64);
        let b_t = 1.0 - a_t;
        // get_scalings_for_boundary_condition_discrete with σ_data = 0.5.
        let st = t * TIMESTEP_SCALING;
        let c_skip = 0.25 / (st * st + 0.25);
        let c_out = st / (st * st + 0.25).sqrt();
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - out * b_t.sqrt()) / a_t.sqrt(),
            PredictionType::VPrediction => sample.clone() * a_t.sqrt() - out * b_t.sqrt(),
        };
        let x0 = if self.clip_sample {
            x0.clamp(-1.0, 1.0)
        } else {
            x0
        };
        let denoised = x0 * c_out + sample * c_skip;
        match self.schedule.next_alpha(i) {
            Some(a_prev) => denoised * a_prev.sqrt() + noise() * (1.0 - a_prev).sqrt(),
            None => denoised,
        }
    }
}
