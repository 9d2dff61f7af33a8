//! Request bodies → [`JobParams`] (transport only: numbers, strings, `WxH`), then the engine's
//! one translation to a job ([`JobParams::into_job`]), which the CLI uses too.

use super::AppState;
use super::choices::{Background, check_background};
use super::edit_input::{EditSources, ImageSource};
use super::error::ApiError;
use super::types::{
    CreateImageEditRequest, CreateImageRequest, LoraParam, OutputFormat, ResponseFormat,
};
use crate::engine::{DalleParams, EditInput, ImageJob, JobParams, LoraRef, ModelInfo};

/// What a generation or an edit asks for, after transport parsing: the model options plus how
/// to deliver the images.
#[derive(Debug, Default)]
pub struct GenParams {
    pub job: JobParams,
    pub model: Option<String>,
    pub size: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub output_format: Option<OutputFormat>,
    pub output_compression: Option<u32>,
    pub stream: bool,
    pub stream_progress: bool,
    pub background: Option<Background>,
    pub style: Option<String>,
    pub user: Option<String>,
}

/// Empty text is the same as absent (form fields and SDKs send `""` for "not set").
fn text(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn loras(v: Option<&[LoraParam]>) -> Vec<LoraRef> {
    v.unwrap_or_default()
        .iter()
        .map(|l| LoraRef {
            name: l.name.clone(),
            weight: l.weight.unwrap_or(1.0) as f32,
        })
        .collect()
}

/// Prem semantics: seed 0 means "pick one"; the seed used is returned per image.
fn seed(v: Option<u64>) -> Option<u64> {
    v.filter(|&s| s != 0)
}

impl From<CreateImageRequest> for GenParams {
    fn from(r: CreateImageRequest) -> Self {
        Self {
            job: JobParams {
                prompt: r.prompt,
                negative_prompt: text(r.negative_prompt),
                n: r.n,
                seed: seed(r.seed),
                steps: r.num_inference_steps,
                guidance_scale: r.guidance_scale,
                scheduler: r.scheduler.map(|s| s.0),
                strength: r.strength,
                loras: loras(r.loras.as_deref()),
                prompt_syntax: r.prompt_syntax.map(|p| p.as_str().into()),
                vae: r.vae.map(|v| v.as_str().into()),
                dalle: DalleParams {
                    cond_scale: r.cond_scale,
                    temperature: r.temperature,
                    top_k: r.top_k,
                    top_p: r.top_p,
                    tokenization: None,
                },
                previews: r.partial_images.unwrap_or(0),
                quality: r.quality.map(|q| q.as_str().into()),
                moderation: r.moderation.map(|m| m.as_str().into()),
                ..JobParams::default()
            },
            model: r.model,
            size: r.size,
            response_format: r.response_format,
            output_format: r.output_format,
            output_compression: r.output_compression,
            stream: r.stream.unwrap_or(false),
            stream_progress: r.stream_progress.unwrap_or(false),
            background: r.background,
            style: r.style,
            user: r.user,
        }
    }
}

impl GenParams {
    /// The text fields of an edit (its uploads are decoded by the caller).
    pub fn from_edit(r: &CreateImageEditRequest) -> Self {
        Self {
            job: JobParams {
                prompt: r.prompt.clone(),
                negative_prompt: text(r.negative_prompt.clone()),
                n: r.n,
                seed: seed(r.seed),
                steps: r.num_inference_steps,
                guidance_scale: r.guidance_scale,
                scheduler: r.scheduler.as_ref().map(|s| s.0.clone()),
                strength: r.strength,
                loras: loras(r.loras.as_ref().map(|j| j.0.as_slice())),
                prompt_syntax: r.prompt_syntax.map(|p| p.as_str().into()),
                vae: r.vae.map(|v| v.as_str().into()),
                previews: r.partial_images.unwrap_or(0),
                quality: r.quality.map(|q| q.as_str().into()),
                input_fidelity: r.input_fidelity.map(|f| f.as_str().into()),
                moderation: r.moderation.map(|m| m.as_str().into()),
                ..JobParams::default()
            },
            model: r.model.clone(),
            size: r.size.clone(),
            response_format: r.response_format,
            output_format: r.output_format,
            output_compression: r.output_compression,
            stream: r.stream.unwrap_or(false),
            stream_progress: r.stream_progress.unwrap_or(false),
            background: r.background,
            style: None,
            user: r.user.clone(),
        }
    }
}

/// A validated request: the engine job plus how to deliver its images.
#[derive(Debug)]
pub struct Prepared {
    pub model: ModelInfo,
    pub job: ImageJob,
    /// `image_generation` or `image_edit`: the stream's event names.
    pub kind: &'static str,
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

/// `WxH`; `None` for absent / empty / `auto` (the family's or the edit image's size). Whether
/// the size suits the model is the catalog's rule, checked when the job is built.
pub fn parse_size(size: Option<&str>) -> Result<Option<(u32, u32)>, ApiError> {
    let s = size.map(str::trim).unwrap_or("");
    if s.is_empty() || s.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid(
            "size",
            format!("invalid size `{s}`: expected WIDTHxHEIGHT, e.g. 512x512"),
        )
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    match (w.parse(), h.parse()) {
        (Ok(w), Ok(h)) => Ok(Some((w, h))),
        _ => Err(bad()),
    }
}

pub fn prepare(
    state: &AppState,
    p: GenParams,
    edit: Option<EditInput>,
) -> Result<Prepared, ApiError> {
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
    super::observe::set_model(&model.id);
    if let Some(u) = p.user.as_deref() {
        super::observe::set_user(u);
    }
    check_background(p.background, p.style.as_deref())?;
    if p.stream && p.response_format == Some(ResponseFormat::Url) {
        return Err(ApiError::invalid(
            "response_format",
            "a stream carries its images as `b64_json` (as OpenAI's do); for links, send \
             `response_format: url` without `stream`",
        ));
    }
    let quality = p.output_compression.unwrap_or(100);
    if quality > 100 {
        return Err(ApiError::invalid(
            "output_compression",
            "`output_compression` must be between 0 and 100",
        ));
    }
    let mut params = p.job;
    (params.width, params.height) = match parse_size(p.size.as_deref())? {
        Some((w, h)) => (Some(w), Some(h)),
        None => (None, None),
    };
    let edit_kind = edit.is_some();
    let mut job = params
        .into_job(model.family, &state.config.rules, edit)
        .map_err(|e| {
            let mut e = ApiError::from(e);
            if e.param.as_deref() == Some("model") {
                e.message = format!("model `{id}`: {}", e.message);
            }
            e
        })?;
    if !p.stream {
        job.previews = 0;
    }
    Ok(Prepared {
        model,
        job,
        kind: if edit_kind {
            "image_edit"
        } else {
            "image_generation"
        },
        response_format: p.response_format.unwrap_or_default(),
        output_format: p.output_format.unwrap_or_default(),
        quality: quality as u8,
        stream: p.stream,
        stream_progress: p.stream_progress,
    })
}

/// An edit form's text fields and its image parts, for
/// [`prepare_edit`](super::edit_input::prepare_edit). The synchronous route and the job route
/// both take this one path.
pub fn edit_form(body: CreateImageEditRequest) -> (GenParams, EditSources) {
    let params = GenParams::from_edit(&body);
    let part = |name: &str, u| (name.to_string(), ImageSource::Part(u));
    let mut images: Vec<_> = body.image.0.into_iter().map(|u| part("image", u)).collect();
    images.extend(body.images.0.into_iter().map(|u| part("image[]", u)));
    let sources = EditSources {
        images,
        mask: body.mask.map(ImageSource::Part),
    };
    (params, sources)
}
