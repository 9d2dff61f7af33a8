//! The `#[OpenApi]` operations. Handlers validate, submit to the engine and await results;
//! they never touch a model.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiRequest, ApiResponse, OpenApi, ResponseContent, Tags};

use super::AppState;
use super::edit_input::{EditSources, prepare_edit};
use super::error::{ApiError, ErrorVariants, bad_request};
use super::jobs::{GenParams, edit_form, prepare};
use super::respond::{ImagesContent, run_job};
use super::types::*;
use super::variation::{CreateImageEditJsonRequest, CreateImageVariationRequest};
use crate::engine::ModelInfo;
use crate::image_io::ImageFormat;

#[derive(Tags)]
pub(super) enum ApiTags {
    /// Image generation and editing (OpenAI compatible)
    Images,
    /// Models served
    Models,
    /// Health checks
    Health,
    /// Async image jobs: submit, poll, cancel
    Jobs,
}

/// One variant per [`ImageFormat`] (poem-openapi needs each content type spelled here).
#[derive(ResponseContent)]
pub enum FileContent {
    #[oai(content_type = "image/png")]
    Png(Binary<Vec<u8>>),
    #[oai(content_type = "image/jpeg")]
    Jpeg(Binary<Vec<u8>>),
    #[oai(content_type = "image/webp")]
    Webp(Binary<Vec<u8>>),
}

/// Declares an operation's response enum: its success variant (200 with `$ok`, or the variants
/// given in brackets) plus the error variants.
macro_rules! api_response {
    ($name:ident, [$($ok:tt)*]) => {
        #[derive(ApiResponse)]
        #[oai(bad_request_handler = "bad_request")]
        pub enum $name {
            $($ok)*
            /// The queue is full; retry after `Retry-After` seconds.
            #[oai(status = 429)]
            TooManyRequests(Json<ErrorResponse>, #[oai(header = "Retry-After")] u32),
            /// The server is shutting down; retry after `Retry-After` seconds.
            #[oai(status = 503)]
            Unavailable(Json<ErrorResponse>, #[oai(header = "Retry-After")] u32),
            /// Invalid request, unknown model, missing or wrong API key, body too large.
            #[oai(status_range = "4XX")]
            ClientError(StatusCode, Json<ErrorResponse>),
            /// Generation failed, a model could not load, or the client left.
            #[oai(status_range = "5XX")]
            ServerError(StatusCode, Json<ErrorResponse>),
        }

        impl ErrorVariants for $name {
            fn too_many(body: ErrorResponse, retry_after: u32) -> Self {
                Self::TooManyRequests(Json(body), retry_after)
            }
            fn unavailable(body: ErrorResponse, retry_after: u32) -> Self {
                Self::Unavailable(Json(body), retry_after)
            }
            fn client(status: StatusCode, body: ErrorResponse) -> Self {
                Self::ClientError(status, Json(body))
            }
            fn server(status: StatusCode, body: ErrorResponse) -> Self {
                Self::ServerError(status, Json(body))
            }
        }

        impl From<ApiError> for $name {
            fn from(e: ApiError) -> Self {
                Self::from_error(e)
            }
        }
    };
    ($name:ident, $ok:ty, $doc:literal) => {
        api_response!($name, [
            #[doc = $doc]
            #[oai(status = 200)]
            Ok($ok),
        ]);
    };
}
pub(super) use api_response;

api_response!(
    ImagesResult,
    ImagesContent,
    "Images (JSON), or Server-Sent Events when `stream` is true."
);
api_response!(
    ModelsResult,
    Json<ModelList>,
    "The models this server serves."
);
api_response!(ModelResult, Json<Model>, "One model.");
api_response!(FileResult, FileContent, "A generated image.");
api_response!(HealthResult, Json<HealthResponse>, "Ready to serve.");
api_response!(
    StatusResult,
    Json<StatusResponse>,
    "Always `{\"status\": true}`."
);

/// An edit as a multipart form (files) or as JSON (`data:` URLs).
#[derive(ApiRequest)]
pub enum EditBody {
    Form(CreateImageEditRequest),
    Json(Json<CreateImageEditJsonRequest>),
}

pub struct Api;

fn model_object(m: ModelInfo, notice: Option<&str>) -> Model {
    Model {
        id: m.id,
        object: "model".into(),
        created: 0,
        owned_by: "kiln".into(),
        family: m.family.id().into(),
        state: m.state.label().into(),
        demo: m.demo,
        notice: if m.demo {
            notice.map(str::to_string)
        } else {
            None
        },
    }
}

/// An edit or a variation: its images decoded, the job prepared and run.
async fn run_edit(
    state: &AppState,
    req: &poem::Request,
    (params, sources): (GenParams, EditSources),
) -> ImagesResult {
    let result = async {
        let p = prepare_edit(state, params, sources).await?;
        run_job(state, req, p).await
    };
    result
        .await
        .map_or_else(ImagesResult::from, ImagesResult::Ok)
}

#[OpenApi]
impl Api {
    /// Create images from a prompt
    ///
    /// OpenAI-compatible. Extensions (`negative_prompt`, `seed`, `guidance_scale`,
    /// `num_inference_steps`, `scheduler`, DALL·E `cond_scale`/`temperature`/`top_k`/`top_p`) are
    /// top-level fields, as `extra_body` (openai 1.x) and keyword arguments (0.28) send them.
    #[oai(
        path = "/v1/images/generations",
        method = "post",
        operation_id = "createImage",
        tag = "ApiTags::Images"
    )]
    async fn create_image(
        &self,
        state: Data<&Arc<AppState>>,
        req: &poem::Request,
        body: Json<CreateImageRequest>,
    ) -> ImagesResult {
        let result = async {
            let p = prepare(&state, GenParams::from(body.0), None)?;
            run_job(&state, req, p).await
        };
        result
            .await
            .map_or_else(ImagesResult::from, ImagesResult::Ok)
    }

    /// Edit an image
    ///
    /// multipart/form-data with `image` (or `image[]`), optional `mask` (transparent pixels =
    /// area to repaint) and the text fields of generations (numbers as text); or JSON with
    /// `images: [{"image_url": "data:..."}]` and optional `mask: {"image_url": ...}` (only
    /// `data:` URLs: kiln fetches nothing). One input image. `stream: true` answers with
    /// `image_edit.*` Server-Sent Events.
    #[oai(
        path = "/v1/images/edits",
        method = "post",
        operation_id = "createImageEdit",
        tag = "ApiTags::Images"
    )]
    async fn create_image_edit(
        &self,
        state: Data<&Arc<AppState>>,
        req: &poem::Request,
        body: EditBody,
    ) -> ImagesResult {
        let parts = match body {
            EditBody::Form(form) => edit_form(form),
            EditBody::Json(json) => json.0.into_parts(),
        };
        run_edit(&state, req, parts).await
    }

    /// Create variations of an image
    ///
    /// As openai-python's `images.create_variation` sends it (multipart `image`, `n`, `size`,
    /// `response_format`, `user`). Stable Diffusion: image-to-image from the input at strength
    /// 0.6 with an empty prompt (extensions: `prompt`, `strength`, `seed`, ...). DALL·E models
    /// read no image: 400.
    #[oai(
        path = "/v1/images/variations",
        method = "post",
        operation_id = "createImageVariation",
        tag = "ApiTags::Images"
    )]
    async fn create_image_variation(
        &self,
        state: Data<&Arc<AppState>>,
        req: &poem::Request,
        body: CreateImageVariationRequest,
    ) -> ImagesResult {
        run_edit(&state, req, body.into_parts()).await
    }

    /// Download an image created with `response_format=url`
    #[oai(
        path = "/v1/images/files/:id",
        method = "get",
        operation_id = "getImageFile",
        tag = "ApiTags::Images"
    )]
    async fn image_file(&self, state: Data<&Arc<AppState>>, id: Path<String>) -> FileResult {
        match state.store.get(&id.0).await {
            Ok(Some((bytes, format))) => FileResult::Ok(match format {
                ImageFormat::Png => FileContent::Png(Binary(bytes)),
                ImageFormat::Jpeg => FileContent::Jpeg(Binary(bytes)),
                ImageFormat::Webp => FileContent::Webp(Binary(bytes)),
            }),
            Ok(None) => ApiError::new(StatusCode::NOT_FOUND, "no such image (image links expire)")
                .param("id")
                .code("not_found")
                .into(),
            Err(e) => ApiError::from(e).into(),
        }
    }

    /// List models
    #[oai(
        path = "/v1/models",
        method = "get",
        operation_id = "listModels",
        tag = "ApiTags::Models"
    )]
    async fn list_models(&self, state: Data<&Arc<AppState>>) -> ModelsResult {
        let data = state
            .engine
            .models()
            .into_iter()
            .map(|m| model_object(m, state.demo_notice.as_deref()))
            .collect();
        ModelsResult::Ok(Json(ModelList {
            object: "list".into(),
            data,
        }))
    }

    /// Retrieve a model
    #[oai(
        path = "/v1/models/:model",
        method = "get",
        operation_id = "retrieveModel",
        tag = "ApiTags::Models"
    )]
    async fn retrieve_model(
        &self,
        state: Data<&Arc<AppState>>,
        model: Path<String>,
    ) -> ModelResult {
        match state.engine.model(&model.0) {
            Some(m) => ModelResult::Ok(Json(model_object(m, state.demo_notice.as_deref()))),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("the model `{}` does not exist", model.0),
            )
            .param("model")
            .code("model_not_found")
            .into(),
        }
    }
}
