//! What the job routes answer, and what a shared directory holds for each job: one type, so
//! the file a replica writes is exactly what any replica serves.

use poem_openapi::{Enum, Object};

use super::JobsConfig;
use crate::server::types::{
    ErrorBody, ImageData, OutputFormat, ResponseFormat, Usage, WithheldImage,
};

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted, waiting for its device.
    Queued,
    /// Its device is working on it (`step` of `total_steps`).
    Running,
    /// Done: `data` holds the images.
    Succeeded,
    /// Done: `error` says why (`replica_lost`: the replica that ran it is gone).
    Failed,
    /// Cancelled (`POST …/cancel`) before it finished.
    Cancelled,
}

impl JobStatus {
    /// Queued or running: the job may still change.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum JobKind {
    /// `POST /v1/images/jobs/generations`.
    Generation,
    /// `POST /v1/images/jobs/edits`.
    Edit,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Not sent yet (the job runs, or the tries go on).
    Pending,
    /// A try was answered 2xx.
    Delivered,
    /// Every try failed (see the server log).
    Failed,
}

/// An async image job. Times are Unix seconds. Fields that do not apply yet are `null`;
/// `created` and `data` appear once the job succeeded.
#[derive(Object, Debug, Clone)]
#[oai(rename = "ImageJob")]
pub struct JobRecord {
    /// `job_` and 32 hex digits (128 random bits).
    pub id: String,
    /// `image.job`.
    pub object: String,
    pub status: JobStatus,
    pub kind: JobKind,
    /// The served model it runs on.
    pub model: String,
    /// `WxH` of the images.
    pub size: String,
    pub output_format: OutputFormat,
    pub response_format: ResponseFormat,
    /// While queued: jobs (of any client, synchronous ones too) waiting ahead of this one for
    /// the same device; 0 = it starts when the running job ends. `null` otherwise, and when
    /// read through a replica other than the one running it.
    #[oai(nullable)]
    pub queue_position: Option<u64>,
    /// Steps done (SD: denoising steps; DALL·E: image tokens), once running.
    #[oai(nullable)]
    pub step: Option<u32>,
    #[oai(nullable)]
    pub total_steps: Option<u32>,
    pub created_at: i64,
    #[oai(nullable)]
    pub started_at: Option<i64>,
    #[oai(nullable)]
    pub finished_at: Option<i64>,
    /// When the finished record (and its results) will be gone; it may go earlier when the
    /// server holds too many records (`--max-jobs`, `--jobs-max-mib`).
    #[oai(nullable)]
    pub expires_at: Option<i64>,
    /// Last change, or the last sign of life of the replica running it (see `replica`).
    pub updated_at: i64,
    /// The server process that accepted and runs the job (random per process).
    pub replica: String,
    /// The `X-Request-Id` of the request that submitted it.
    #[oai(nullable)]
    pub request_id: Option<String>,
    /// Why it failed (the OpenAI error object).
    #[oai(nullable)]
    pub error: Option<ErrorBody>,
    /// Delivery of the webhook, when the job has one.
    #[oai(nullable)]
    pub webhook: Option<WebhookStatus>,
    /// When the images were made (as the synchronous response's `created`).
    #[oai(skip_serializing_if_is_none)]
    pub created: Option<i64>,
    /// The images, exactly as the synchronous call returns them (b64 or url).
    #[oai(skip_serializing_if_is_none)]
    pub data: Option<Vec<ImageData>>,
    /// The tokens used, as the synchronous response's `usage`.
    #[oai(skip_serializing_if_is_none)]
    pub usage: Option<Usage>,
    /// Images the safety checker withheld (as the synchronous response's `withheld`).
    #[oai(skip_serializing_if_is_empty, default)]
    pub withheld: Vec<WithheldImage>,
}

impl JobRecord {
    /// Bytes of results the record holds (what `--jobs-max-mib` counts).
    pub fn result_bytes(&self) -> u64 {
        self.data.iter().flatten().fold(0, |n, d| {
            let len = |s: &Option<String>| s.as_ref().map_or(0, String::len) as u64;
            n + len(&d.b64_json) + len(&d.url)
        })
    }

    /// Sets a final status (the first one wins: a cancelled job stays cancelled).
    pub fn finish(&mut self, status: JobStatus, now: i64, ttl_secs: i64) -> bool {
        if !self.status.is_active() {
            return false;
        }
        self.status = status;
        self.queue_position = None;
        self.finished_at = Some(now);
        self.expires_at = Some(now.saturating_add(ttl_secs));
        true
    }

    /// Another replica's record as of `now`: if it is active but was not written for the
    /// staleness limit, its replica stopped (a live one rewrites it well within that), so it
    /// is reported failed with `replica_lost`, as from when that limit passed.
    pub fn mark_lost(&mut self, now: i64, config: &JobsConfig) {
        let stale = config.stale.as_secs() as i64;
        let lost_at = self.updated_at.saturating_add(stale);
        if !(self.status.is_active() && lost_at <= now) {
            return;
        }
        self.finish(JobStatus::Failed, lost_at, config.ttl.as_secs() as i64);
        self.error = Some(ErrorBody {
            message: format!(
                "the server replica that ran this job ({}) stopped updating it {stale} s or more \
                 ago: it died or was stopped; submit the job again",
                self.replica
            ),
            ty: "server_error".into(),
            param: None,
            code: Some("replica_lost".into()),
            request_id: self.request_id.clone(),
        });
    }
}

/// `202 Accepted` to a job submit.
#[derive(Object, Debug)]
pub struct JobAccepted {
    pub id: String,
    /// `image.job`.
    pub object: String,
    /// `queued`.
    pub status: JobStatus,
    /// As in the job (`null` when a device already took it).
    #[oai(nullable)]
    pub queue_position: Option<u64>,
    /// Where to `GET` the job (also the `Location` header).
    pub status_url: String,
    pub created_at: i64,
}

/// `GET /v1/images/jobs`: this replica's jobs, newest first, without their `data`.
#[derive(Object, Debug)]
pub struct JobList {
    /// `list`.
    pub object: String,
    pub data: Vec<JobRecord>,
}
