//! A job's life after validation: it is submitted to the engine like a synchronous request,
//! then a task of this process (not the HTTP request) owns its ticket, follows its events into
//! the record, delivers the images into it, and calls the webhook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use poem_openapi::types::ToJSON;
use tokio::sync::Notify;
use tracing::Instrument;
use url::Url;

use super::record::{JobAccepted, JobKind, JobRecord, JobStatus, WebhookStatus};
use super::{JobId, webhook};
use crate::engine::{EngineError, JobEvent, JobTicket};
use crate::server::error::ApiError;
use crate::server::jobs::Prepared;
use crate::server::respond::deliver;
use crate::server::{AppState, observe, unix_now};

/// Progress is written to a shared directory at most this often (every change is in memory).
const SAVE_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Submits a validated request as a job and starts its task. Fails like the synchronous call
/// would (429 queue full, 503 draining), plus 429 when the job table is full.
pub async fn submit(
    state: &Arc<AppState>,
    req: &poem::Request,
    kind: JobKind,
    p: Prepared,
    webhook: Option<Url>,
) -> Result<JobAccepted, ApiError> {
    let jobs = &state.jobs;
    let (id, now) = (JobId::random(), unix_now());
    let record = JobRecord {
        id: id.to_string(),
        object: "image.job".into(),
        status: JobStatus::Queued,
        kind,
        model: p.model.id.clone(),
        size: p.size(),
        output_format: p.output_format,
        response_format: p.response_format,
        queue_position: None,
        step: None,
        total_steps: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        expires_at: None,
        updated_at: now,
        replica: jobs.replica().to_string(),
        request_id: observe::current_id(),
        error: None,
        webhook: webhook.as_ref().map(|_| WebhookStatus::Pending),
        created: None,
        data: None,
        usage: None,
        withheld: Vec::new(),
    };
    jobs.reserve(&id, record)?;
    // Until the task owns the job, an early return or a client hanging up (poem drops this
    // future) removes the record; the ticket, dropped with it, cancels the job.
    let mut undo = Unsubmitted(Some((jobs, &id)));
    let ticket = state.engine.submit(&p.model.id, p.job.clone())?;
    let control = ticket.control();
    jobs.attach(&id, control.clone());
    // Written before the 202, so any replica can read the job as soon as the client has its id.
    jobs.save(&id).await?;
    undo.0 = None;
    let base = state.public_base(req);
    let guard = Abandon {
        state: state.clone(),
        id: id.clone(),
        _alive: jobs.tasks.start(),
    };
    let span = tracing::info_span!("job", job = %id);
    tokio::spawn(run(guard, ticket, p, base.clone(), webhook).instrument(span));
    tracing::info!(job = %id, "job accepted");
    Ok(JobAccepted {
        status_url: format!("{base}/v1/images/jobs/{id}"),
        id: id.to_string(),
        object: "image.job".into(),
        status: JobStatus::Queued,
        queue_position: control.queue_position(),
        created_at: now,
    })
}

/// Removes a reserved record on drop, unless defused (`.0 = None`).
struct Unsubmitted<'a>(Option<(&'a super::JobTable, &'a JobId)>);

impl Drop for Unsubmitted<'_> {
    fn drop(&mut self) {
        if let Some((jobs, id)) = self.0 {
            jobs.remove(id);
        }
    }
}

/// The job tasks alive, for the drain.
#[derive(Default)]
pub struct Tasks(Arc<(AtomicUsize, Notify)>);

impl Tasks {
    fn start(&self) -> TaskGuard {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        TaskGuard(self.0.clone())
    }

    /// Returns once no job task is alive: every accepted job has its final record (and its
    /// webhook tries are over).
    pub async fn settled(&self) {
        loop {
            let idle = self.0.1.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.0.0.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Counts a job task alive until dropped.
struct TaskGuard(Arc<(AtomicUsize, Notify)>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

/// Marks the job failed if its task ends without a final status (a panic), and counts the
/// task alive for the drain.
struct Abandon {
    state: Arc<AppState>,
    id: JobId,
    _alive: TaskGuard,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let error = ApiError::new(
            poem::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the job's task ended without a result (see the server log)",
        )
        .code("internal_error");
        self.state.jobs.finish(&self.id, JobStatus::Failed, |r| {
            r.error = Some(error.body().error);
        });
    }
}

async fn run(
    guard: Abandon,
    mut ticket: JobTicket,
    p: Prepared,
    base: String,
    webhook: Option<Url>,
) {
    let (state, id) = (&guard.state, &guard.id);
    let jobs = &state.jobs;
    // Other replicas take a record not written for `--job-stale-secs` for a dead replica's:
    // while the job waits or runs, it is rewritten well within that.
    let beat = (jobs.config().stale / 4).max(Duration::from_secs(1));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved = Instant::now();
    let result = loop {
        let save_now = tokio::select! {
            ev = ticket.next() => match ev {
                Some(JobEvent::Started) => jobs.update(id, |r| {
                    if r.status == JobStatus::Queued {
                        r.status = JobStatus::Running;
                        r.queue_position = None;
                        r.started_at = Some(unix_now());
                    }
                }),
                Some(JobEvent::Progress(pr)) if !pr.decoding => {
                    jobs.update(id, |r| {
                        r.step = Some(pr.step as u32);
                        r.total_steps = Some(pr.total as u32);
                    });
                    saved.elapsed() >= SAVE_PROGRESS_EVERY
                }
                Some(JobEvent::Progress(_)) => false,
                Some(JobEvent::Done(r)) => break r,
                // The engine dropped the job (shutdown) without a result.
                None => break Err(EngineError::ShuttingDown),
            },
            _ = heartbeat.tick(), if jobs.shared() => jobs.update(id, |_| {}),
        };
        if save_now {
            save(state, id).await;
            saved = Instant::now();
        }
    };
    let outcome = match result {
        Ok(out) => deliver(state, &base, &p, out).await,
        Err(e) => Err(ApiError::from(e)),
    };
    match outcome {
        Ok(images) => {
            let n = images.data.len();
            jobs.finish(id, JobStatus::Succeeded, |r| {
                r.created = Some(images.created);
                r.data = Some(images.data);
                r.usage = Some(images.usage);
                r.withheld = images.withheld;
            });
            tracing::info!(images = n, "job succeeded");
        }
        Err(e) if e.code.as_deref() == Some("cancelled") => {
            jobs.finish(id, JobStatus::Cancelled, |_| {});
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "job failed");
            jobs.finish(id, JobStatus::Failed, |r| {
                let mut body = e.body();
                body.error.request_id = r.request_id.clone();
                r.error = Some(body.error);
            });
        }
    }
    save(state, id).await;
    if let Some(url) = webhook {
        call_back(state, id, &url).await;
    }
}

/// Logs a failed write: the job goes on, and other replicas see its last written state.
async fn save(state: &AppState, id: &JobId) {
    if let Err(e) = state.jobs.save(id).await {
        tracing::warn!(job = %id, "cannot write the job record: {}", e.message);
    }
}

/// POSTs the final record (with its images) to the webhook and notes the outcome.
async fn call_back(state: &AppState, id: &JobId, url: &Url) {
    let Some(record) = state.jobs.get(id.as_str()).await.ok().flatten() else {
        return; // evicted already
    };
    let body = serde_json::to_string(&record.to_json()).unwrap_or_default();
    let ok = webhook::deliver(url, id.as_str(), body).await;
    let status = if ok {
        WebhookStatus::Delivered
    } else {
        WebhookStatus::Failed
    };
    state.jobs.update(id, |r| r.webhook = Some(status));
    save(state, id).await;
}
