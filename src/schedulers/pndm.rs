//! PNDM in its PLMS form (diffusers `PNDMScheduler` with `skip_prk_steps = true`, SD 1.5's
//! default): a linear multistep method over the last four model outputs.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{AlphaSchedule, Noise, PredictionType, Scheduler, SchedulerConfig, delegate_schedule};

pub struct Pndm<B: Backend> {
    schedule: AlphaSchedule,
    step_ratio: i64,
    prediction: PredictionType,
    ets: Vec<Tensor<B, 4>>,
    cur_sample: Option<Tensor<B, 4>>,
    counter: usize,
}

impl<B: Backend> Pndm<B> {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let spaced = AlphaSchedule::spaced(cfg, steps);
        // diffusers visits the second-lowest timestep twice: [..., t2, t1, t1, t0] ascending
        // becomes the PLMS schedule, reversed.
        let mut asc = spaced.timesteps().to_vec();
        asc.reverse();
        let mut plms = asc[..asc.len() - 1].to_vec();
        if asc.len() >= 2 {
            plms.push(asc[asc.len() - 2]);
        }
        plms.push(asc[asc.len() - 1]);
        plms.reverse();
        Self {
            schedule: spaced.with_timesteps(plms),
            step_ratio: (cfg.num_train_timesteps / steps) as i64,
            prediction: cfg.prediction_type,
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        }
    }

    /// Formula (9) of the PNDM paper, as `_get_prev_sample`.
    fn prev_sample(
        &self,
        sample: Tensor<B, 4>,
        t: i64,
        prev: i64,
        out: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let (a_t, a_prev) = (self.schedule.alpha(t), self.schedule.alpha(prev));
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let out = match self.prediction {
            PredictionType::Epsilon => out,
            PredictionType::VPrediction => out * a_t.sqrt() + sample.clone() * b_t.sqrt(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        sample * sample_coeff - out * ((a_prev - a_t) / denom)
    }
}

impl<B: Backend> Scheduler<B> for Pndm<B> {
    delegate_schedule!(schedule);

    fn step(
        &mut self,
        out: Tensor<B, 4>,
        i: usize,
        sample: Tensor<B, 4>,
        _noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4> {
        let mut t = self.schedule.timesteps()[i] as i64;
        let mut prev = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(out.clone());
        } else {
            prev = t;
            t += self.step_ratio;
        }
        let n = self.ets.len();
        let e = |k: usize| self.ets[n - k].clone();
        let mut sample = sample;
        let out = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            out
        } else if n == 1 && self.counter == 1 {
            if let Some(s) = self.cur_sample.take() {
                sample = s;
            }
            (out + e(1)) / 2.0
        } else if n == 2 {
            (e(1) * 3.0 - e(2)) / 2.0
        } else if n == 3 {
            (e(1) * 23.0 - e(2) * 16.0 + e(3) * 5.0) / 12.0
        } else {
            (e(1) * 55.0 - e(2) * 59.0 + e(3) * 37.0 - e(4) * 9.0) / 24.0
        };
        let prev_sample = self.prev_sample(sample, t, prev, out);
        self.counter += 1;
        prev_sample
    }
}
