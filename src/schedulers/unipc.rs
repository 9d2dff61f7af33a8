//! UniPC (diffusers `UniPCMultistepScheduler` defaults: `bh2`, solver order 2, x₀ prediction,
//! corrector on): each step first corrects the sample it was given (UniC, using the model output
//! just computed at it), then predicts the next one (UniP). Orders warm up from 1 and the last
//! predictor step is first order (`lower_order_final`).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::sigmas::alpha_sigma_lambda;
use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

const SOLVER_ORDER: usize = 2;

pub struct UniPc<B: Backend> {
    schedule: SigmaSchedule,
    prediction: PredictionType,
    /// x₀ predictions of the last two steps, oldest first.
    model_outputs: Vec<Tensor<B, 4>>,
    /// The sample the previous predictor started from, and that predictor's order.
    last: Option<(Tensor<B, 4>, usize)>,
}

/// `h·φ₁(h) = e^{hh} − 1`, and `B(h)` for bh2 (the same), with `hh = −h` in x₀ mode.
struct Phi {
    hh: f64,
    h_phi_1: f64,
}

impl Phi {
    fn new(h: f64) -> Self {
        let hh = -h;
        Self {
            hh,
            h_phi_1: hh.exp_m1(),
        }
    }

    /// `b` of the order-2 linear system: `[h_phi_k·k! / B_h]` for k = 1, 2.
    fn b2(&self) -> [f64; 2] {
        let b_h = self.h_phi_1;
        let k1 = self.h_phi_1 / self.hh - 1.0;
        let k2 = k1 / self.hh - 0.5;
        [k1 / b_h, k2 * 2.0 / b_h]
    }
}

impl<B: Backend> UniPc<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: SigmaSchedule::multistep(cfg, steps, false),
            prediction: cfg.prediction_type,
            model_outputs: Vec::new(),
            last: None,
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }

    fn lambda(&self, i: usize) -> f64 {
        alpha_sigma_lambda(self.schedule.sigmas()[i]).2
    }

    /// UniC (`multistep_uni_c_bh_update`): refines `this_sample` (at step `i`) from the previous
    /// sample `x` and the x₀ predictions at both ends.
    fn correct(
        &self,
        i: usize,
        x: Tensor<B, 4>,
        model_t: Tensor<B, 4>,
        order: usize,
    ) -> Tensor<B, 4> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.schedule.sigmas()[i]);
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.schedule.sigmas()[i - 1]);
        let h = lambda_t - lambda_s0;
        let phi = Phi::new(h);
        let n = self.model_outputs.len();
        let m0 = self.model_outputs[n - 1].clone();
        let base = x * (sigma_t / sigma_s0) - m0.clone() * (alpha_t * phi.h_phi_1);
        let k = alpha_t * phi.h_phi_1; // α_t·B_h (bh2: B_h = h·φ₁)
        if order == 1 {
            return base - (model_t - m0) * (k * 0.5);
        }
        // Order 2: solve [[1, 1], [r, 1]]·ρ = b with r = (λ_{i−2} − λ_{i−1})/h.
        let rk = (self.lambda(i - 2) - lambda_s0) / h;
        let [b1, b2] = phi.b2();
        let rho1 = (b1 - b2) / (1.0 - rk);
        let rho_t = b1 - rho1;
        let d1 = (self.model_outputs[n - 2].clone() - m0.clone()) / rk;
        base - (d1 * rho1 + (model_t - m0) * rho_t) * k
    }

    /// UniP (`multistep_uni_p_bh_update`): predicts the sample at step `i + 1`.
    fn predict(&self, i: usize, x: Tensor<B, 4>, order: usize) -> Tensor<B, 4> {
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(self.schedule.sigmas()[i + 1]);
        let (_, sigma_s0, lambda_s0) = alpha_sigma_lambda(self.schedule.sigmas()[i]);
        let h = lambda_t - lambda_s0;
        let phi = Phi::new(h);
        let n = self.model_outputs.len();
        let m0 = self.model_outputs[n - 1].clone();
        let prev = x * (sigma_t / sigma_s0) - m0.clone() * (alpha_t * phi.h_phi_1);
        if order == 1 {
            return prev;
        }
        // Order 2 uses ρ = ½ on D1 = (m1 − m0)/r.
        let rk = (self.lambda(i - 1) - lambda_s0) / h;
        let d1 = (self.model_outputs[n - 2].clone() - m0) / rk;
        prev - d1 * (alpha_t * phi.h_phi_1 * 0.5)
    }
}

impl<B: Backend> Scheduler<B> for UniPc<B> {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let (alpha, sigma, _) = alpha_sigma_lambda(self.schedule.sigmas()[i]);
        let x0 = match self.prediction {
            PredictionType::Epsilon => (sample.clone() - out * sigma) / alpha,
            PredictionType::VPrediction => sample.clone() * alpha - out * sigma,
        };
        let sample = match self.last.take() {
            Some((last_sample, order)) if i > 0 => self.correct(i, last_sample, x0.clone(), order),
            _ => sample,
        };
        if self.model_outputs.len() == SOLVER_ORDER {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        // Warm-up (history length) and lower_order_final both cap the order.
        let order = SOLVER_ORDER
            .min(self.schedule.timesteps().len() - i)
            .min(self.model_outputs.len());
        self.last = Some((sample.clone(), order));
        self.predict(i, sample, order)
    }
}
