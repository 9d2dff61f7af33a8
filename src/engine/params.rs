//! The one translation from what a user asked for to an [`ImageJob`]: checks, family rules and
//! defaults. The server's request bodies and `kiln generate`'s flags both fill a [`JobParams`]
//! and come through [`JobParams::into_job`], so the same options give the same job (and, with
//! the same seed, the same pixels) from either. Each error names the option (`param`) in the
//! server's spelling; the CLI's flag is the same with dashes.

use image::DynamicImage;

mod budget;
mod choices;

use budget::DEFAULT_MAX_WORK;
pub use choices::{InputFidelity, Quality};

use super::loras::{LoraLibrary, LoraRef, take_lora_tags};
use super::{DalleParams, EngineError, ImageJob, InitImage, Moderation};
use crate::image_io::mask::{MaskConvention, edit_mask};
use crate::models::Family;
use crate::models::sd15::{PromptSyntax, VaeChoice};
use crate::schedulers::SchedulerKind;

/// A request's model options as given, before defaults and checks.
#[derive(Debug, Clone, Default)]
pub struct JobParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub n: Option<u32>,
    /// The output size; see `size_for` for a side that is not given.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// `None`: a random seed (returned with each image).
    pub seed: Option<u64>,
    pub steps: Option<u32>,
    pub guidance_scale: Option<f64>,
    pub scheduler: Option<String>,
    pub strength: Option<f64>,
    pub eta: Option<f64>,
    pub clip_skip: Option<usize>,
    /// SD: LoRAs by name (the prompt's `<lora:NAME:W>` tags are added to these).
    pub loras: Vec<LoraRef>,
    /// SD: `a1111` or `plain`; the deployment's default when absent.
    pub prompt_syntax: Option<String>,
    /// SD: the final decoder, `full` (the model's VAE) or `taesd`.
    pub vae: Option<String>,
    pub dalle: DalleParams,
    /// Streamed previews (OpenAI `partial_images`).
    pub previews: u32,
    /// OpenAI's `quality` tier (SD: the steps when none are given); see `params/choices.rs`.
    pub quality: Option<String>,
    /// OpenAI's `input_fidelity` (SD edits: the strength when none is given).
    pub input_fidelity: Option<String>,
    /// `auto` or `low`: how strictly a safety checker judges the images.
    pub moderation: Option<String>,
    /// A variation of the edit image (`/v1/images/variations`): the prompt may be empty, and
    /// the strength defaults to the variation's.
    pub variation: bool,
}

/// An edit's inputs as decoded: the image, and a mask read with `convention`.
#[derive(Debug, Clone)]
pub struct EditInput {
    pub image: DynamicImage,
    pub mask: Option<DynamicImage>,
    pub convention: MaskConvention,
}

/// Bounds a deployment sets; the defaults are the server's (`kiln serve --max-size`,
/// `--max-steps`, `--max-work`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest side of an output image.
    pub max_side: u32,
    pub max_steps: u32,
    pub max_n: u32,
    /// Most work one request may ask for, in steps of a 512×512 image (n × steps × pixels;
    /// see `params/budget.rs`).
    pub max_work: u64,
}

impl Limits {
    /// `kiln generate`'s bounds: a user's own machine, so only what keeps a typo from asking
    /// for hours of work or more memory than any machine has.
    pub const CLI: Limits = Limits {
        max_side: 4096,
        max_steps: 1000,
        max_n: 64,
        // 100 × the server's default: a long night, not a week.
        max_work: 100 * DEFAULT_MAX_WORK,
    };
}

/// What a deployment decides about every request: its bounds and where LoRAs come from.
#[derive(Debug, Clone, Default)]
pub struct JobRules {
    pub limits: Limits,
    pub loras: LoraLibrary,
    /// Whether a LoRA may be named by its path (the CLI: a user's own files), not only by its
    /// name in the library (the server: clients never name server paths).
    pub lora_paths: bool,
    /// How prompts are read when a request does not say (`--prompt-syntax`).
    pub prompt_syntax: PromptSyntax,
}

impl JobRules {
    /// `kiln generate`'s: [`Limits::CLI`], and paths allowed.
    pub fn cli(loras: LoraLibrary) -> Self {
        Self {
            limits: Limits::CLI,
            loras,
            lora_paths: true,
            prompt_syntax: PromptSyntax::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_side: 1024,
            max_steps: 150,
            max_n: 10,
            max_work: DEFAULT_MAX_WORK,
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> EngineError {
    EngineError::Invalid {
        param: Some(param.into()),
        message: message.into(),
    }
}

impl JobParams {
    /// The names of the family-specific options this request sets.
    fn given(&self) -> Vec<&'static str> {
        let d = &self.dalle;
        [
            ("negative_prompt", self.negative_prompt.is_some()),
            ("num_inference_steps", self.steps.is_some()),
            ("guidance_scale", self.guidance_scale.is_some()),
            ("scheduler", self.scheduler.is_some()),
            ("strength", self.strength.is_some()),
            ("eta", self.eta.is_some()),
            ("clip_skip", self.clip_skip.is_some()),
            ("loras", !self.loras.is_empty()),
            ("prompt_syntax", self.prompt_syntax.is_some()),
            ("vae", self.vae.is_some()),
            ("input_fidelity", self.input_fidelity.is_some()),
            ("cond_scale", d.cond_scale.is_some()),
            ("temperature", d.temperature.is_some()),
            ("top_k", d.top_k.is_some()),
            ("top_p", d.top_p.is_some()),
            ("tokenization", d.tokenization.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// Checks every option against `family` and `rules` and builds the job; `edit` makes it
    /// an image-to-image or inpainting job.
    pub fn into_job(
        mut self,
        family: Family,
        rules: &JobRules,
        edit: Option<EditInput>,
    ) -> Result<ImageJob, EngineError> {
        let limits = &rules.limits;
        let (text, tagged) = take_lora_tags(&self.prompt)?;
        if text.trim().is_empty() && !self.variation {
            return Err(invalid("prompt", "`prompt` must not be empty"));
        }
        if self.variation && edit.is_none() {
            return Err(invalid("image", "a variation needs an image"));
        }
        if self.variation && family.edits_unsupported().is_some() {
            return Err(EngineError::Unsupported {
                param: Some("model".into()),
                message: format!(
                    "{} models cannot make variations: they generate from text only (their \
                     decoder reads no image); use a Stable Diffusion model",
                    family.label()
                ),
            });
        }
        self.loras.extend(tagged);
        if self
            .negative_prompt
            .as_deref()
            .is_some_and(|n| take_lora_tags(n).is_ok_and(|(_, l)| !l.is_empty()))
        {
            return Err(invalid(
                "negative_prompt",
                "`<lora:…>` tags belong in the prompt; a LoRA cannot be negated from the negative prompt",
            ));
        }
        if let Some((name, owner)) = family.foreign_option(&self.given()) {
            return Err(invalid(
                name,
                format!(
                    "`{name}` applies to {} only; {} models do not read it",
                    owner.label(),
                    family.label()
                ),
            ));
        }
        let n = self.n.unwrap_or(1);
        if !(1..=limits.max_n).contains(&n) {
            return Err(invalid(
                "n",
                format!("`n` must be between 1 and {}, got {n}", limits.max_n),
            ));
        }
        if self.previews > 3 {
            return Err(invalid(
                "partial_images",
                "`partial_images` must be between 0 and 3",
            ));
        }
        let (width, height) = self.size_for(family, limits, edit.as_ref())?;
        let quality = Quality::parse(self.quality.as_deref())?;
        if self.steps.is_none()
            && let Some(q) = quality
        {
            self.steps = q.steps(family)?;
        }
        let fidelity = InputFidelity::parse(self.input_fidelity.as_deref())?;
        if edit.is_none() && fidelity.is_some() {
            return Err(invalid(
                "input_fidelity",
                "`input_fidelity` applies to edits, which have an input image",
            ));
        }
        let moderation = parsed::<Moderation>("moderation", self.moderation.as_deref())?;
        let steps = self.steps_within(limits)?;
        budget::check(family, limits, n, (width, height), self.steps)?;
        let scheduler = self.scheduler_kind()?;
        self.check_ranges()?;
        let init = edit.map(|e| init_image(family, e)).transpose()?;
        let loras = rules.loras.resolve_all(&self.loras, rules.lora_paths)?;
        let prompt_syntax = parsed::<PromptSyntax>("prompt_syntax", self.prompt_syntax.as_deref())?
            .unwrap_or(rules.prompt_syntax);
        let vae = parsed::<VaeChoice>("vae", self.vae.as_deref())?;
        let seed = self.seed.unwrap_or_else(crate::noise::random_seed);
        let mut job = ImageJob::new(self.prompt, width, height, seed);
        job.negative_prompt = self.negative_prompt.unwrap_or_default();
        job.n = n as usize;
        job.steps = steps;
        job.guidance_scale = self.guidance_scale;
        job.scheduler = scheduler;
        job.strength = if init.is_some() {
            choices::edit_strength(self.strength, fidelity, self.variation)
        } else {
            self.strength
        };
        job.quality = quality.unwrap_or_default();
        job.moderation = moderation.unwrap_or_default();
        job.eta = self.eta;
        job.clip_skip = self.clip_skip;
        job.loras = loras;
        job.prompt_syntax = prompt_syntax;
        job.vae = vae.unwrap_or_default();
        job.dalle = self.dalle;
        job.init = init;
        job.previews = self.previews as usize;
        Ok(job)
    }

    /// The size asked for; a side not given comes from the edit's image (rounded down to 8)
    /// or the family's default. Neither given: an edit's own size when the family takes it (as
    /// diffusers' pipelines do), else the family's default.
    fn size_for(
        &self,
        family: Family,
        limits: &Limits,
        edit: Option<&EditInput>,
    ) -> Result<(u32, u32), EngineError> {
        let default = family.default_size(limits.max_side);
        let image = edit.map(|e| (e.image.width() / 8 * 8, e.image.height() / 8 * 8));
        let (w, h) = match (self.width, self.height, image) {
            (None, None, Some((w, h))) => {
                return Ok(match family.check_size(w, h, limits.max_side) {
                    Ok(()) => (w, h),
                    Err(_) => default,
                });
            }
            (None, None, None) => return Ok(default),
            (w, h, image) => {
                let (dw, dh) = image.unwrap_or(default);
                (w.unwrap_or(dw), h.unwrap_or(dh))
            }
        };
        family
            .check_size(w, h, limits.max_side)
            .map_err(|why| invalid("size", format!("invalid size `{w}x{h}`: {why}")))?;
        Ok((w, h))
    }

    fn steps_within(&self, limits: &Limits) -> Result<Option<usize>, EngineError> {
        match self.steps {
            Some(0) => Err(invalid(
                "num_inference_steps",
                "`num_inference_steps` must be at least 1",
            )),
            Some(s) if s > limits.max_steps => Err(invalid(
                "num_inference_steps",
                format!(
                    "`num_inference_steps` must be at most {} on this server",
                    limits.max_steps
                ),
            )),
            s => Ok(s.map(|s| s as usize)),
        }
    }

    fn scheduler_kind(&self) -> Result<Option<SchedulerKind>, EngineError> {
        let name = self.scheduler.as_deref().map(str::trim);
        name.filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<SchedulerKind>()
                    .map_err(|e| invalid("scheduler", e.to_string()))
            })
            .transpose()
    }

    /// Numbers with a fixed range (the model checks the rest against its own config).
    fn check_ranges(&self) -> Result<(), EngineError> {
        if let Some(g) = self.guidance_scale.filter(|g| !g.is_finite() || *g < 0.0) {
            return Err(invalid(
                "guidance_scale",
                format!("`guidance_scale` must be a non-negative number, got {g}"),
            ));
        }
        if let Some(s) = self
            .strength
            .filter(|s| *s <= 0.0 || *s > 1.0 || s.is_nan())
        {
            return Err(invalid(
                "strength",
                format!("`strength` must be above 0 and at most 1 (0 repaints nothing), got {s}"),
            ));
        }
        if let Some(e) = self.eta.filter(|e| !(0.0..=1.0).contains(e)) {
            return Err(invalid(
                "eta",
                format!("`eta` must be between 0 and 1, got {e}"),
            ));
        }
        if self.clip_skip == Some(0) {
            return Err(invalid("clip_skip", "`clip_skip` must be at least 1"));
        }
        Ok(())
    }
}

/// A named choice (`prompt_syntax`, `vae`), trimmed; empty is absent.
fn parsed<T: std::str::FromStr>(param: &str, v: Option<&str>) -> Result<Option<T>, EngineError>
where
    T::Err: std::fmt::Display,
{
    v.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<T>().map_err(|e| invalid(param, e.to_string())))
        .transpose()
}

/// An edit's init image and mask, if the family edits.
fn init_image(family: Family, e: EditInput) -> Result<InitImage, EngineError> {
    if let Some(why) = family.edits_unsupported() {
        return Err(EngineError::Unsupported {
            param: Some("model".into()),
            message: why.into(),
        });
    }
    let mask = edit_mask(&e.image, e.mask.as_ref(), e.convention, "the mask").map_err(|err| {
        match EngineError::from(err) {
            EngineError::Invalid { message, .. } => invalid("mask", message),
            other => other,
        }
    })?;
    Ok(InitImage {
        image: e.image.to_rgb8(),
        mask,
    })
}

#[cfg(test)]
mod tests;
