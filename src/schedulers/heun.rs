//! Heun (diffusers `HeunDiscreteScheduler`, Karras et al. Algorithm 1 with no churn): each step
//! is an Euler predictor and a trapezoidal corrector, so it calls the model twice. diffusers
//! expresses that as a longer timestep list `[t0, t1, t1, t2, t2, …]` (2n−1 entries; the last
//! step is a plain Euler step onto σ = 0), and the loop simply visits every entry.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

pub struct Heun<B: Backend> {
    /// `[t0, t1, t1, t2, t2, …]` and `[σ0, σ1, σ1, σ2, σ2, …, σ_{n−1}, σ_{n−1}, 0]`.
    schedule: SigmaSchedule,
    prediction: PredictionType,
    /// The predictor's derivative, step size and starting sample while a corrector is due.
    first: Option<(Tensor<B, 4>, f64, Tensor<B, 4>)>,
}

impl<B: Backend> Heun<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: SigmaSchedule::discrete(cfg, steps).doubled(),
            prediction: cfg.prediction_type,
            first: None,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }

    /// `(x − x₀)/σ` for the model output at noise level `sigma`.
    fn derivative(&self, out: Tensor<B, 4>, sample: Tensor<B, 4>, sigma: f64) -> Tensor<B, 4> {
        match self.prediction {
            PredictionType::Epsilon => out,
            PredictionType::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                sample * ((1.0 - 1.0 / (c * c)) / sigma) + out / c
            }
        }
    }
}

impl<B: Backend> Scheduler<B> for Heun<B> {
    delegate_schedule!(schedule);

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        match self.first.take() {
            None => {
                // Predictor: Euler from σ_i to σ_{i+1}; remember it for the corrector.
                let (sigma, next) = (self.schedule.sigmas()[i], self.schedule.sigmas()[i + 1]);
                let d = self.derivative(out, sample.clone(), sigma);
                let dt = next - sigma;
                let prev = sample.clone() + d.clone() * dt;
                self.first = Some((d, dt, sample));
                prev
            }
            Some((d1, dt, start)) => {
                // Corrector: average the derivatives at both ends, restart from the first sample.
                let d2 = self.derivative(out, sample, self.schedule.sigmas()[i]);
                start + (d1 + d2) * (dt / 2.0)
            }
        }
    }
}
