//! DPM-Solver++ multistep (diffusers `DPMSolverMultistepScheduler`, solver order 2, midpoint):
//! A1111's "DPM++ 2M" (its defaults), "DPM++ 2M Karras" (`use_karras_sigmas`) and "DPM++ 2M SDE
//! Karras" (`algorithm_type = "sde-dpmsolver++"`, which adds noise every step). The solver works
//! on x₀ predictions in log-SNR time λ; the first step and the last (onto σ = 0) are first order.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::{
    add_noise_vp, alpha_sigma_lambda, interp, karras, log_sigmas, multistep_timesteps, sigma_to_t,
    train_sigmas,
};
use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SchedulerOptions, TimestepSpacing};
use crate::error::Result;

pub(super) fn build_2m<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(DpmSolverMultistep::<B>::new(
        cfg, steps, false, false,
    )))
}

pub(super) fn build_2m_karras<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(DpmSolverMultistep::<B>::new(
        cfg, steps, true, false,
    )))
}

pub(super) fn build_2m_sde_karras<B: Backend>(
    cfg: &SchedulerConfig,
    steps: usize,
    _: &SchedulerOptions,
) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(DpmSolverMultistep::<B>::new(
        cfg, steps, true, true,
    )))
}

pub struct DpmSolverMultistep<B: Backend> {
    timesteps: Vec<f64>,
    /// One per timestep, then a final 0 (`final_sigmas_type = "zero"`).
    sigmas: Vec<f64>,
    prediction: PredictionType,
    sde: bool,
    /// The previous step's x₀ prediction (the multistep history of a 2nd-order solver).
    prev_x0: Option<Tensor<B, 4>>,
}

impl<B: Backend> DpmSolverMultistep<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize, karras_sigmas: bool, sde: bool) -> Self {
        let train = train_sigmas(cfg);
        let (timesteps, mut sigmas) = if karras_sigmas {
            // Karras sigmas, each mapped back to the nearest (rounded) train timestep for the UNet.
            let sigmas = karras(&train, steps);
            let logs = log_sigmas(&train);
            let ts = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &logs).round_ties_even())
                .collect();
            (
                ts,
                sigmas
                    .into_iter()
                    .map(|s| s as f32 as f64)
                    .collect::<Vec<_>>(),
            )
        } else {
            let ts = multistep_timesteps(
                cfg,
                steps,
                cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            );
            let sigmas = ts
                .iter()
                .map(|&t| interp(t, &train) as f32 as f64)
                .collect();
            (ts, sigmas)
        };
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            prediction: cfg.prediction_type,
            sde,
            prev_x0: None,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl<B: Backend> Scheduler<B> for DpmSolverMultistep<B> {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn add_noise(
        &self,
        _: &SchedulerConfig,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        add_noise_vp(original, noise, self.sigmas[i])
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _: usize) -> Tensor<B, 4> {
        sample
    }

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let (alpha_s, sigma_s, lambda_s) = alpha_sigma_lambda(self.sigmas[i]);
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.sigmas[i + 1]);
        // convert_model_output: the data prediction x₀.
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - out * sigma_s) / alpha_s,
            PredictionType::VPrediction => sample.clone() * alpha_s - out * sigma_s,
        };
        let h = lambda_t - lambda_s;
        let last = i + 1 == self.timesteps.len();
        // D = x₀ (first order) or x₀ + (x₀ − x₀_prev)/(2 r₀) (2nd-order midpoint), r₀ = h₀/h.
        let d = match (&self.prev_x0, last) {
            (Some(m1), false) => {
                let (_, _, lambda_prev) = alpha_sigma_lambda(self.sigmas[i - 1]);
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
