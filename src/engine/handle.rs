//! [`EngineHandle`]: starts one worker per device, sends each job to the least-loaded replica
//! of its model, and reports models, replicas, stats and metrics; drain and shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::thread::JoinHandle;

use tokio::sync::mpsc as tmpsc;
use tracing::info;

use super::metrics::{EngineMetrics, Scrape};
use super::queue::{Admission, Counters, JobTicket, Queued, Slot, WorkerLoad};
use super::{
    DeviceLoad, EngineConfig, EngineError, EngineStats, ImageJob, ModelInfo, ModelState,
    ReplicaInfo, ServedModel, worker,
};

/// A model id and its replicas (indices in `Inner::replicas`).
struct Model {
    spec: ServedModel,
    replicas: Vec<usize>,
}

struct Replica {
    model: usize,
    worker: usize,
    device: String,
}

struct Worker {
    device: String,
    tx: Mutex<Option<mpsc::Sender<worker::Msg>>>,
    load: Arc<WorkerLoad>,
}

pub(crate) struct Inner {
    models: Vec<Model>,
    replicas: Vec<Replica>,
    workers: Vec<Worker>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Per replica.
    states: Arc<Mutex<Vec<ModelState>>>,
    admission: Arc<Admission>,
    max_queue: usize,
    /// `--preload`: every replica starts loading at once (readiness waits for them).
    preload: bool,
    /// Set by `begin_drain`: new jobs are refused, accepted ones go on.
    draining: AtomicBool,
    /// Set by `begin_shutdown`: accepted jobs are cancelled too.
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    metrics: EngineMetrics,
}

/// Cheap to clone; all clones share the same workers.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
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
        inner
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thread);
        Ok(())
    }

    /// The handle of a worker's `Weak` reference, while the engine lives.
    pub(crate) fn upgrade(inner: &Weak<Inner>) -> Option<Self> {
        inner.upgrade().map(|inner| Self { inner })
    }

    fn send(&self, worker: usize, msg: worker::Msg) -> bool {
        let guard = self.inner.workers[worker]
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return false;
        };
        // Numbered under the sender's lock: the numbers follow the channel's order.
        if let worker::Msg::Job(q) = &msg {
            q.slot.enqueue();
        }
        tx.send(msg).is_ok()
    }

    fn states(&self) -> Vec<ModelState> {
        self.inner
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One entry per model id. Its state sums up its replicas': ready when one is, else
    /// loading, else unloaded; failed only when every replica failed (the message names each
    /// device when there are several).
    pub fn models(&self) -> Vec<ModelInfo> {
        let states = self.states();
        let inner = &self.inner;
        inner
            .models
            .iter()
            .map(|m| {
                let of = |r: &usize| (inner.replicas[*r].device.as_str(), &states[*r]);
                let all: Vec<(&str, &ModelState)> = m.replicas.iter().map(of).collect();
                let any = |s: ModelState| all.iter().any(|(_, x)| **x == s);
                let state = if any(ModelState::Ready) {
                    ModelState::Ready
                } else if any(ModelState::Loading) {
                    ModelState::Loading
                } else if any(ModelState::Unloaded) {
                    ModelState::Unloaded
                } else {
                    let errors: Vec<String> = all
                        .iter()
                        .filter_map(|(d, s)| match s {
                            ModelState::Failed(e) if all.len() > 1 => Some(format!("{d}: {e}")),
                            ModelState::Failed(e) => Some(e.clone()),
                            _ => None,
                        })
                        .collect();
                    ModelState::Failed(errors.join("; "))
                };
                ModelInfo {
                    id: m.spec.id.clone(),
                    family: m.spec.family,
                    source: m.spec.source.clone(),
                    demo: m.spec.demo,
                    state,
                }
            })
            .collect()
    }

    pub fn model(&self, id: &str) -> Option<ModelInfo> {
        self.models().into_iter().find(|m| m.id == id)
    }

    /// Every replica: each model on each device, with its own state.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let states = self.states();
        let inner = &self.inner;
        inner
            .replicas
            .iter()
            .zip(states)
            .map(|(r, state)| ReplicaInfo {
                id: inner.models[r.model].spec.id.clone(),
                device: r.device.clone(),
                state,
            })
            .collect()
    }

    /// The jobs waiting and running on each device's worker.
    pub fn devices(&self) -> Vec<DeviceLoad> {
        self.inner
            .workers
            .iter()
            .map(|w| DeviceLoad {
                device: w.device.clone(),
                waiting: w.load.waiting.load(Ordering::Acquire),
                running: w.load.running.load(Ordering::Acquire),
            })
            .collect()
    }

    pub fn stats(&self) -> EngineStats {
        let c = &self.inner.counters;
        EngineStats {
            in_flight: self.inner.admission.in_flight.load(Ordering::SeqCst),
            capacity: self.inner.max_queue,
            completed: c.completed.load(Ordering::Acquire),
            cancelled: c.cancelled.load(Ordering::Acquire),
            failed: c.failed.load(Ordering::Acquire),
        }
    }

    /// No accepted job is queued or running: each has sent its `Done` (or was dropped by
    /// shutdown). After [`Self::begin_drain`] it stays true once true.
    pub fn is_idle(&self) -> bool {
        self.inner.admission.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Returns once [`Self::is_idle`]; with [`Self::begin_drain`] before, once every accepted
    /// job is done (wrap it in a timeout for a grace period).
    pub async fn wait_idle(&self) {
        let admission = &self.inner.admission;
        loop {
            let idle = admission.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.is_idle() {
                return;
            }
            idle.await;
        }
    }

    /// Adds the engine's metrics (see `metrics.rs` for the names) to `registry`, which must
    /// not have a prefix: the names already start with `kiln_`. Call it once per registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let inner = &self.inner;
        let scrape = Scrape {
            workers: inner
                .workers
                .iter()
                .map(|w| (w.device.clone(), w.load.clone()))
                .collect(),
            replicas: inner
                .replicas
                .iter()
                .map(|r| (inner.models[r.model].spec.id.clone(), r.device.clone()))
                .collect(),
            states: inner.states.clone(),
            capacity: inner.max_queue,
        };
        inner.metrics.register(registry, scrape);
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
        let states = inner.states.lock().unwrap_or_else(|p| p.into_inner());
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
            if let Some(tx) = w.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(worker::Msg::Stop);
            }
        }
    }

    /// [`Self::begin_shutdown`], then waits for the workers to exit. Idempotent.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let threads: Vec<_> = self
            .inner
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        info!("engine stopped");
    }
}
