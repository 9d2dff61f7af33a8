//! Job records in the shared image directory (`--image-store dir:PATH`), under `PATH/jobs/`:
//! one JSON file per job, `job_<32 hex>.json`, written by the replica that runs the job and
//! read by any replica. As in the image store, the files are the state: only validated ids
//! become paths, writes are atomic (temporary file, then rename) and reads never follow a
//! symlink.
//!
//! Clean-up: the owner removes a record when it expires or is evicted; whichever replica
//! writes also sweeps (at most once a minute) files older than the TTL plus the staleness
//! limit, which is what is left by replicas that died.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use poem_openapi::types::{ParseFromJSON, ToJSON};

use super::record::JobRecord;
use super::{JobId, JobStoreError};
use crate::server::store::files::{
    STALE_TMP, TMP_PREFIX, age, open_regular, remove, write_atomic, write_tmp,
};
use crate::sync::Locked;

const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(super) struct JobDir {
    dir: PathBuf,
    /// A file not written for this long is gone from every replica's point of view.
    keep: Duration,
    last_sweep: Mutex<Option<Instant>>,
}

impl JobDir {
    /// Creates `images/jobs` if needed, checks that a file can be written there, and sweeps
    /// it (blocking I/O: call it at start).
    pub(super) fn open(images: &Path, keep: Duration) -> Result<Self, JobStoreError> {
        let dir = images.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|e| JobStoreError::io(&dir, "create it", e))?;
        let probe = write_tmp(&dir, b"").map_err(|e| JobStoreError::io(&dir, "write in it", e))?;
        remove(&probe);
        let store = Self {
            dir,
            keep,
            last_sweep: Mutex::new(None),
        };
        store.sweep();
        Ok(store)
    }

    fn path(&self, id: &JobId) -> PathBuf {
        self.dir.join(id.file_name())
    }

    pub(super) fn write(&self, id: &JobId, record: &JobRecord) -> Result<(), JobStoreError> {
        self.sweep();
        let json = serde_json::to_vec(&record.to_json()).map_err(|e| {
            JobStoreError::Task(format!("cannot serialise job {}: {e}", id.as_str()))
        })?;
        write_atomic(&self.dir, &id.file_name(), &json)
            .map_err(|e| JobStoreError::io(&self.dir, "write a job record", e))
    }

    /// The record as last written, or `None` when there is none (or it is not a job record:
    /// logged, and treated as absent).
    pub(super) fn read(&self, id: &JobId) -> Result<Option<JobRecord>, JobStoreError> {
        let path = self.path(id);
        let err = |e| JobStoreError::io(&self.dir, "read a job record", e);
        let Some((mut file, meta)) = open_regular(&path).map_err(err)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).map_err(err)?;
        let parsed = serde_json::from_slice(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|v| JobRecord::parse_from_json(Some(v)).map_err(|e| e.into_message()));
        match parsed {
            Ok(r) if r.id == id.as_str() => Ok(Some(r)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "job record names another job; ignored");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "unreadable job record ignored: {e}");
                Ok(None)
            }
        }
    }

    pub(super) fn remove(&self, id: &JobId) {
        remove(&self.path(id));
    }

    /// Removes records not written for `keep` and temporary files left by dead writers; at
    /// most once a minute. Errors are logged: a sweep is housekeeping, never a request's fault.
    fn sweep(&self) {
        {
            let mut last = self.last_sweep.locked();
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot list the job records: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let limit = if name.starts_with(TMP_PREFIX) {
                STALE_TMP
            } else if JobId::from_file_name(name).is_some() {
                self.keep
            } else {
                continue; // not ours: never touched
            };
            if age(&meta) >= limit {
                remove(&entry.path());
            }
        }
    }
}
