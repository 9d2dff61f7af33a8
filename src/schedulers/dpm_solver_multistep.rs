//! DPM-Solver++ multistep (diffusers `DPMSolverMultistepScheduler`, solver order 2, midpoint):
//! A1111's "DPM++ 2M" (its defaults), "DPM++ 2M Karras" (`use_karras_sigmas`) and "DPM++ 2M SDE
//! Karras" (`algorithm_type = "sde-dpmsolver++"`, which adds noise every step). The solver works
//! on x₀ predictions in log-SNR time λ; the first step and the last (onto σ = 0) are first order.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::alpha_sigma_lambda;
use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

pub struct DpmSolverMultistep<B: Backend> {
    schedule: SigmaSchedule,
    prediction: PredictionType,
    sde: bool,
    /// The previous step's x₀ prediction (the multistep history of a 2nd-order solver).
    prev_x0: Option<Tensor<B, 4>>,
}

impl<B: Backend> DpmSolverMultistep<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool, sde: bool) -> Self {
        Self {
            schedule: SigmaSchedule::multistep(cfg, steps, karras_sigmas),
            prediction: cfg.prediction_type,
            sde,
            prev_x0: None,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }
}

impl<B: Backend> Scheduler<B> for DpmSolverMultistep<B> {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let sigmas = self.schedule.sigmas();
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(sigmas[i + 1]);
        // convert_model_output: the data prediction x₀.
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - out * sigma_s) / alpha_s,
            PredictionType::VPrediction => sample.clone() * alpha_s - out * sigma_s,
        };
        let h = lambda_t - lambda_s;
        let last = i + 1 == self.schedule.timesteps().len();
        // D = x₀ (first order) or x₀ + (x₀ − x₀_prev)/(2 r₀) (2nd-order midpoint), r₀ = h₀/h.
        let d = match (&self.prev_x0, last) {
            (Some(m1), false) => {
                let (_, _, lambda_prev) = alpha_sigma_lambda(sigmas[i - 1]);
                let r0 = (lambda_s - lambda_prev) / h;
                x0.clone() + (x0.clone() - m1.clone()) * (0.5 / r0)
            }
            _ => x0.clone(),
        };
        self.prev_x0 = Some(x0);
        if self.sde {
            // diffusers draws the noise every step; at σ = 0 its weight is 0.
            let z = noise();
            let e2h = (-2.0 * h).exp();
            sample * (sigma_t / sigma_s * (-h).exp())
                + d * (alpha_t * (1.0 - e2h))
                + z * (sigma_t * (1.0 - e2h).sqrt())
        } else {
            sample * (sigma_t / sigma_s) - d * (alpha_t * ((-h).exp() - 1.0))
        }
    }
}
