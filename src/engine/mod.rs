//! The engine: owns the loaded pipelines on one worker thread per device (each device holding a
//! replica of every model), fed by a bounded queue that sends each job to the least-loaded
//! replica of its model (`handle.rs`, `queue.rs`). The HTTP layer only talks to an
//! [`EngineHandle`]: `submit` an
//! [`ImageJob`] built by [`JobParams::into_job`], then await the [`JobTicket`]'s events.
//! Dropping a ticket cancels its job (between steps), which is how a client disconnect reaches
//! the model. `kiln generate` builds the same job and runs it through the same family adapter
//! with [`pipeline::run`], without the queue.

mod addons;
mod dalle;
mod handle;
pub mod loras;
mod metrics;
pub mod output;
mod params;
pub mod pipeline;
mod queue;
mod registry;
mod report;
mod sd15;
mod worker;

use std::sync::Arc;

pub use crate::models::Family;
pub use crate::schedulers::SchedulerKind;
pub use addons::{AddOns, SafetyMode};
pub use dalle::{DallePipeline, dalle_loader};
pub use handle::EngineHandle;
pub use loras::{LoraLibrary, LoraRef, ResolvedLora};
pub use output::{JobOutput, Moderation, TokenUsage, Withheld};
pub use params::{EditInput, InputFidelity, JobParams, JobRules, Limits, Quality};
pub use pipeline::{
    DalleParams, GeneratedImage, ImageJob, ImagePipeline, InitImage, JobExtras, Progress,
};
pub(crate) use queue::Queued;
pub use queue::{JobControl, JobEvent, JobTicket};
pub use registry::{DEMO_HELP, Discovery, discover, loader_for};
pub use sd15::{Sd15Pipeline, sd15_loader};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the server is busy: {0} requests are already queued or running; retry later")]
    QueueFull(usize),
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("{message}")]
    Invalid {
        param: Option<String>,
        message: String,
    },
    #[error("{message}")]
    Unsupported {
        param: Option<String>,
        message: String,
    },
    #[error("model `{model}` failed to load: {message}")]
    Load { model: String, message: String },
    #[error("generation failed: {0}")]
    Failed(String),
    #[error("the pipeline crashed: {0}")]
    Panicked(String),
    #[error("the request was cancelled")]
    Cancelled,
    /// The safety checker flagged every image of the job.
    #[error(
        "the request was rejected by the safety system: the safety checker flagged every generated image ({images} of {images})"
    )]
    Blocked { images: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<crate::Error> for EngineError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::InvalidArgument(message) => EngineError::Invalid {
                param: None,
                message,
            },
            crate::Error::Cancelled => EngineError::Cancelled,
            // A LoRA that does not fit the model is the request's fault: a 400 naming the file
            // and the first offending key.
            e @ crate::Error::Lora { .. } => EngineError::Invalid {
                param: Some("loras".into()),
                message: e.to_string(),
            },
            other => EngineError::Failed(other.to_string()),
        }
    }
}

/// Builds a pipeline; runs on the worker thread that will own it.
pub type Loader = Arc<dyn Fn() -> Result<Box<dyn ImagePipeline>, EngineError> + Send + Sync>;

/// A model the engine serves on one device: an id, its family and device, and how to load it.
/// The same id on several devices is one model with a replica on each.
#[derive(Clone)]
pub struct ServedModel {
    pub id: String,
    pub family: Family,
    /// Label of the worker that owns it (`cpu`, `cuda:0`, `cpu#1`: see
    /// [`crate::backend::DeviceList`]); one thread per distinct value.
    pub device: String,
    /// Where it comes from, for logs and `/v1/models`.
    pub source: String,
    /// A tiny random demo model, not real weights.
    pub demo: bool,
    pub loader: Loader,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("id", &self.id)
            .field("family", &self.family)
            .field("device", &self.device)
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    Unloaded,
    Loading,
    Ready,
    Failed(String),
}

impl ModelState {
    pub fn label(&self) -> &'static str {
        match self {
            ModelState::Unloaded => "unloaded",
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub family: Family,
    pub source: String,
    pub demo: bool,
    pub state: ModelState,
}

/// One model on one device ([`EngineHandle::replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub id: String,
    pub device: String,
    pub state: ModelState,
}

/// One device's worker ([`EngineHandle::devices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLoad {
    pub device: String,
    /// Jobs sent to it and not started.
    pub waiting: usize,
    /// 0 or 1.
    pub running: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Jobs queued or running at once, over all workers; more → [`EngineError::QueueFull`].
    pub max_queue: usize,
    /// Load every model at start instead of on first use.
    pub preload: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_queue: 16,
            preload: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Jobs accepted and not done; 0 = [`EngineHandle::is_idle`].
    pub in_flight: usize,
    pub capacity: usize,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
}
