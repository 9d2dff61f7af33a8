//! LMS (diffusers `LMSDiscreteScheduler`): a linear multistep method in σ over the last four
//! derivatives, whose coefficients are integrals of Lagrange basis polynomials between
//! consecutive sigmas. diffusers integrates them with `scipy.integrate.quad`; the integrands are
//! polynomials of degree ≤ 3, so Gauss–Legendre quadrature with 5 nodes (exact up to degree 9)
//! gives the same values to rounding, deterministically.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Noise, PredictionType, Scheduler, SchedulerConfig, SigmaSchedule, delegate_schedule};

/// diffusers' default `order` argument of `step`.
const ORDER: usize = 4;

pub struct Lms<B: Backend> {
    schedule: SigmaSchedule,
    prediction: PredictionType,
    /// The last `ORDER` derivatives, oldest first.
    derivatives: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Lms<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        Self {
            schedule: SigmaSchedule::discrete(cfg, steps),
            prediction: cfg.prediction_type,
            derivatives: Vec::new(),
        }
    }

    pub fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }

    /// `∫_{σ_i}^{σ_{i+1}} ∏_{k≠j} (τ − σ_{i−k}) / (σ_{i−j} − σ_{i−k}) dτ`: the weight of the
    /// derivative from `j` steps ago (`get_lms_coefficient`).
    pub fn coefficient(&self, order: usize, i: usize, j: usize) -> f64 {
        let s = self.schedule.sigmas();
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != j)
                .map(|k| (tau - s[i - k]) / (s[i - j] - s[i - k]))
                .product::<f64>()
        };
        gauss_legendre(basis, s[i], s[i + 1])
    }
}

/// 5-point Gauss–Legendre quadrature of `f` over `[a, b]` (exact for polynomials of degree ≤ 9).
fn gauss_legendre(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    // The roots of P₅ and their weights, in closed form.
    let r = 2.0 * (10.0f64 / 7.0).sqrt();
    let s70 = 13.0 * 70f64.sqrt();
    let (x1, x2) = ((5.0 - r).sqrt() / 3.0, (5.0 + r).sqrt() / 3.0);
    let (w0, w1, w2) = (128.0 / 225.0, (322.0 + s70) / 900.0, (322.0 - s70) / 900.0);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let at = |x: f64| f(mid + half * x);
    half * (w0 * at(0.0) + w1 * (at(-x1) + at(x1)) + w2 * (at(-x2) + at(x2)))
}

#[cfg(test)]
mod tests {
    use super::gauss_legendre;

    #[test]
    fn quadrature_is_exact_for_degree_9() {
        let got = gauss_legendre(|x| x.powi(9) - 3.0 * x.powi(3) + 2.0, -0.5, 2.0);
        let want = (2f64.powi(10) - 0.5f64.powi(10)) / 10.0
            - 0.75 * (2f64.powi(4) - 0.5f64.powi(4))
            + 2.0 * 2.5;
        assert!((got - want).abs() < 1e-12 * want.abs(), "{got} vs {want}");
        // Reversed bounds (LMS integrates from σ_i down to σ_{i+1}) flip the sign.
        let back = gauss_legendre(|x| x * x, 1.0, 0.0);
        assert!((back + 1.0 / 3.0).abs() < 1e-15, "{back}");
    }
}

impl<B: Backend> Scheduler<B> for Lms<B> {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let sigma = self.schedule.sigmas()[i];
        // (x − x₀)/σ: ε itself for ε-prediction.
        let derivative = match self.prediction {
            PredictionType::Epsilon => out,
            PredictionType::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                sample.clone() * ((1.0 - 1.0 / (c * c)) / sigma) + out / c
            }
        };
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        let mut prev = sample;
        for (j, d) in self.derivatives.iter().rev().take(order).enumerate() {
            prev = prev + d.clone() * self.coefficient(order, i, j);
        }
        prev
    }
}
