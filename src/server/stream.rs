//! `stream: true`: Server-Sent Events in OpenAI's image streaming format. The stream owns the
//! job ticket, so a client that goes away drops it and cancels the job.

use std::collections::VecDeque;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::web::sse::{Event, SSE};
use poem::{IntoResponse, Response};
use poem_openapi::Object;
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

use super::encode::encode;
use super::error::ApiError;
use super::types::{Background, ImageStreamEvent, OutputFormat, QualityTier, Usage};
use super::unix_now;
use crate::engine::{JobEvent, JobTicket};
use crate::image_io::params::Parameters;

/// One Server-Sent Event as it appears on the wire: `event` is the event type and `data` a
/// JSON-encoded `ImageStreamEvent`. (poem-openapi's own `EventStream` documents the stream as a
/// JSON array, which SSE-aware spec checkers such as schemathesis reject.)
#[derive(Object)]
pub struct ServerSentEvent {
    pub event: String,
    pub data: String,
}

pub struct ImageEvents(BoxStream<'static, ImageStreamEvent>);

impl Payload for ImageEvents {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        ServerSentEvent::schema_ref()
    }

    fn register(registry: &mut Registry) {
        ServerSentEvent::register(registry);
        ImageStreamEvent::register(registry);
    }
}

impl IntoResponse for ImageEvents {
    fn into_response(self) -> Response {
        let events = self.0.map(|ev| {
            let data = serde_json::to_string(&ev.to_json()).unwrap_or_default();
            Event::message(data).event_type(ev.ty.clone())
        });
        SSE::new(events)
            .keep_alive(std::time::Duration::from_secs(15))
            .into_response()
    }
}

/// What every event repeats about the request.
#[derive(Clone)]
pub struct StreamMeta {
    /// `image_generation` or `image_edit`.
    pub prefix: &'static str,
    pub size: String,
    pub output_format: OutputFormat,
    /// `output_compression`.
    pub quality: u8,
    /// The `quality` tier.
    pub tier: QualityTier,
    pub progress: bool,
}

impl StreamMeta {
    fn event(&self, kind: &str) -> ImageStreamEvent {
        ImageStreamEvent {
            ty: format!("{}.{kind}", self.prefix),
            created_at: unix_now(),
            b64_json: None,
            size: Some(self.size.clone()),
            quality: Some(self.tier),
            background: Some(Background::Opaque),
            output_format: Some(self.output_format),
            partial_image_index: None,
            image_index: None,
            seed: None,
            step: None,
            total: None,
            usage: None,
            withheld: Vec::new(),
            error: None,
        }
    }

    fn error(&self, e: ApiError) -> ImageStreamEvent {
        let body = e.body().error;
        ImageStreamEvent {
            ty: "error".into(),
            size: None,
            quality: None,
            background: None,
            output_format: None,
            error: Some(body),
            ..self.event("error")
        }
    }
}

struct State {
    ticket: Option<JobTicket>,
    pending: VecDeque<ImageStreamEvent>,
    partial_index: u32,
    meta: StreamMeta,
}

async fn b64(
    img: image::RgbImage,
    params: Option<Parameters>,
    meta: &StreamMeta,
) -> Result<String, ApiError> {
    let bytes = encode(img, params, meta.output_format, meta.quality).await?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        bytes,
    ))
}

impl State {
    /// Turns the next engine event into zero or more SSE events; `false` at the end.
    async fn advance(&mut self) -> bool {
        let Some(ticket) = self.ticket.as_mut() else {
            return false;
        };
        match ticket.next().await {
            Some(JobEvent::Started) => {}
            Some(JobEvent::Progress(p)) => {
                if self.meta.progress && !p.decoding {
                    self.pending.push_back(ImageStreamEvent {
                        step: Some(p.step as u32),
                        total: Some(p.total as u32),
                        ..self.meta.event("progress")
                    });
                }
                if let Some(img) = p.preview {
                    match b64(img, None, &self.meta).await {
                        Ok(b) => {
                            let ev = ImageStreamEvent {
                                b64_json: Some(b),
                                partial_image_index: Some(self.partial_index),
                                ..self.meta.event("partial_image")
                            };
                            self.partial_index += 1;
                            self.pending.push_back(ev);
                        }
                        Err(e) => self.fail(e),
                    }
                }
            }
            Some(JobEvent::Done(Ok(out))) => {
                self.ticket = None;
                // Each completed event carries the whole request's usage and withheld images.
                let usage = Usage::from(out.usage);
                let withheld: Vec<_> = out.withheld.iter().map(|&w| w.into()).collect();
                let mut index = (0..).filter(|k| !out.withheld.iter().any(|w| w.index == *k));
                for g in out.images {
                    let k = index.next().unwrap_or_default();
                    match b64(g.image, g.params, &self.meta).await {
                        Ok(b) => self.pending.push_back(ImageStreamEvent {
                            b64_json: Some(b),
                            image_index: Some(k as u32),
                            seed: Some(g.seed),
                            usage: Some(usage.clone()),
                            withheld: withheld.clone(),
                            ..self.meta.event("completed")
                        }),
                        Err(e) => {
                            self.fail(e);
                            return true;
                        }
                    }
                }
            }
            Some(JobEvent::Done(Err(e))) => self.fail(e.into()),
            None => self.fail(crate::engine::EngineError::ShuttingDown.into()),
        }
        true
    }

    fn fail(&mut self, e: ApiError) {
        self.ticket = None;
        self.pending.push_back(self.meta.error(e));
    }
}

/// The SSE response for a submitted job.
pub fn events(
    ticket: JobTicket,
    meta: StreamMeta,
    gone: impl Future<Output = ()> + Send + 'static,
) -> ImageEvents {
    let state = State {
        ticket: Some(ticket),
        pending: VecDeque::new(),
        partial_index: 0,
        meta,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((ev, s));
            }
            if !s.advance().await {
                return None;
            }
        }
    });
    ImageEvents(stream.take_until(gone).boxed())
}
