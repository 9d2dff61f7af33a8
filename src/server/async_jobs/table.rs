//! This replica's jobs: their records in memory (the truth for the jobs it runs), written to
//! the shared directory when there is one, and read from there for jobs other replicas run.
//! Expired records go at the next job request or job end; caps evict the oldest finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use poem::http::StatusCode;

use super::dir::JobDir;
use super::record::{JobRecord, JobStatus};
use super::task::Tasks;
use super::{JobId, JobStoreError, JobsConfig, WebhookAllow, blocking};
use crate::engine::JobControl;
use crate::server::StoreKind;
use crate::server::error::ApiError;
use crate::server::unix_now;
use crate::sync::Locked;

struct Entry {
    record: JobRecord,
    /// Cancel and queue position, once the engine accepted the job.
    control: Option<JobControl>,
    /// Insertion order (newest first in lists; oldest evicted first among equals).
    seq: u64,
    /// Bumped at every change; the writer skips versions already on disk.
    version: u64,
    /// The version on disk; held while writing, so a job's writes never overtake each other.
    written: Arc<tokio::sync::Mutex<u64>>,
}

impl Entry {
    /// The record as a client sees it: the queue position is read now.
    fn view(&self) -> JobRecord {
        let mut r = self.record.clone();
        if r.status == JobStatus::Queued {
            r.queue_position = self.control.as_ref().and_then(JobControl::queue_position);
        }
        r
    }
}

#[derive(Default)]
struct Entries {
    map: HashMap<JobId, Entry>,
    next_seq: u64,
}

/// What a cancel found.
pub enum Cancelled {
    /// The record after the cancel (or as it was, when the job had already finished).
    Record(JobRecord),
    /// An active job of another replica: only that one can stop it.
    Elsewhere(String),
}

pub struct JobTable {
    /// Random per process: which replica runs a job.
    replica: String,
    config: JobsConfig,
    entries: Mutex<Entries>,
    dir: Option<Arc<JobDir>>,
    /// Job tasks alive, for the drain.
    pub tasks: Tasks,
}

impl JobTable {
    /// Blocking I/O for a directory store: call it at start.
    pub fn open(kind: &StoreKind, config: JobsConfig) -> Result<Self, JobStoreError> {
        let dir = match kind {
            StoreKind::Memory => None,
            StoreKind::Dir(path) => Some(Arc::new(JobDir::open(path, config.ttl + config.stale)?)),
        };
        let replica = format!("{:016x}", rand::random::<u64>());
        tracing::info!(replica, shared = dir.is_some(), "job table ready");
        Ok(Self {
            replica,
            config: JobsConfig {
                max_jobs: config.max_jobs.max(1),
                ..config
            },
            entries: Mutex::default(),
            dir,
            tasks: Tasks::default(),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn webhooks(&self) -> &WebhookAllow {
        &self.config.webhook_allow
    }

    /// Whether other replicas read these records (and need a heartbeat).
    pub fn shared(&self) -> bool {
        self.dir.is_some()
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.locked()
    }

    /// Takes a place for a new job (before the engine sees it): drops expired records, evicts
    /// the oldest finished one when full, and answers 429 when every record is active.
    pub fn reserve(&self, id: &JobId, record: JobRecord) -> Result<(), ApiError> {
        let mut gone = Vec::new();
        let result = {
            let mut e = self.lock();
            self.expire(&mut e, &mut gone);
            if e.map.len() >= self.config.max_jobs {
                self.evict_oldest(&mut e, &mut gone, |_| true);
            }
            if e.map.len() >= self.config.max_jobs {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this server holds {} unfinished jobs, its limit (--max-jobs)",
                        e.map.len()
                    ),
                )
                .code("too_many_jobs");
                err.retry_after = Some(5);
                Err(err)
            } else {
                let seq = e.next_seq;
                e.next_seq += 1;
                e.map.insert(
                    id.clone(),
                    Entry {
                        record,
                        control: None,
                        seq,
                        version: 1,
                        written: Arc::default(),
                    },
                );
                Ok(())
            }
        };
        self.forget(gone);
        result
    }

    pub fn attach(&self, id: &JobId, control: JobControl) {
        if let Some(entry) = self.lock().map.get_mut(id) {
            entry.control = Some(control);
        }
    }

    /// Drops the record of a submit that did not reach its 202 (and its file, if it was
    /// being written).
    pub fn remove(&self, id: &JobId) {
        if self.lock().map.remove(id).is_some() {
            self.forget(vec![id.clone()]);
        }
    }

    /// Changes a record (and its `updated_at`); false when it is gone.
    pub fn update(&self, id: &JobId, f: impl FnOnce(&mut JobRecord)) -> bool {
        let mut e = self.lock();
        let Some(entry) = e.map.get_mut(id) else {
            return false;
        };
        f(&mut entry.record);
        entry.record.updated_at = unix_now();
        entry.version += 1;
        true
    }

    /// Gives a job its final status (unless it has one: a cancel wins), then applies the caps.
    pub fn finish(&self, id: &JobId, status: JobStatus, f: impl FnOnce(&mut JobRecord)) {
        let ttl = self.config.ttl.as_secs() as i64;
        self.update(id, |r| {
            if r.finish(status, unix_now(), ttl) {
                f(r);
            }
        });
        let mut gone = Vec::new();
        {
            let mut e = self.lock();
            self.expire(&mut e, &mut gone);
            if let Some(max) = self.config.max_bytes {
                // The newest finished record stays, however large.
                let newest = e
                    .map
                    .iter()
                    .filter(|(_, x)| !x.record.status.is_active())
                    .max_by_key(|(_, x)| (x.record.finished_at, x.seq))
                    .map(|(k, _)| k.clone());
                while e.map.values().map(|x| x.record.result_bytes()).sum::<u64>() > max
                    && self.evict_oldest(&mut e, &mut gone, |k| Some(k) != newest.as_ref())
                {
                }
            }
        }
        self.forget(gone);
    }

    /// Writes the record to the shared directory, if there is one and it changed.
    pub async fn save(&self, id: &JobId) -> Result<(), ApiError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let Some(written) = self.lock().map.get(id).map(|x| x.written.clone()) else {
            return Ok(());
        };
        let mut on_disk = written.lock().await;
        // Read after taking the write lock: the last writer writes the newest version.
        let Some((version, record)) = self
            .lock()
            .map
            .get(id)
            .map(|x| (x.version, x.record.clone()))
        else {
            return Ok(()); // evicted meanwhile
        };
        if version <= *on_disk {
            return Ok(());
        }
        let id = id.clone();
        blocking(move || dir.write(&id, &record)).await?;
        *on_disk = version;
        Ok(())
    }

    /// The job as a client sees it, from this replica or (shared directory) another one;
    /// `None` for a malformed, unknown or expired id.
    pub async fn get(&self, id: &str) -> Result<Option<JobRecord>, ApiError> {
        let Some(id) = JobId::parse(id) else {
            return Ok(None);
        };
        let mut gone = Vec::new();
        let local = {
            let mut e = self.lock();
            self.expire(&mut e, &mut gone);
            e.map.get(&id).map(Entry::view)
        };
        self.forget(gone);
        match local {
            Some(r) => Ok(Some(r)),
            None => self.read_elsewhere(&id).await,
        }
    }

    /// A record from the shared directory, as of now: expired → gone; active but not written
    /// for `--job-stale-secs` → failed, `replica_lost` (its replica stopped writing: it died).
    async fn read_elsewhere(&self, id: &JobId) -> Result<Option<JobRecord>, ApiError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(None);
        };
        let record = {
            let (dir, id) = (dir.clone(), id.clone());
            blocking(move || dir.read(&id)).await?
        };
        let Some(mut r) = record else {
            return Ok(None);
        };
        let now = unix_now();
        r.mark_lost(now, &self.config);
        if r.expires_at.is_some_and(|t| t <= now) {
            let id = id.clone();
            tokio::task::spawn_blocking(move || dir.remove(&id));
            return Ok(None);
        }
        Ok(Some(r))
    }

    /// Cancels an active job of this replica (the engine stops it at its next step, or drops
    /// it unstarted); a finished job stays as it was. `None`: no such job.
    pub async fn cancel(&self, id: &str) -> Result<Option<Cancelled>, ApiError> {
        let Some(job) = JobId::parse(id) else {
            return Ok(None);
        };
        let ttl = self.config.ttl.as_secs() as i64;
        let local = {
            let mut e = self.lock();
            e.map.get_mut(&job).map(|entry| {
                if entry.record.finish(JobStatus::Cancelled, unix_now(), ttl) {
                    if let Some(c) = &entry.control {
                        c.cancel();
                    }
                    entry.record.updated_at = unix_now();
                    entry.version += 1;
                    tracing::info!(job = %job, "job cancelled");
                }
                entry.view()
            })
        };
        if let Some(r) = local {
            self.save(&job).await?;
            return Ok(Some(Cancelled::Record(r)));
        }
        Ok(self.read_elsewhere(&job).await?.map(|r| {
            if r.status.is_active() {
                Cancelled::Elsewhere(r.replica)
            } else {
                Cancelled::Record(r)
            }
        }))
    }

    /// This replica's jobs, newest first, without their images.
    pub fn list(&self, limit: usize) -> Vec<JobRecord> {
        let mut gone = Vec::new();
        let list = {
            let mut e = self.lock();
            self.expire(&mut e, &mut gone);
            let mut all: Vec<&mut Entry> = e.map.values_mut().collect();
            all.sort_by_key(|x| std::cmp::Reverse(x.seq));
            all.into_iter()
                .take(limit)
                .map(|x| {
                    // Out of the record while it is viewed: the images are never copied.
                    let data = x.record.data.take();
                    let r = x.view();
                    x.record.data = data;
                    r
                })
                .collect()
        };
        self.forget(gone);
        list
    }

    /// Removes finished records past their expiry.
    fn expire(&self, e: &mut Entries, gone: &mut Vec<JobId>) {
        let now = unix_now();
        e.map.retain(|id, x| {
            let keep = x.record.status.is_active() || x.record.expires_at.is_none_or(|t| t > now);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
    }

    /// Evicts the oldest finished record that `may` allows; false when there is none.
    fn evict_oldest(
        &self,
        e: &mut Entries,
        gone: &mut Vec<JobId>,
        may: impl Fn(&JobId) -> bool,
    ) -> bool {
        let oldest = e
            .map
            .iter()
            .filter(|(k, x)| !x.record.status.is_active() && may(k))
            .min_by_key(|(_, x)| (x.record.finished_at, x.seq))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                e.map.remove(&k);
                tracing::debug!(job = %k, "job record evicted (--max-jobs / --jobs-max-mib)");
                gone.push(k);
                true
            }
            None => false,
        }
    }

    /// Removes the files of records dropped from memory (a write still in flight for one of
    /// them may bring its file back: the directory sweep takes it later).
    fn forget(&self, gone: Vec<JobId>) {
        let Some(dir) = self.dir.clone().filter(|_| !gone.is_empty()) else {
            return;
        };
        let work = move || gone.iter().for_each(|id| dir.remove(id));
        // Off the runtime's threads when there is one (there is none in a task's drop at exit).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(work)),
            Err(_) => work(),
        }
    }
}
