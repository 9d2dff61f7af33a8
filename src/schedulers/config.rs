//! The model's scheduler config (`scheduler/scheduler_config.json`), its ᾱ table and the
//! timestep spacings every scheduler starts from.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::models::config::{MAX_TIMESTEPS, config_err, in_range, read_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Linspace,
    Trailing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

/// `scheduler/scheduler_config.json`, defaulting to SD 1.5's published values.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    /// `None` when the config file does not say: each scheduler then uses its own diffusers
    /// default (DDIM/PNDM `leading`, Euler `linspace`), as `from_config` does. SD 1.5's published
    /// config does not say.
    pub timestep_spacing: Option<TimestepSpacing>,
    pub prediction_type: PredictionType,
    /// `None` when the config file does not say: DDIM and DDPM then clip x₀ to [-1, 1] (their
    /// diffusers default), LCM does not. SD 1.5's config says `false`.
    pub clip_sample: Option<bool>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            steps_offset: 1,
            set_alpha_to_one: false,
            timestep_spacing: None,
            prediction_type: PredictionType::Epsilon,
            clip_sample: None,
        }
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path)?;
        cfg.validate().map_err(config_err(path))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.beta_schedule.as_str(), "scaled_linear" | "linear") {
            return Err(format!(
                "`beta_schedule` `{}` not supported",
                self.beta_schedule
            ));
        }
        let t = self.num_train_timesteps;
        in_range("num_train_timesteps", t, 1, MAX_TIMESTEPS)?;
        in_range("steps_offset", self.steps_offset, 0, t - 1)?;
        // β = 0 or 1 makes a σ of 0 or ∞, which the Karras and log-σ schedules divide by.
        for (field, beta) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            if !(beta.is_finite() && beta > 0.0 && beta < 1.0) {
                return Err(format!(
                    "`{field}` is {beta}; it must be above 0 and below 1"
                ));
            }
        }
        Ok(())
    }

    /// Cumulative products of alphas as torch computes them: f32 betas and alphas, the running
    /// product accumulated in f64 and stored as f32.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "linear" => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
            // diffusers takes `beta_start**0.5` in Python (f64) before torch makes it f32; an
            // f32 sqrt is one ulp off for 0.012 and moves ᾱ[999] by 6e-7 relative.
            _ => linspace_f32(
                self.beta_start.sqrt() as f32,
                self.beta_end.sqrt() as f32,
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
        };
        let mut acc = 1f64;
        betas
            .iter()
            .map(|b| {
                acc *= f64::from(1.0 - b);
                acc as f32 as f64
            })
            .collect()
    }
}

/// `torch.linspace` in f32: forward from `start` for the first half, backward from `end` after.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `np.linspace` in f64.
pub fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    (0..n)
        .map(|i| start + (end - start) * i as f64 / (n - 1) as f64)
        .collect()
}

/// Integer timesteps for `steps` steps, descending, per diffusers' `timestep_spacing`.
pub fn spaced_timesteps(cfg: &SchedulerConfig, steps: usize, spacing: TimestepSpacing) -> Vec<f64> {
    let t = cfg.num_train_timesteps;
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = t / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Linspace => linspace_f64(0.0, (t - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / steps as f64;
            (0..steps)
                .map(|i| (t as f64 - i as f64 * ratio).round_ties_even() - 1.0)
                .collect()
        }
    }
}
