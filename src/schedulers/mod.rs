//! Diffusion schedulers behind one trait. Schedule math (betas, timesteps, sigmas, per-step
//! coefficients) runs on the host; tensors only see scalar multiply-adds, so a step costs no
//! device→host sync.
//!
//! Adding a scheduler: a file here, one entry in the `registry!` invocation below, and its test.

mod alpha_schedule;
mod config;
mod ddim;
mod ddpm;
mod dpm_solver_multistep;
mod euler_ancestral;
mod euler_discrete;
mod heun;
mod lcm;
mod lms;
mod pndm;
mod sigma_schedule;
mod sigmas;
mod unipc;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::{Error, Result};

pub use alpha_schedule::AlphaSchedule;
pub use config::{
    PredictionType, SchedulerConfig, TimestepSpacing, linspace_f32, linspace_f64, spaced_timesteps,
};
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use dpm_solver_multistep::DpmSolverMultistep;
pub use euler_ancestral::EulerAncestral;
pub use euler_discrete::EulerDiscrete;
pub use heun::Heun;
pub use lcm::Lcm;
pub use lms::Lms;
pub use pndm::Pndm;
pub use sigma_schedule::SigmaSchedule;
pub use unipc::UniPc;

/// One denoising loop's state. `step_index` counts calls, `0..timesteps().len()`.
pub trait Scheduler<B: Backend>: Send {
    /// The model timesteps, in the order the loop visits them.
    fn timesteps(&self) -> &[f64];
    /// Factor applied to the starting noise.
    fn init_noise_sigma(&self) -> f64;
    /// The UNet input for this step (identity except for sigma-space samplers).
    fn scale_model_input(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4>;
    /// Advances `sample` with the (guided) model output; returns the previous sample.
    /// Stochastic samplers call `noise` for a standard-normal tensor shaped like `sample`;
    /// deterministic ones never do.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: &mut Noise<'_, B>,
    ) -> Tensor<B, 4>;
    /// Model calls per step (2 for Heun).
    fn order(&self) -> usize {
        1
    }
    /// `original` (clean latents x₀) noised to the level of timestep index `step_index`: where
    /// img2img starts and, for 4-channel inpainting, what is blended back outside the mask. As
    /// diffusers' `scheduler.add_noise` once the pipeline has called `set_begin_index`, which
    /// makes the sigma-space samplers read their own `sigmas[step_index]` (for Karras sigmas not
    /// the σ of the rounded timestep); the ᾱ-indexed schedulers (DDIM, DDPM, PNDM, LCM) mix
    /// `√ᾱ·x₀ + √(1−ᾱ)·ε` with ᾱ at the timestep. The scheduler keeps what it needs from the
    /// config it was built with.
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        step_index: usize,
    ) -> Tensor<B, 4>;
}

/// The schedule half of [`Scheduler`] (`timesteps`, `init_noise_sigma`, `scale_model_input`,
/// `add_noise`), delegated to the [`SigmaSchedule`] or [`AlphaSchedule`] in `self.$field`; used
/// inside a sampler's `impl Scheduler<B>`, which then adds its `step`.
macro_rules! delegate_schedule {
    ($field:ident) => {
        fn timesteps(&self) -> &[f64] {
            self.$field.timesteps()
        }

        fn init_noise_sigma(&self) -> f64 {
            self.$field.init_noise_sigma()
        }

        fn scale_model_input(&self, sample: Tensor<B, 4>, i: usize) -> Tensor<B, 4> {
            self.$field.scale_model_input(sample, i)
        }

        fn add_noise(&self, original: Tensor<B, 4>, noise: Tensor<B, 4>, i: usize) -> Tensor<B, 4> {
            self.$field.add_noise(original, noise, i)
        }
    };
}
use delegate_schedule;

/// `np.interp(x, arange(len(ys)), ys)`.
pub fn interp(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let i = x.floor() as usize;
    ys[i] + (ys[i + 1] - ys[i]) * (x - i as f64)
}

/// Where stochastic samplers get their noise: the pipeline's seeded per-image streams, or fixed
/// tensors in tests.
pub type Noise<'a, B> = dyn FnMut() -> Tensor<B, 4> + 'a;

/// What a scheduler's builder gets: the model's config, the step count (already checked to be in
/// `1..=num_train_timesteps`) and the request's options.
type Build<B> = fn(&SchedulerConfig, usize, &SchedulerOptions) -> Result<Box<dyn Scheduler<B>>>;

/// Boxes a built sampler as a [`Build`] returns it.
fn boxed<B: Backend, S: Scheduler<B> + 'static>(scheduler: S) -> Result<Box<dyn Scheduler<B>>> {
    Ok(Box::new(scheduler))
}

/// Generates [`SchedulerKind`], [`REGISTRY`] and the builder dispatch from one entry per scheduler:
/// `Kind => |cfg, steps, opts| constructor, [our id, diffusers class, A1111 label, other names…];`.
macro_rules! registry {
    ($($kind:ident => $build:expr, [$($name:literal),+ $(,)?];)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum SchedulerKind {
            $($kind),+
        }

        /// Names people use for each scheduler: our id first, then diffusers' class name and the
        /// A1111 label. Matching ignores case, spaces, `-` and `_`.
        pub const REGISTRY: &[(SchedulerKind, &[&str])] = &[$((SchedulerKind::$kind, &[$($name),+])),+];

        fn builder<B: Backend>(kind: SchedulerKind) -> Build<B> {
            match kind {
                $(SchedulerKind::$kind => $build),+
            }
        }
    };
}

registry! {
    Ddim => |cfg, steps, opts| boxed(Ddim::new(cfg, steps).with_eta(opts.eta.unwrap_or(0.0))),
        ["ddim", "DDIMScheduler", "DDIM"];
    Pndm => |cfg, steps, _| boxed(Pndm::<B>::new(cfg, steps)),
        ["pndm", "PNDMScheduler", "PLMS"];
    EulerDiscrete => |cfg, steps, _| boxed(EulerDiscrete::new(cfg, steps)),
        ["euler", "EulerDiscreteScheduler", "Euler", "euler_discrete"];
    EulerKarras => |cfg, steps, _| boxed(EulerDiscrete::new_karras(cfg, steps)),
        ["euler_karras", "Euler Karras"];
    EulerAncestral => |cfg, steps, _| boxed(EulerAncestral::new(cfg, steps)),
        ["euler_a", "EulerAncestralDiscreteScheduler", "Euler a", "euler_ancestral"];
    Heun => |cfg, steps, _| boxed(Heun::<B>::new(cfg, steps)),
        ["heun", "HeunDiscreteScheduler", "Heun"];
    Lms => |cfg, steps, _| boxed(Lms::<B>::new(cfg, steps)),
        ["lms", "LMSDiscreteScheduler", "LMS"];
    DpmPp2m => |cfg, steps, _| boxed(DpmSolverMultistep::<B>::new(cfg, steps, false, false)),
        ["dpmpp_2m", "DPMSolverMultistepScheduler", "DPM++ 2M"];
    DpmPp2mKarras => |cfg, steps, _| boxed(DpmSolverMultistep::<B>::new(cfg, steps, true, false)),
        ["dpmpp_2m_karras", "DPM++ 2M Karras"];
    DpmPp2mSdeKarras => |cfg, steps, _| boxed(DpmSolverMultistep::<B>::new(cfg, steps, true, true)),
        ["dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras"];
    UniPc => |cfg, steps, _| boxed(UniPc::<B>::new(cfg, steps)),
        ["unipc", "UniPCMultistepScheduler", "UniPC"];
    Ddpm => |cfg, steps, _| boxed(Ddpm::new(cfg, steps)),
        ["ddpm", "DDPMScheduler", "DDPM"];
    Lcm => |cfg, steps, _| boxed(Lcm::new(cfg, steps)?),
        ["lcm", "LCMScheduler", "LCM"];
}

/// Per-request sampler options beyond the model's scheduler config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedulerOptions {
    /// DDIM's η (0 = deterministic, 1 = DDPM-like variance). DDIM only.
    pub eta: Option<f64>,
}

fn canonical(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

impl std::str::FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let want = canonical(s);
        REGISTRY
            .iter()
            .find(|(_, names)| names.iter().any(|n| canonical(n) == want))
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown scheduler `{s}`; known: {}",
                    Self::ids().join(", ")
                ))
            })
    }
}

impl SchedulerKind {
    pub fn id(self) -> &'static str {
        REGISTRY
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| n[0])
            .unwrap_or("?")
    }

    /// A1111's label ("Euler a", "DPM++ 2M Karras", …), for PNG infotext.
    pub fn a1111_label(self) -> &'static str {
        let names = REGISTRY
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or(&[]);
        names
            .iter()
            .skip(1)
            .find(|n| n.chars().any(char::is_uppercase) && !n.ends_with("Scheduler"))
            .copied()
            .unwrap_or_else(|| self.id())
    }

    pub fn ids() -> Vec<&'static str> {
        REGISTRY.iter().map(|(_, n)| n[0]).collect()
    }

    /// Builds the scheduler for `steps` inference steps.
    pub fn build<B: Backend>(
        self,
        cfg: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler<B>>> {
        self.build_with(cfg, steps, &SchedulerOptions::default())
    }

    /// [`Self::build`] with per-request options (`eta`).
    pub fn build_with<B: Backend>(
        self,
        cfg: &SchedulerConfig,
        steps: usize,
        opts: &SchedulerOptions,
    ) -> Result<Box<dyn Scheduler<B>>> {
        if steps == 0 || steps > cfg.num_train_timesteps {
            return Err(Error::invalid(format!(
                "steps must be between 1 and {}, got {steps}",
                cfg.num_train_timesteps
            )));
        }
        if let Some(eta) = opts.eta {
            if self != SchedulerKind::Ddim {
                return Err(Error::invalid(format!(
                    "eta applies to the DDIM scheduler only, not `{}`",
                    self.id()
                )));
            }
            // Beyond 1 the DDIM direction term takes the square root of a negative number.
            if !(0.0..=1.0).contains(&eta) {
                return Err(Error::invalid(format!(
                    "eta must be between 0 and 1, got {eta}"
                )));
            }
        }
        builder::<B>(self)(cfg, steps, opts)
    }
}
