//! Between a validated request and the client: decoding uploads, submitting the job, and
//! delivering its images (inline, through the URL store, or as an event stream).

use poem::http::StatusCode;
use poem_openapi::ResponseContent;
use poem_openapi::payload::Json;

use super::encode::encode;
use super::error::ApiError;
use super::jobs::Prepared;
use super::stream::{ImageEvents, StreamMeta, events};
use super::types::{ImageData, ImagesResponse, ResponseFormat};
use super::{AppState, unix_now};
use crate::engine::GeneratedImage;
use crate::image_io;

/// What the image operations answer: JSON, or Server-Sent Events when `stream` is true.
#[derive(ResponseContent)]
pub enum ImagesContent {
    Json(Json<ImagesResponse>),
    EventStream(ImageEvents),
}

/// Reads and decodes an uploaded image; errors name the form field.
pub(super) async fn decode_upload(
    upload: poem_openapi::types::multipart::Upload,
    field: &str,
    max_side: u32,
) -> Result<image::DynamicImage, ApiError> {
    let bytes = upload
        .into_vec()
        .await
        .map_err(|e| ApiError::invalid(field, format!("cannot read `{field}`: {e}")))?;
    tokio::task::spawn_blocking({
        let what = format!("`{field}`");
        move || image_io::decode(&bytes, &what, max_side)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| match e {
        crate::Error::InvalidArgument(message) => ApiError::invalid(field, message),
        other => ApiError::invalid(field, other.to_string()),
    })
}

/// Encodes the finished images and delivers them inline (b64) or through the URL store, with
/// links under `base` (`scheme://host`). Jobs deliver their images with it too.
pub(super) async fn deliver(
    state: &AppState,
    base: &str,
    p: &Prepared,
    images: Vec<GeneratedImage>,
) -> Result<ImagesResponse, ApiError> {
    let (fmt, q) = (p.output_format, p.quality);
    let mut encoded = Vec::with_capacity(images.len());
    for g in images {
        encoded.push((encode(g.image, g.params, fmt, q).await?, g.seed));
    }
    let mut data = Vec::with_capacity(encoded.len());
    for (bytes, seed) in encoded {
        data.push(match p.response_format {
            ResponseFormat::B64Json => ImageData {
                b64_json: Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes,
                )),
                url: None,
                revised_prompt: None,
                seed,
            },
            ResponseFormat::Url => {
                let id = state.store.put(bytes, fmt.into()).await?;
                ImageData {
                    b64_json: None,
                    url: Some(format!("{base}/v1/images/files/{}", id.as_str())),
                    revised_prompt: None,
                    seed,
                }
            }
        });
    }
    Ok(ImagesResponse {
        created: unix_now(),
        data,
        output_format: fmt,
        size: p.size(),
    })
}

pub(super) async fn run_job(
    state: &AppState,
    req: &poem::Request,
    p: Prepared,
    prefix: &'static str,
) -> Result<ImagesContent, ApiError> {
    let ticket = state.engine.submit(&p.model.id, p.job.clone())?;
    // A client that hangs up drops its ticket (here or in the event stream): the job is cancelled.
    let gone = super::disconnect::closed(req);
    if p.stream {
        let meta = StreamMeta {
            prefix,
            size: p.size(),
            output_format: p.output_format,
            quality: p.quality,
            progress: p.stream_progress,
        };
        return Ok(ImagesContent::EventStream(events(ticket, meta, gone)));
    }
    let images = tokio::select! {
        r = ticket.wait() => r?,
        () = gone => return Err(ApiError::new(StatusCode::BAD_REQUEST, "the client closed the connection").code("client_closed")),
    };
    let base = state.public_base(req);
    Ok(ImagesContent::Json(Json(
        deliver(state, &base, &p, images).await?,
    )))
}
