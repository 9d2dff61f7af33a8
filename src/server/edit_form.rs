//! The multipart form of image edits, declared once: `POST /v1/images/edits` takes it as it
//! is, `POST /v1/images/jobs/edits` takes it plus `webhook_url`. (poem-openapi's `Multipart`
//! derive cannot flatten one form into another, so a macro writes both from one field list.)

use poem_openapi::Multipart;
use poem_openapi::types::multipart::{JsonField, Upload};

use super::types::{
    Background, InputFidelityParam, LoraParam, ModerationParam, OutputFormat, PromptSyntaxParam,
    QualityParam, ResponseFormat, SchedulerName, VaeParam,
};
use super::upload::{ImageParts, UploadList};

macro_rules! edit_forms {
    ($($(#[$meta:meta])* pub $field:ident: $ty:ty,)*) => {
        /// Body of `POST /v1/images/edits` (multipart/form-data). Numbers arrive as text parts.
        #[derive(Multipart, Debug)]
        pub struct CreateImageEditRequest {
            $($(#[$meta])* pub $field: $ty,)*
        }

        /// Body of `POST /v1/images/jobs/edits`: the form of `POST /v1/images/edits` plus
        /// `webhook_url`.
        #[derive(Multipart, Debug)]
        pub struct CreateImageJobEditRequest {
            $($(#[$meta])* pub $field: $ty,)*
            /// Extension (jobs): an http(s) URL that gets the finished job (POST, JSON), when
            /// the server allows its host (`--webhook-allow`).
            #[oai(validator(max_length = 2048))]
            pub webhook_url: Option<String>,
        }

        impl CreateImageJobEditRequest {
            /// The edit form and the webhook URL.
            pub fn split(self) -> (CreateImageEditRequest, Option<String>) {
                let form = CreateImageEditRequest {
                    $($field: self.$field,)*
                };
                (form, self.webhook_url)
            }
        }
    };
}

edit_forms! {
    /// The image to edit (any of PNG, JPEG, WebP; file name and part type are not trusted).
    /// One image: kiln's models edit one, so several parts (here or as `image[]`) are a 400.
    pub image: ImageParts,
    /// `image`, as openai-python names the parts of several images: these may stand in for
    /// `image` (a form with neither is refused, naming `image`).
    #[oai(rename = "image[]")]
    pub images: UploadList,
    /// PNG whose fully transparent pixels mark the area to repaint (OpenAI convention).
    pub mask: Option<Upload>,
    #[oai(validator(min_length = 1, max_length = 32000))]
    pub prompt: String,
    #[oai(validator(max_length = 256))]
    pub model: Option<String>,
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub n: Option<u32>,
    #[oai(validator(max_length = 16, pattern = r"^(auto|[0-9]{1,5}x[0-9]{1,5})?$"))]
    pub size: Option<String>,
    pub response_format: Option<ResponseFormat>,
    pub output_format: Option<OutputFormat>,
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub output_compression: Option<u32>,
    /// As in generations: SD's steps when `num_inference_steps` is not given.
    pub quality: Option<QualityParam>,
    /// The end user the client acts for; written to the request's log line.
    #[oai(validator(max_length = 256))]
    pub user: Option<String>,
    /// `auto` or `opaque`; `transparent` is refused.
    pub background: Option<Background>,
    /// `high`: keep more of the input (SD: strength 0.5 when `strength` is not given).
    pub input_fidelity: Option<InputFidelityParam>,
    /// With the SD safety checker on: `auto` or `low`.
    pub moderation: Option<ModerationParam>,
    /// Stream Server-Sent Events (`image_edit.partial_image`, `image_edit.completed`).
    pub stream: Option<bool>,
    /// Previews to stream before the final image, 0–3.
    #[oai(validator(minimum(value = "0"), maximum(value = "3")))]
    pub partial_images: Option<u32>,
    /// Extension: also stream `image_edit.progress` events (step, total).
    pub stream_progress: Option<bool>,
    #[oai(validator(max_length = 32000))]
    pub negative_prompt: Option<String>,
    #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
    pub seed: Option<u64>,
    #[oai(validator(minimum(value = "0"), maximum(value = "50")))]
    pub guidance_scale: Option<f64>,
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub num_inference_steps: Option<u32>,
    /// As the generations body's `scheduler`: a name of the enum, spelled as listed.
    pub scheduler: Option<SchedulerName>,
    #[oai(validator(minimum(value = "0", exclusive = true), maximum(value = "1")))]
    pub strength: Option<f64>,
    /// A JSON array, as the generations body's `loras`: `[{"name": "…", "weight": 0.8}]`.
    pub loras: Option<JsonField<Vec<LoraParam>>>,
    pub prompt_syntax: Option<PromptSyntaxParam>,
    pub vae: Option<VaeParam>,
}
