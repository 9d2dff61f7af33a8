//! [`EngineHandle`]: starts one worker per device, sends each job to the least-loaded replica
//! of its model; drain and shutdown. What it reports (models, load, metrics): `report.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;

use tokio::sync::mpsc as tmpsc;
use tracing::info;

use super::metrics::EngineMetrics;
use super::queue::{Admission, Counters, JobTicket, Queued, Slot, WorkerLoad};
use super::{EngineConfig, EngineError, ImageJob, ModelState, ServedModel, worker};
use crate::sync::Locked;

/// A model id and its replicas (indices in `Inner::replicas`).
pub(super) struct Model {
    pub(super) spec: ServedModel,
    pub(super) replicas: Vec<usize>,
}

pub(super) struct Replica {
    pub(super) model: usize,
    pub(super) worker: usize,
    pub(super) device: String,
}

pub(super) struct Worker {
    pub(super) device: String,
    tx: Mutex<Option<mpsc::Sender<worker::Msg>>>,
    pub(super) load: Arc<WorkerLoad>,
}

pub(crate) struct Inner {
    pub(super) models: Vec<Model>,
    pub(super) replicas: Vec<Replica>,
    pub(super) workers: Vec<Worker>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Per replica.
    pub(super) states: Arc<Mutex<Vec<ModelState>>>,
    pub(super) admission: Arc<Admission>,
    pub(super) max_queue: usize,
    /// `--preload`: every replica starts loading at once (readiness waits for them).
    preload: bool,
    /// Set by `begin_drain`: new jobs are refused, accepted ones go on.
    draining: AtomicBool,
    /// Set by `begin_shutdown`: accepted jobs are cancelled too.
    stop: Arc<AtomicBool>,
    pub(super) counters: Arc<Counters>,
    pub(super) metrics: EngineMetrics,
}

/// Cheap to clone; all clones share the same workers.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) inner: Arc<Inner>,
}

impl EngineHandle {
    /// Spawns one worker thread per distinct device among `models`. The same id on several
    /// devices is one model with a replica on each; the same id twice on one device is an error.
    pub fn start(specs: Vec<ServedModel>, config: EngineConfig) -> Result<Self, EngineError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = specs.iter().find(|m| !seen.insert((&m.id, &m.device))) {
            return Err(EngineError::Invalid {
                param: None,
                message: format!("model id `{}` is given twice on `{}`", dup.id, dup.device),
            });
        }
        if let Some(odd) = specs
            .iter()
            .find(|m| specs.iter().any(|o| o.id == m.id && o.family != m.family))
        {
            return Err(EngineError::Invalid {
                param: None,
                message: format!("model id `{}` names models of different families", odd.id),
            });
        }
        let mut worker_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut models: Vec<Model> = Vec::new();
        let mut replicas = Vec::new();
        for spec in &specs {
            let next = worker_of.len();
            let worker = *worker_of.entry(spec.device.clone()).or_insert(next);
            let model = match models.iter().position(|m| m.spec.id == spec.id) {
                Some(i) => i,
                None => {
                    models.push(Model {
                        spec: spec.clone(),
                        replicas: Vec::new(),
                    });
                    models.len() - 1
                }
            };
            models[model].replicas.push(replicas.len());
            replicas.push(Replica {
                model,
                worker,
                device: spec.device.clone(),
            });
        }
        let mut devices: Vec<(String, usize)> = worker_of.into_iter().collect();
        devices.sort_by_key(|(_, w)| *w);
        let mut receivers = Vec::new();
        let workers = devices
            .into_iter()
            .map(|(device, _)| {
                let (tx, rx) = mpsc::channel();
                receivers.push(rx);
                Worker {
                    device,
                    tx: Mutex::new(Some(tx)),
                    load: Arc::new(WorkerLoad::new()),
                }
            })
            .collect();
        let inner = Arc::new(Inner {
            models,
            replicas,
            workers,
            threads: Mutex::new(Vec::new()),
            states: Arc::new(Mutex::new(vec![ModelState::Unloaded; specs.len()])),
            admission: Arc::new(Admission::default()),
            max_queue: config.max_queue.max(1),
            preload: config.preload,
            draining: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            metrics: EngineMetrics::new(),
        });
        let engine = Self { inner };
        for (w, rx) in receivers.into_iter().enumerate() {
            if let Err(e) = engine.spawn_worker(w, rx, &specs) {
                engine.shutdown();
                return Err(e);
            }
        }
        let inner = &engine.inner;
        if config.preload {
            for (r, replica) in inner.replicas.iter().enumerate() {
                engine.send(replica.worker, worker::Msg::Load(r));
            }
        }
        info!(
            models = inner.models.len(),
            replicas = inner.replicas.len(),
            devices = %inner.workers.iter().map(|w| w.device.as_str()).collect::<Vec<_>>().join(","),
            max_queue = inner.max_queue,
            "engine started"
        );
        Ok(engine)
    }

    fn spawn_worker(
        &self,
        w: usize,
        rx: mpsc::Receiver<worker::Msg>,
        specs: &[ServedModel],
    ) -> Result<(), EngineError> {
        let inner = &self.inner;
        let device = inner.workers[w].device.clone();
        let replicas = inner
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.worker == w)
            .map(|(i, r)| worker::Owned {
                replica: i,
                model: r.model,
                id: specs[i].id.clone(),
                loader: specs[i].loader.clone(),
                metrics: inner.metrics.replica(&specs[i].id, &device),
            })
            .collect();
        let ctx = worker::Context {
            rx,
            index: w,
            device: device.clone(),
            replicas,
            states: inner.states.clone(),
            stop: inner.stop.clone(),
            counters: inner.counters.clone(),
            load: inner.workers[w].load.clone(),
            engine: Arc::downgrade(inner),
        };
        let thread = std::thread::Builder::new()
            .name(format!("kiln-worker-{device}"))
            .spawn(move || worker::run(ctx))
            .map_err(|e| EngineError::Failed(format!("cannot start a worker thread: {e}")))?;
        inner.threads.locked().push(thread);
        Ok(())
    }

    /// The handle of a worker's `Weak` reference, while the engine lives.
    pub(crate) fn upgrade(inner: &Weak<Inner>) -> Option<Self> {
        inner.upgrade().map(|inner| Self { inner })
    }

    fn send(&self, worker: usize, msg: worker::Msg) -> bool {
        let guard = self.inner.workers[worker].tx.locked();
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        // Numbered under the sender's lock: the numbers follow the channel's order.
        if let worker::Msg::Job(q) = &msg {
            q.slot.enqueue();
        }
        tx.send(msg).is_ok()
    }

    /// Queues `job` for `model` on its least-loaded replica, or fails at once when the queue is
    /// full or the engine is draining or stopping. The caller's current span goes with the job.
    pub fn submit(&self, model: &str, job: ImageJob) -> Result<JobTicket, EngineError> {
        let inner = &self.inner;
        let refused = || inner.draining.load(Ordering::SeqCst) || inner.stop.load(Ordering::SeqCst);
        if refused() {
            return Err(EngineError::ShuttingDown);
        }
        let unknown = || EngineError::UnknownModel(model.to_string());
        let idx = inner
            .models
            .iter()
            .position(|m| m.spec.id == model)
            .ok_or_else(unknown)?;
        let worker = inner.replicas[self.pick(idx, &[]).ok_or_else(unknown)?].worker;
        let max = inner.max_queue;
        inner
            .admission
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| EngineError::QueueFull(max))?;
        // Dropping `slot` gives the place back.
        let place = Arc::default();
        let slot = Slot::new(
            inner.admission.clone(),
            inner.workers[worker].load.clone(),
            Arc::clone(&place),
        );
        // The place was taken before this check, both SeqCst: either the caller of `begin_drain`
        // sees this job in `is_idle`, or this call sees the drain and gives the place back.
        if refused() {
            return Err(EngineError::ShuttingDown);
        }
        let (tx, rx) = tmpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let queued = Queued {
            model: idx,
            job,
            events: tx,
            cancel: cancel.clone(),
            span: tracing::Span::current(),
            started: false,
            tried: Vec::new(),
            slot,
        };
        if !self.send(worker, worker::Msg::Job(Box::new(queued))) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(JobTicket { rx, cancel, place })
    }

    /// The replica of `model` for the next job: the one whose worker has the fewest jobs
    /// waiting or running, among those on workers not in `tried` and not failed to load. With
    /// `tried` empty and every replica failed, the least-loaded of all (its worker retries the
    /// load, as a lone model does); `None` when nothing is left.
    fn pick(&self, model: usize, tried: &[usize]) -> Option<usize> {
        let inner = &self.inner;
        let states = inner.states.locked();
        let untried = inner.models[model]
            .replicas
            .iter()
            .copied()
            .filter(|&r| !tried.contains(&inner.replicas[r].worker));
        let load = |r: &usize| inner.workers[inner.replicas[*r].worker].load.total();
        untried
            .clone()
            .filter(|&r| !matches!(states[r], ModelState::Failed(_)))
            .min_by_key(load)
            .or_else(|| tried.is_empty().then(|| untried.min_by_key(load)).flatten())
    }

    /// Sends `q`, whose replica on worker `q.tried.last()` failed to load, to another replica
    /// of its model; gives it back when none is left.
    pub(crate) fn reroute(&self, mut q: Box<Queued>) -> Result<(), Box<Queued>> {
        let Some(replica) = self.pick(q.model, &q.tried) else {
            return Err(q);
        };
        let worker = self.inner.replicas[replica].worker;
        q.slot.move_to(self.inner.workers[worker].load.clone());
        // A worker stopped meanwhile drops the job: its ticket sees ShuttingDown, as the jobs
        // still queued at shutdown do.
        self.send(worker, worker::Msg::Job(q));
        Ok(())
    }

    /// [`Self::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Models load at start (`--preload`) rather than on first use.
    pub fn preloads(&self) -> bool {
        self.inner.preload
    }

    /// Refuses new jobs ([`EngineError::ShuttingDown`]) while the accepted ones, queued and
    /// running, go on to the end; see [`Self::wait_idle`]. Idempotent.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        info!("draining: new jobs are refused, accepted ones go on");
    }

    /// Refuses new jobs and cancels queued and running ones (a running job stops at its next
    /// step); does not wait. Idempotent.
    pub fn begin_shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        for w in &self.inner.workers {
            if let Some(tx) = w.tx.locked().take() {
                let _ = tx.send(worker::Msg::Stop);
            }
        }
    }

    /// [`Self::begin_shutdown`], then waits for the workers to exit. Idempotent.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let threads: Vec<_> = self.inner.threads.locked().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        info!("engine stopped");
    }
}
