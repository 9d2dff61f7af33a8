//! Request → engine job: defaults, semantic validation (each error names its `param`).

use super::AppState;
use super::error::ApiError;
use super::types::{CreateImageEditRequest, CreateImageRequest, OutputFormat, ResponseFormat};
use crate::engine::{DalleParams, Family, ImageJob, ModelInfo, SchedulerKind};

/// The fields generations and edits share, after transport parsing.
#[derive(Debug, Default)]
pub struct GenParams {
    pub prompt: String,
    pub model: Option<String>,
    pub n: Option<u32>,
    pub size: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub output_format: Option<OutputFormat>,
    pub output_compression: Option<u32>,
    pub stream: bool,
    pub partial_images: u32,
    pub stream_progress: bool,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub guidance_scale: Option<f64>,
    pub num_inference_steps: Option<u32>,
    pub scheduler: Option<String>,
    pub strength: Option<f64>,
    pub dalle: DalleParams,
}

impl From<CreateImageRequest> for GenParams {
    fn from(r: CreateImageRequest) -> Self {
        Self {
            prompt: r.prompt,
            model: r.model,
            n: r.n,
            size: r.size,
            response_format: r.response_format,
            output_format: r.output_format,
            output_compression: r.output_compression,
            stream: r.stream.unwrap_or(false),
            partial_images: r.partial_images.unwrap_or(0),
            stream_progress: r.stream_progress.unwrap_or(false),
            negative_prompt: r.negative_prompt,
            seed: r.seed,
            guidance_scale: r.guidance_scale,
            num_inference_steps: r.num_inference_steps,
            scheduler: r.scheduler,
            strength: r.strength,
            dalle: DalleParams {
                cond_scale: r.cond_scale,
                temperature: r.temperature,
                top_k: r.top_k,
                top_p: r.top_p,
            },
        }
    }
}

impl GenParams {
    /// The text fields of an edit (its uploads are handled by the caller).
    pub fn from_edit(r: &CreateImageEditRequest) -> Self {
        Self {
            prompt: r.prompt.clone(),
            model: r.model.clone(),
            n: r.n,
            size: r.size.clone(),
            response_format: r.response_format,
            output_format: r.output_format,
            output_compression: r.output_compression,
            negative_prompt: r.negative_prompt.clone(),
            seed: r.seed,
            guidance_scale: r.guidance_scale,
            num_inference_steps: r.num_inference_steps,
            scheduler: r.scheduler.clone(),
            strength: r.strength,
            ..Self::default()
        }
    }
}

/// A validated request: the engine job plus how to deliver its images.
#[derive(Debug)]
pub struct Prepared {
    pub model: ModelInfo,
    pub job: ImageJob,
    pub response_format: ResponseFormat,
    pub output_format: OutputFormat,
    pub quality: u8,
    pub stream: bool,
    pub stream_progress: bool,
}

impl Prepared {
    pub fn size(&self) -> String {
        format!("{}x{}", self.job.width, self.job.height)
    }
}

/// `WxH`, or the family default for absent / empty / `auto`.
pub fn parse_size(
    size: Option<&str>,
    family: Family,
    max_side: u32,
) -> Result<(u32, u32), ApiError> {
    // SD: 512x512 (its training size), or the server's bound if that is smaller.
    let sd = 512.min(max_side / 8 * 8).max(64);
    let default = family.native_size().unwrap_or((sd, sd));
    let s = size.map(str::trim).unwrap_or("");
    if s.is_empty() || s.eq_ignore_ascii_case("auto") {
        return Ok(default);
    }
    let bad = |why: &str| ApiError::invalid("size", format!("invalid size `{s}`: {why}"));
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| bad("expected WIDTHxHEIGHT, e.g. 512x512"))?;
    let (w, h): (u32, u32) = match (w.parse(), h.parse()) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(bad("expected WIDTHxHEIGHT, e.g. 512x512")),
    };
    let min = if family == Family::Sd15 { 64 } else { 16 };
    if w < min || h < min || w > max_side || h > max_side {
        return Err(bad(&format!(
            "each side must be between {min} and {max_side} pixels"
        )));
    }
    if family == Family::Sd15 && (w % 8 != 0 || h % 8 != 0) {
        return Err(bad("Stable Diffusion sizes must be multiples of 8"));
    }
    Ok((w, h))
}

pub fn prepare(state: &AppState, p: GenParams) -> Result<Prepared, ApiError> {
    if p.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    let id = p
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or(&state.default_model);
    let model = state.engine.model(id).ok_or_else(|| {
        let known: Vec<String> = state.engine.models().into_iter().map(|m| m.id).collect();
        ApiError::new(
            poem::http::StatusCode::NOT_FOUND,
            format!(
                "the model `{id}` does not exist; available: {}",
                known.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found")
    })?;
    let n = p.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and 10, got {n}"),
        ));
    }
    let (width, height) = parse_size(p.size.as_deref(), model.family, state.config.max_side)?;
    if p.partial_images > 3 {
        return Err(ApiError::invalid(
            "partial_images",
            "`partial_images` must be between 0 and 3",
        ));
    }
    let quality = p.output_compression.unwrap_or(100);
    if quality > 100 {
        return Err(ApiError::invalid(
            "output_compression",
            "`output_compression` must be between 0 and 100",
        ));
    }
    let scheduler = match p
        .scheduler
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => Some(
            s.parse::<SchedulerKind>()
                .map_err(|e| ApiError::invalid("scheduler", e.to_string()))?,
        ),
    };
    if let Some(g) = p.guidance_scale.filter(|g| !g.is_finite() || *g < 0.0) {
        return Err(ApiError::invalid(
            "guidance_scale",
            format!("`guidance_scale` must be a non-negative number, got {g}"),
        ));
    }
    if let Some(s) = p.strength.filter(|s| !(0.0..=1.0).contains(s)) {
        return Err(ApiError::invalid(
            "strength",
            format!("`strength` must be between 0 and 1, got {s}"),
        ));
    }
    let steps = match p.num_inference_steps {
        Some(0) => {
            return Err(ApiError::invalid(
                "num_inference_steps",
                "`num_inference_steps` must be at least 1",
            ));
        }
        Some(s) if s > state.config.max_steps => {
            return Err(ApiError::invalid(
                "num_inference_steps",
                format!(
                    "`num_inference_steps` must be at most {} on this server",
                    state.config.max_steps
                ),
            ));
        }
        s => s.map(|s| s as usize),
    };
    // Prem semantics: 0 or absent means "pick one"; the seed used is returned per image.
    let seed = p
        .seed
        .filter(|&s| s != 0)
        .unwrap_or_else(crate::noise::random_seed);
    let mut job = ImageJob::new(p.prompt, width, height, seed);
    job.negative_prompt = p.negative_prompt.unwrap_or_default();
    job.n = n as usize;
    job.steps = steps;
    job.guidance_scale = p.guidance_scale;
    job.scheduler = scheduler;
    job.strength = p.strength;
    job.dalle = p.dalle;
    job.previews = if p.stream {
        p.partial_images as usize
    } else {
        0
    };
    Ok(Prepared {
        model,
        job,
        response_format: p.response_format.unwrap_or_default(),
        output_format: p.output_format.unwrap_or_default(),
        quality: quality as u8,
        stream: p.stream,
        stream_progress: p.stream_progress,
    })
}
