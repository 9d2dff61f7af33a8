//! Request and response bodies of the OpenAI-compatible Images API, plus kiln's extensions.
//! These derive the OpenAPI schemas; `openapi.json` is generated from them.

use poem_openapi::{Enum, Object};

pub use super::choices::{
    Background, InputFidelityParam, ModerationParam, QualityParam, QualityTier,
};
pub use super::edit_form::{CreateImageEditRequest, CreateImageJobEditRequest};
pub use super::scheduler_param::SchedulerName;
pub use super::usage::{InputTokensDetails, OutputTokensDetails, Usage};

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResponseFormat {
    /// Base64 PNG/JPEG/WebP in the response (the default, as in the Prem services).
    #[default]
    #[oai(rename = "b64_json")]
    B64Json,
    /// A link to `/v1/images/files/{id}`, valid for a limited time.
    #[oai(rename = "url")]
    Url,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[oai(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

/// Extension (SD): how the prompt and negative prompt are read.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum PromptSyntaxParam {
    /// A1111: `(word)` ×1.1, `(word:1.3)`, `[word]` ÷1.1, `BREAK`, no 77-token limit.
    A1111,
    /// diffusers: the text as it is, cut at 77 tokens.
    Plain,
}

/// Extension (SD): the final decoder.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum VaeParam {
    /// The model's own VAE.
    Full,
    /// TAESD (when the server has it): about 10× faster, slightly softer.
    Taesd,
}

impl PromptSyntaxParam {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A1111 => "a1111",
            Self::Plain => "plain",
        }
    }
}

impl VaeParam {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Taesd => "taesd",
        }
    }
}

/// Extension (SD): a LoRA from the server's LoRA folder, applied to this request only.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct LoraParam {
    /// The LoRA's name: its file name without `.safetensors` (`GET /v1/loras` lists them).
    #[oai(validator(min_length = 1, max_length = 256))]
    pub name: String,
    /// How strongly it applies (default 1; negative values subtract it).
    #[oai(validator(minimum(value = "-10"), maximum(value = "10")))]
    pub weight: Option<f64>,
}

/// Body of `POST /v1/images/generations`. Unknown fields are ignored.
#[derive(Object, Debug, Default)]
pub struct CreateImageRequest {
    /// A text description of the desired image(s).
    #[oai(validator(min_length = 1, max_length = 32000))]
    pub prompt: String,
    /// Model id from `GET /v1/models`; the server's default model when absent.
    #[oai(nullable, validator(max_length = 256))]
    pub model: Option<String>,
    /// Number of images, 1–10, within the server's work budget (`--max-work`: n × steps ×
    /// pixels).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "10")))]
    pub n: Option<u32>,
    /// `WxH`. Stable Diffusion: each side a multiple of 8 from 8 up to the server's
    /// `--max-size` (default 1024; default size 512x512). DALL·E: each side 16 to `--max-size`,
    /// rendered at 256x256 and resized. Empty or `auto`: the model's default.
    #[oai(
        nullable,
        validator(max_length = 16, pattern = r"^(auto|[0-9]{1,5}x[0-9]{1,5})?$")
    )]
    pub size: Option<String>,
    /// `b64_json` (default) or `url`.
    #[oai(nullable)]
    pub response_format: Option<ResponseFormat>,
    /// `png` (default), `jpeg` or `webp` (lossless).
    #[oai(nullable)]
    pub output_format: Option<OutputFormat>,
    /// JPEG quality 0–100 (default 100).
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "100")))]
    pub output_compression: Option<u32>,
    /// Stream Server-Sent Events (`image_generation.partial_image`, `image_generation.completed`).
    /// A job (`POST /v1/images/jobs/generations`) cannot stream: there it must be absent or false.
    #[oai(nullable)]
    pub stream: Option<bool>,
    /// Previews to stream before the final image, 0–3.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "3")))]
    pub partial_images: Option<u32>,
    /// Extension: also stream `image_generation.progress` events (step, total).
    #[oai(nullable)]
    pub stream_progress: Option<bool>,
    /// `low`, `medium`, `high` (`standard`, `hd`, `auto` too). SD: 12, 25 or 50 steps when
    /// `num_inference_steps` is not given; DALL·E: `medium` only.
    #[oai(nullable)]
    pub quality: Option<QualityParam>,
    /// DALL·E 3's `vivid`/`natural`: no kiln model has a style setting, so any value is refused.
    #[oai(nullable, validator(max_length = 64))]
    pub style: Option<String>,
    /// The end user the client acts for; written to the request's log line.
    #[oai(nullable, validator(max_length = 256))]
    pub user: Option<String>,
    /// `auto` or `opaque`; `transparent` is refused (kiln's models paint every pixel).
    #[oai(nullable)]
    pub background: Option<Background>,
    /// With the SD safety checker on: `auto` (standard threshold) or `low` (less strict).
    #[oai(nullable)]
    pub moderation: Option<ModerationParam>,
    /// Extension: what the image should not show.
    #[oai(nullable, validator(max_length = 32000))]
    pub negative_prompt: Option<String>,
    /// Extension: seed of image 0 (image k uses seed + k); 0 or absent = random.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "4294967295"))
    )]
    pub seed: Option<u64>,
    /// Extension: classifier-free guidance scale (SD, default 7.5).
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "50")))]
    pub guidance_scale: Option<f64>,
    /// Extension: denoising steps (SD, default 25): 1 to the server's `--max-steps` (default
    /// 150); never more than SD 1.5's 1000 training timesteps.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub num_inference_steps: Option<u32>,
    /// Extension (SD): the sampler, `pndm` by default. kiln's ids (`ddim`, `euler`, `euler_a`,
    /// `dpmpp_2m_karras`, …), diffusers' class names (`EulerAncestralDiscreteScheduler`) and
    /// A1111's labels (`Euler a`, `DPM++ 2M Karras`), spelled exactly as the enum lists them.
    #[oai(nullable)]
    pub scheduler: Option<SchedulerName>,
    /// Extension: how much an edit may change the input image, 0 < s ≤ 1 (img2img).
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive = true), maximum(value = "1"))
    )]
    pub strength: Option<f64>,
    /// Extension (DALL·E): super-condition scale.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "100")))]
    pub cond_scale: Option<f64>,
    /// Extension (DALL·E): sampling temperature, above 0.
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive = true), maximum(value = "100"))
    )]
    pub temperature: Option<f64>,
    /// Extension (DALL·E): top-k sampling; 0 = no top-k filter.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1000000")))]
    pub top_k: Option<u32>,
    /// Extension (DALL·E): nucleus sampling, 0 < p ≤ 1 (1 = no nucleus filter).
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive = true), maximum(value = "1"))
    )]
    pub top_p: Option<f64>,
    /// Extension (SD): LoRAs for this request, each with its weight. `<lora:NAME:WEIGHT>` in
    /// the prompt (A1111's syntax) adds to these.
    #[oai(nullable, validator(max_items = 8))]
    pub loras: Option<Vec<LoraParam>>,
    /// Extension (SD): `a1111` (the server's default unless `--prompt-syntax` says otherwise)
    /// or `plain`.
    #[oai(nullable)]
    pub prompt_syntax: Option<PromptSyntaxParam>,
    /// Extension (SD): `full` (default) or `taesd`.
    #[oai(nullable)]
    pub vae: Option<VaeParam>,
}

/// Body of `POST /v1/images/jobs/generations`: the body of `POST /v1/images/generations`
/// (without `stream`: a job is polled or calls back) plus `webhook_url`.
#[derive(Object, Debug, Default)]
pub struct CreateImageJobRequest {
    #[oai(flatten)]
    pub request: CreateImageRequest,
    /// Extension (jobs): an http(s) URL that gets the finished job (POST, JSON), when the
    /// server allows its host (`--webhook-allow`).
    #[oai(nullable, validator(max_length = 2048))]
    pub webhook_url: Option<String>,
}

/// One generated image.
#[derive(Object, Debug, Clone)]
pub struct ImageData {
    #[oai(skip_serializing_if_is_none)]
    pub b64_json: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub revised_prompt: Option<String>,
    /// Extension: the seed that reproduces this image.
    pub seed: u64,
}

#[derive(Object, Debug)]
pub struct ImagesResponse {
    /// Unix seconds.
    pub created: i64,
    pub data: Vec<ImageData>,
    /// Always `opaque`: kiln's models paint every pixel.
    pub background: Background,
    pub output_format: OutputFormat,
    /// The quality tier the images were made at.
    pub quality: QualityTier,
    /// `WxH` of the returned images.
    pub size: String,
    pub usage: Usage,
    /// Extension: images the safety checker withheld (absent when none was).
    #[oai(skip_serializing_if_is_empty, default)]
    pub withheld: Vec<WithheldImage>,
}

/// An image the safety checker flagged: it is not in `data`.
#[derive(Object, Debug, Clone)]
pub struct WithheldImage {
    /// Its index among the `n` images asked for.
    pub index: u32,
    pub seed: u64,
}

impl From<crate::engine::Withheld> for WithheldImage {
    fn from(w: crate::engine::Withheld) -> Self {
        Self {
            index: w.index as u32,
            seed: w.seed,
        }
    }
}

/// One Server-Sent Event of a streamed generation; `type` is also the SSE event name.
#[derive(Object, Debug, Clone)]
pub struct ImageStreamEvent {
    /// `image_generation.partial_image`, `image_generation.completed`,
    /// `image_generation.progress` (extension, opt-in) or `error`.
    #[oai(rename = "type")]
    pub ty: String,
    pub created_at: i64,
    #[oai(skip_serializing_if_is_none)]
    pub b64_json: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub size: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub quality: Option<QualityTier>,
    #[oai(skip_serializing_if_is_none)]
    pub background: Option<Background>,
    #[oai(skip_serializing_if_is_none)]
    pub output_format: Option<OutputFormat>,
    #[oai(skip_serializing_if_is_none)]
    pub partial_image_index: Option<u32>,
    /// Extension: index of the image within `n` (completed events).
    #[oai(skip_serializing_if_is_none)]
    pub image_index: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub seed: Option<u64>,
    #[oai(skip_serializing_if_is_none)]
    pub step: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub total: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub usage: Option<Usage>,
    /// Extension (completed events): the images the safety checker withheld, when any was.
    #[oai(skip_serializing_if_is_empty, default)]
    pub withheld: Vec<WithheldImage>,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<ErrorBody>,
}

/// The OpenAI error envelope, used for every non-2xx response.
#[derive(Object, Debug, Clone)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Object, Debug, Clone)]
pub struct ErrorBody {
    pub message: String,
    #[oai(rename = "type")]
    pub ty: String,
    /// The request field at fault, when there is one.
    #[oai(nullable)]
    pub param: Option<String>,
    #[oai(nullable)]
    pub code: Option<String>,
    /// Extension: the request's `X-Request-Id`, to quote when reporting the error.
    #[oai(skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

/// OpenAI's model object, plus kiln's extensions.
#[derive(Object, Debug)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
    /// Extension: `stable-diffusion-1.5` or `dalle-mini`.
    pub family: String,
    /// Extension: `unloaded`, `loading`, `ready` or `failed`.
    pub state: String,
    /// Extension: a tiny random demo model, not real weights.
    pub demo: bool,
    /// Extension: a note for people, e.g. how to get real weights.
    #[oai(skip_serializing_if_is_none)]
    pub notice: Option<String>,
}

#[derive(Object, Debug)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

/// `GET /v1/`: the Prem services' health check.
#[derive(Object, Debug)]
pub struct StatusResponse {
    pub status: bool,
}

/// `GET /health/live`.
#[derive(Object, Debug)]
pub struct LiveResponse {
    /// `ok`.
    pub status: String,
}

#[derive(Object, Debug)]
pub struct ModelHealth {
    pub id: String,
    pub state: String,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

#[derive(Object, Debug)]
pub struct HealthResponse {
    /// `ready`.
    pub status: String,
    /// The models and their state; only for callers with the API key when one is set.
    #[oai(skip_serializing_if_is_none)]
    pub models: Option<Vec<ModelHealth>>,
    /// Jobs queued or running (with the key, as `models`).
    #[oai(skip_serializing_if_is_none)]
    pub queue: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub queue_capacity: Option<u32>,
}
