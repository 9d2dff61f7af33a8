//! `POST /v1/images/variations` (multipart, as openai-python's `images.create_variation` sends
//! it), and the JSON form of `POST /v1/images/edits` (`images: [{image_url}]`). Both end in the
//! edit path ([`prepare_edit`](super::edit_input::prepare_edit)).
//!
//! A variation is Stable Diffusion image-to-image from the input image at strength 0.6
//! (`sd15_defaults::VARIATION_STRENGTH`) with an empty prompt unless the extension `prompt` is
//! given: the composition and colours stay, the details are repainted. DALL·E models read no
//! image and refuse it (400).

use poem_openapi::types::multipart::Upload;
use poem_openapi::{Multipart, Object};

use super::edit_input::{EditSources, ImageRef, ImageSource};
use super::jobs::GenParams;
use super::types::{
    CreateImageRequest, InputFidelityParam, ModerationParam, OutputFormat, ResponseFormat,
    SchedulerName,
};
use crate::engine::JobParams;

/// Body of `POST /v1/images/variations` (multipart/form-data). Numbers arrive as text parts.
#[derive(Multipart, Debug)]
pub struct CreateImageVariationRequest {
    /// The image to vary (PNG, JPEG or WebP).
    pub image: Upload,
    #[oai(validator(max_length = 256))]
    pub model: Option<String>,
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub n: Option<u32>,
    /// `WxH`; absent: the input's size (multiples of 8).
    #[oai(validator(max_length = 16, pattern = r"^(auto|[0-9]{1,5}x[0-9]{1,5})?$"))]
    pub size: Option<String>,
    pub response_format: Option<ResponseFormat>,
    /// The end user the client acts for; written to the request's log line.
    #[oai(validator(max_length = 256))]
    pub user: Option<String>,
    /// Extension: `png` (default), `jpeg` or `webp`.
    pub output_format: Option<OutputFormat>,
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub output_compression: Option<u32>,
    /// With the SD safety checker on: `auto` or `low`.
    pub moderation: Option<ModerationParam>,
    /// Extension: what the variation should show (default: nothing, a pure variation).
    #[oai(validator(max_length = 32000))]
    pub prompt: Option<String>,
    #[oai(validator(max_length = 32000))]
    pub negative_prompt: Option<String>,
    /// Extension: how far from the input, 0 < s ≤ 1 (default 0.6).
    #[oai(validator(minimum(value = "0", exclusive = true), maximum(value = "1")))]
    pub strength: Option<f64>,
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub seed: Option<u64>,
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub num_inference_steps: Option<u32>,
    #[oai(validator(minimum(value = "0"), maximum(value = "50")))]
    pub guidance_scale: Option<f64>,
    /// As the generations body's `scheduler`: a name of the enum, spelled as listed.
    pub scheduler: Option<SchedulerName>,
}

impl CreateImageVariationRequest {
    pub fn into_parts(self) -> (GenParams, EditSources) {
        let r = CreateImageRequest {
            prompt: self.prompt.unwrap_or_default(),
            model: self.model,
            n: self.n,
            size: self.size,
            response_format: self.response_format,
            output_format: self.output_format,
            output_compression: self.output_compression,
            user: self.user,
            moderation: self.moderation,
            negative_prompt: self.negative_prompt,
            strength: self.strength,
            seed: self.seed,
            num_inference_steps: self.num_inference_steps,
            guidance_scale: self.guidance_scale,
            scheduler: self.scheduler,
            ..CreateImageRequest::default()
        };
        let mut params = GenParams::from(r);
        params.job = JobParams {
            variation: true,
            ..params.job
        };
        let sources = EditSources {
            images: vec![("image".into(), ImageSource::Part(self.image))],
            mask: None,
        };
        (params, sources)
    }
}

/// Body of `POST /v1/images/edits` as JSON: the generations body plus the images as `data:`
/// URLs (OpenAI's JSON edit form).
#[derive(Object, Debug)]
pub struct CreateImageEditJsonRequest {
    /// The image to edit: one `{image_url}` with a `data:` URL (kiln's models edit one image).
    #[oai(validator(min_items = 1, max_items = 16))]
    pub images: Vec<ImageRef>,
    /// Transparent pixels mark the area to repaint (OpenAI convention).
    #[oai(nullable)]
    pub mask: Option<ImageRef>,
    /// `high`: keep more of the input (SD: strength 0.5 when `strength` is not given).
    #[oai(nullable)]
    pub input_fidelity: Option<InputFidelityParam>,
    #[oai(flatten)]
    pub request: CreateImageRequest,
}

impl CreateImageEditJsonRequest {
    pub fn into_parts(self) -> (GenParams, EditSources) {
        let mut params = GenParams::from(self.request);
        params.job.input_fidelity = self.input_fidelity.map(|f| f.as_str().into());
        let images = self
            .images
            .into_iter()
            .enumerate()
            .map(|(i, r)| (format!("images[{i}].image_url"), ImageSource::Ref(r)))
            .collect();
        let sources = EditSources {
            images,
            mask: self.mask.map(ImageRef::into),
        };
        (params, sources)
    }
}

/// Body of `POST /v1/images/jobs/edits` as JSON: the JSON edit plus `webhook_url`.
#[derive(Object, Debug)]
pub struct CreateImageJobEditJsonRequest {
    #[oai(flatten)]
    pub edit: CreateImageEditJsonRequest,
    /// Extension (jobs): an http(s) URL that gets the finished job (POST, JSON), when the
    /// server allows its host (`--webhook-allow`).
    #[oai(nullable, validator(max_length = 2048))]
    pub webhook_url: Option<String>,
}

impl From<ImageRef> for ImageSource {
    fn from(r: ImageRef) -> Self {
        ImageSource::Ref(r)
    }
}
