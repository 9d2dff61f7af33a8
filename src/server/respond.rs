//! Between a validated request and the client: decoding uploads, submitting the job, and
//! delivering its images (inline, through the URL store, or as an event stream).

use poem::http::StatusCode;
use poem_openapi::ResponseContent;
use poem_openapi::payload::Json;

use super::encode::encode;
use super::error::ApiError;
use super::jobs::Prepared;
use super::stream::{ImageEvents, StreamMeta, events};
use super::types::{Background, ImageData, ImagesResponse, ResponseFormat};
use super::{AppState, unix_now};
use crate::engine::JobOutput;

/// What the image operations answer: JSON, or Server-Sent Events when `stream` is true.
#[derive(ResponseContent)]
pub enum ImagesContent {
    Json(Json<ImagesResponse>),
    EventStream(ImageEvents),
}

/// Encodes the finished images and delivers them inline (b64) or through the URL store, with
/// links under `base` (`scheme://host`). Jobs deliver their images with it too.
pub(super) async fn deliver(
    state: &AppState,
    base: &str,
    p: &Prepared,
    out: JobOutput,
) -> Result<ImagesResponse, ApiError> {
    let (fmt, q) = (p.output_format, p.quality);
    let mut encoded = Vec::with_capacity(out.images.len());
    for g in out.images {
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
        background: Background::Opaque,
        output_format: fmt,
        quality: p.job.quality.into(),
        size: p.size(),
        usage: out.usage.into(),
        withheld: out.withheld.into_iter().map(Into::into).collect(),
    })
}

pub(super) async fn run_job(
    state: &AppState,
    req: &poem::Request,
    p: Prepared,
) -> Result<ImagesContent, ApiError> {
    let ticket = state.engine.submit(&p.model.id, p.job.clone())?;
    // A client that hangs up drops its ticket (here or in the event stream): the job is cancelled.
    let gone = super::disconnect::closed(req);
    if p.stream {
        let meta = StreamMeta {
            prefix: p.kind,
            size: p.size(),
            output_format: p.output_format,
            quality: p.quality,
            tier: p.job.quality.into(),
            progress: p.stream_progress,
        };
        return Ok(ImagesContent::EventStream(events(ticket, meta, gone)));
    }
    let out = tokio::select! {
        r = ticket.wait() => r?,
        () = gone => return Err(ApiError::new(StatusCode::BAD_REQUEST, "the client closed the connection").code("client_closed")),
    };
    let base = state.public_base(req);
    Ok(ImagesContent::Json(Json(
        deliver(state, &base, &p, out).await?,
    )))
}
