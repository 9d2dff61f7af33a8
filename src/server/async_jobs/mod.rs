//! Async jobs: the bodies of the synchronous image routes, answered `202` with a job id, then
//! polled (`GET /v1/images/jobs/{id}`), cancelled (`POST /v1/images/jobs/{id}/cancel`) or
//! called back (webhook).
//!
//! A job goes through the engine's one queue like a synchronous request (same limits, 429,
//! drain, metrics); a task of this process owns its ticket, so the job outlives the request
//! that submitted it. Its record lives in this process's [`JobTable`], and, with the shared
//! directory image store, also in `PATH/jobs/` for other replicas to read ([`dir`]).

pub mod api;
mod dir;
pub mod record;
mod table;
mod task;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::time::Duration;

use poem::http::StatusCode;

use crate::server::error::ApiError;
pub use table::JobTable;
pub use webhook::WebhookAllow;

/// Limits of the job table: `--job-ttl-secs`, `--max-jobs`, `--jobs-max-mib`,
/// `--job-stale-secs`, `--webhook-allow`.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How long a finished job's record (and its results) is kept.
    pub ttl: Duration,
    /// Records kept per replica; the oldest finished ones go first.
    pub max_jobs: usize,
    /// Bytes of results kept per replica (the newest finished job's are kept even when alone
    /// larger); `None` = no byte cap.
    pub max_bytes: Option<u64>,
    /// A queued or running job whose record (in a shared directory) has not been written for
    /// this long is reported failed (`replica_lost`) by other replicas.
    pub stale: Duration,
    pub webhook_allow: WebhookAllow,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            max_jobs: 1024,
            max_bytes: Some(512 << 20),
            stale: Duration::from_secs(120),
            webhook_allow: WebhookAllow::Off,
        }
    }
}

/// A valid job id: `job_` and exactly 32 lowercase hex digits. Only such a name (plus
/// `.json`) ever reaches the filesystem, so an id from a URL cannot name another file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

const PREFIX: &str = "job_";

impl JobId {
    /// 128 bits from `rand`'s thread RNG (ChaCha12 seeded from the OS, a CSPRNG): ids cannot
    /// be guessed, which is all that keeps one client from reading another's job when the
    /// server has no API key.
    pub fn random() -> Self {
        Self(format!("{PREFIX}{:032x}", rand::random::<u128>()))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(PREFIX)?;
        let ok = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_string()))
    }

    fn from_file_name(name: &str) -> Option<Self> {
        Self::parse(name.strip_suffix(".json")?)
    }

    fn file_name(&self) -> String {
        format!("{}.json", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    #[error("job records directory {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("job records: {0}")]
    Task(String),
}

impl JobStoreError {
    fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

impl From<JobStoreError> for ApiError {
    /// A 5xx that says what failed but not where: the path is for the server's log.
    fn from(e: JobStoreError) -> Self {
        tracing::error!("{e}");
        let message = match &e {
            JobStoreError::Io { action, source, .. } => {
                format!("the job store failed: cannot {action}: {}", source.kind())
            }
            JobStoreError::Task(m) => format!("the job store failed: {m}"),
        };
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).code("job_store_error")
    }
}

/// Filesystem calls run on tokio's blocking pool: an NFS stall must not stall the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobStoreError> + Send + 'static,
) -> Result<T, JobStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobStoreError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict() {
        let id = JobId::random();
        assert!(id.as_str().starts_with("job_") && id.as_str().len() == 36);
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(JobId::from_file_name(&id.file_name()), Some(id));
        assert_ne!(JobId::random(), JobId::random());
        for bad in [
            "",
            "job_",
            "job_0123456789abcdef0123456789abcdeF",
            "job_0123456789abcdef0123456789abcde",
            "job_0123456789abcdef0123456789abcdef0",
            "job_../../../../etc/passwd",
            "JOB_0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef",
            "job_0123456789abcdef0123456789abcdef/",
        ] {
            assert!(JobId::parse(bad).is_none(), "{bad}");
        }
        assert!(JobId::from_file_name("job_0123456789abcdef0123456789abcdef.tmp").is_none());
    }

    #[test]
    fn webhook_allow_list() {
        let list = |v: &[&str]| {
            WebhookAllow::from_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(list(&[]), WebhookAllow::Off);
        assert_eq!(list(&[" "]), WebhookAllow::Off);
        assert_eq!(list(&["a", "*"]), WebhookAllow::Any);
        let hosts = list(&["Hooks.Example.com", "[::1]", "127.0.0.1"]);
        assert!(hosts.check("https://hooks.example.com/x?t=1").is_ok());
        assert!(hosts.check("http://[::1]:8080/").is_ok());
        assert!(hosts.check("http://127.0.0.1:9/").is_ok());
        let code = |r: Result<url::Url, ApiError>| r.err().and_then(|e| e.code).unwrap_or_default();
        assert_eq!(
            code(hosts.check("http://evil.example.com/")),
            "webhook_not_allowed"
        );
        assert_eq!(
            code(hosts.check("http://hooks.example.com.evil.net/")),
            "webhook_not_allowed"
        );
        assert_eq!(
            code(hosts.check("ftp://hooks.example.com/")),
            "invalid_value"
        );
        assert_eq!(code(hosts.check("file:///etc/passwd")), "invalid_value");
        assert_eq!(
            code(hosts.check("http://u:p@hooks.example.com/")),
            "invalid_value"
        );
        assert_eq!(code(hosts.check("not a url")), "invalid_value");
        assert_eq!(
            code(WebhookAllow::Off.check("http://127.0.0.1/")),
            "webhooks_disabled"
        );
        assert!(WebhookAllow::Any.check("http://10.0.0.1/").is_ok());
        assert_eq!(
            code(WebhookAllow::Any.check("gopher://x/")),
            "invalid_value"
        );
    }
}
