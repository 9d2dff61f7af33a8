//! Euler (diffusers `EulerDiscreteScheduler`, Karras et al. Algorithm 2 with `s_churn = 0`):
//! sigma-space, so the model input is scaled by `1/√(σ²+1)` and the timesteps may be fractional.
//! "Euler Karras" is the same sampler on Karras sigmas (`use_karras_sigmas=True`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

pub struct EulerDiscrete {
    schedule: SigmaSchedule,
    prediction: PredictionType,
}

impl EulerDiscrete {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self::with_sigmas(cfg, steps, false)
    }

    /// Euler on Karras sigmas ([`SigmaSchedule::euler`]).
    pub fn new_karras(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self::with_sigmas(cfg, steps, true)
    }

    fn with_sigmas(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool) -> Self {
        Self {
            schedule: SigmaSchedule::euler(cfg, steps, karras_sigmas),
            prediction: cfg.prediction_type,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }
}

impl<B: Backend> Scheduler<B> for EulerDiscrete {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let sigmas = self.schedule.sigmas();
        let sigma = sigmas[i];
        let x0 = match self.prediction {
            PredictionType::Epsilon => sample.clone() - out * sigma,
            PredictionType::VPrediction => {
                out * (-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample.clone() / (sigma * sigma + 1.0)
            }
        };
        let derivative = (sample.clone() - x0) / sigma;
        sample + derivative * (sigmas[i + 1] - sigma)
    }
}
