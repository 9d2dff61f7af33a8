//! [`AlphaSchedule`]: the timesteps and ᾱ table of the ᾱ-indexed samplers (DDIM, DDPM, PNDM,
//! LCM), whose samples are `√ᾱ·x₀ + √(1−ᾱ)·ε`, the UNet input as it is and the starting noise
//! unscaled. Each sampler holds one and adds its own `step`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{SchedulerConfig, TimestepSpacing, interp, spaced_timesteps};

/// Integer train timesteps, in the order the loop visits them, and ᾱ for every train timestep.
#[derive(Debug, Clone)]
pub struct AlphaSchedule {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// ᾱ "before" timestep 0, where DDIM and PNDM's last step lands: 1 with `set_alpha_to_one`,
    /// else ᾱ₀.
    final_alpha_cumprod: f64,
}

impl AlphaSchedule {
    /// The config's ᾱ table with the given timesteps.
    pub fn new(cfg: &SchedulerConfig, timesteps: Vec<f64>) -> Self {
        let alphas_cumprod = cfg.alphas_cumprod();
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
        }
    }

    /// `steps` timesteps per the config's `timestep_spacing`, `leading` when it does not say
    /// (DDIM, DDPM and PNDM's diffusers default).
    pub fn spaced(cfg: &SchedulerConfig, steps: usize) -> Self {
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        Self::new(cfg, spaced_timesteps(cfg, steps, spacing))
    }

    /// The same ᾱ table with other timesteps.
    pub fn with_timesteps(self, timesteps: Vec<f64>) -> Self {
        Self { timesteps, ..self }
    }

    /// The model timesteps, in the order the loop visits them.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// ᾱ at train timestep `t`; for `t < 0` (past the last step) the final ᾱ.
    pub fn alpha(&self, t: i64) -> f64 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// ᾱ at the timestep after step `i` in the loop, `None` after the last.
    pub fn next_alpha(&self, i: usize) -> Option<f64> {
        self.timesteps
            .get(i + 1)
            .map(|&p| self.alphas_cumprod[p as usize])
    }

    /// Always 1: the loop starts from unscaled noise.
    pub fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The identity: the UNet sees the sample as it is.
    pub fn scale_model_input<B: Backend>(&self, sample: Tensor<B, 4>, _: usize) -> Tensor<B, 4> {
        sample
    }

    /// `√ᾱ·x₀ + √(1−ᾱ)·ε` with ᾱ at the timestep of step `i`.
    pub fn add_noise<B: Backend>(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        i: usize,
    ) -> Tensor<B, 4> {
        let a = interp(self.timesteps[i], &self.alphas_cumprod);
        original * a.sqrt() + noise * (1.0 - a).sqrt()
    }
}
