//! The job routes. Submits validate exactly as the synchronous routes do (the same
//! `prepare`), so a bad request is a 4xx at once and only a valid one becomes a job.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::record::{JobAccepted, JobKind, JobList, JobRecord};
use super::table::Cancelled;
use super::task::submit;
use crate::server::AppState;
use crate::server::api::{ApiTags, api_response};
use crate::server::edit_input::prepare_edit;
use crate::server::error::{ApiError, ErrorVariants, bad_request};
use crate::server::jobs::{GenParams, edit_form, prepare};
use crate::server::types::{CreateImageJobEditRequest, CreateImageJobRequest, ErrorResponse};
use crate::server::variation::CreateImageJobEditJsonRequest;

/// A job's edit as a multipart form or as JSON, as `POST /v1/images/edits` takes it.
#[derive(poem_openapi::ApiRequest)]
pub enum JobEditBody {
    Form(CreateImageJobEditRequest),
    Json(Json<CreateImageJobEditJsonRequest>),
}

api_response!(
    JobSubmitResult,
    [
        /// Accepted: the job is queued. Poll `status_url` (also the `Location` header).
        #[oai(status = 202)]
        Accepted(Json<JobAccepted>, #[oai(header = "Location")] String),
    ]
);
api_response!(JobResult, Json<JobRecord>, "The job.");
api_response!(
    JobListResult,
    Json<JobList>,
    "This replica's jobs, newest first, without their images."
);

impl From<Result<JobAccepted, ApiError>> for JobSubmitResult {
    fn from(r: Result<JobAccepted, ApiError>) -> Self {
        match r {
            Ok(a) => {
                let location = a.status_url.clone();
                Self::Accepted(Json(a), location)
            }
            Err(e) => e.into(),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such job (finished jobs expire; see expires_at)",
    )
    .param("id")
    .code("not_found")
}

/// The webhook URL a request gave, when this server may call it.
fn webhook(state: &AppState, url: Option<&str>) -> Result<Option<url::Url>, ApiError> {
    match url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(u) => state.jobs.webhooks().check(u).map(Some),
        None => Ok(None),
    }
}

pub struct JobsApi;

#[OpenApi]
impl JobsApi {
    /// Create images from a prompt, as a job
    ///
    /// The body of `POST /v1/images/generations` (except `stream`) plus an optional
    /// `webhook_url`. Answers `202` with the job's id and `status_url` once the job is queued;
    /// an invalid request is refused at once (4xx), a full queue with 429 + `Retry-After`.
    #[oai(
        path = "/v1/images/jobs/generations",
        method = "post",
        operation_id = "createImageJob",
        tag = "ApiTags::Jobs"
    )]
    async fn create_job(
        &self,
        state: Data<&Arc<AppState>>,
        req: &poem::Request,
        body: Json<CreateImageJobRequest>,
    ) -> JobSubmitResult {
        let result = async {
            let CreateImageJobRequest {
                request,
                webhook_url,
            } = body.0;
            refuse_stream(request.stream, "generations")?;
            let hook = webhook(&state, webhook_url.as_deref())?;
            let p = prepare(&state, GenParams::from(request), None)?;
            submit(&state, req, JobKind::Generation, p, hook).await
        };
        result.await.into()
    }

    /// Edit an image, as a job
    ///
    /// The body of `POST /v1/images/edits` (multipart form, or JSON with `data:` URLs) plus
    /// an optional `webhook_url` field. Answers as `POST /v1/images/jobs/generations` does.
    #[oai(
        path = "/v1/images/jobs/edits",
        method = "post",
        operation_id = "createImageEditJob",
        tag = "ApiTags::Jobs"
    )]
    async fn create_edit_job(
        &self,
        state: Data<&Arc<AppState>>,
        req: &poem::Request,
        body: JobEditBody,
    ) -> JobSubmitResult {
        let result = async {
            let ((params, sources), webhook_url) = match body {
                JobEditBody::Form(form) => {
                    let (form, webhook_url) = form.split();
                    refuse_stream(form.stream, "edits")?;
                    (edit_form(form), webhook_url)
                }
                JobEditBody::Json(json) => {
                    let CreateImageJobEditJsonRequest { edit, webhook_url } = json.0;
                    refuse_stream(edit.request.stream, "edits")?;
                    (edit.into_parts(), webhook_url)
                }
            };
            let hook = webhook(&state, webhook_url.as_deref())?;
            let p = prepare_edit(&state, params, sources).await?;
            submit(&state, req, JobKind::Edit, p, hook).await
        };
        result.await.into()
    }

    /// List jobs
    ///
    /// The jobs this replica accepted and still keeps, newest first, without their images
    /// (`GET` a job for them). Behind a load balancer, each replica lists its own.
    #[oai(
        path = "/v1/images/jobs",
        method = "get",
        operation_id = "listImageJobs",
        tag = "ApiTags::Jobs"
    )]
    async fn list_jobs(
        &self,
        state: Data<&Arc<AppState>>,
        /// At most this many (1–100, default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
    ) -> JobListResult {
        JobListResult::Ok(Json(JobList {
            object: "list".into(),
            data: state.jobs.list(limit.0.unwrap_or(20) as usize),
        }))
    }

    /// Retrieve a job
    ///
    /// Its status, queue position and progress; once it succeeded, `data` as the synchronous
    /// call returns it. With a shared directory image store, any replica answers.
    #[oai(
        path = "/v1/images/jobs/:id",
        method = "get",
        operation_id = "retrieveImageJob",
        tag = "ApiTags::Jobs"
    )]
    async fn get_job(&self, state: Data<&Arc<AppState>>, id: Path<String>) -> JobResult {
        match state.jobs.get(&id.0).await {
            Ok(Some(r)) => JobResult::Ok(Json(r)),
            Ok(None) => not_found().into(),
            Err(e) => e.into(),
        }
    }

    /// Cancel a job
    ///
    /// A queued or running job becomes `cancelled` at once and its device stops at its next
    /// step; a finished job is answered as it is (nothing to cancel). The record stays readable
    /// (`GET`) until it expires, which is why this is OpenAI's `POST …/cancel` and not a
    /// `DELETE`. Only the replica running a job can cancel it: through another one, 409
    /// `job_on_other_replica`.
    #[oai(
        path = "/v1/images/jobs/:id/cancel",
        method = "post",
        operation_id = "cancelImageJob",
        tag = "ApiTags::Jobs"
    )]
    async fn cancel_job(&self, state: Data<&Arc<AppState>>, id: Path<String>) -> JobResult {
        match state.jobs.cancel(&id.0).await {
            Ok(Some(Cancelled::Record(r))) => JobResult::Ok(Json(r)),
            Ok(Some(Cancelled::Elsewhere(replica))) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "this job runs on another replica ({replica}), which alone can cancel it; \
                     retry (a load balancer may send the request there) or wait for the result"
                ),
            )
            .param("id")
            .code("job_on_other_replica")
            .into(),
            Ok(None) => not_found().into(),
            Err(e) => e.into(),
        }
    }
}

/// A job's images come by polling or webhook; an event stream is the synchronous route's
/// (`POST /v1/images/{route}`), which the client keeps open to the end.
fn refuse_stream(stream: Option<bool>, route: &str) -> Result<(), ApiError> {
    if stream == Some(true) {
        return Err(ApiError::invalid(
            "stream",
            format!(
                "`stream` is not available for jobs: poll the job (or give `webhook_url`); \
                 to stream, use POST /v1/images/{route}"
            ),
        ));
    }
    Ok(())
}
