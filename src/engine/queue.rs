//! The bounded queue in front of the workers: [`EngineHandle`] (submit, models, stats,
//! shutdown) and the [`JobTicket`] a submitted job is followed and cancelled through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::mpsc as tmpsc;
use tracing::info;

use super::{
    EngineConfig, EngineError, EngineStats, GeneratedImage, ImageJob, ModelInfo, ModelState,
    Progress, ServedModel, worker,
};

/// What a job reports, in order: `Started`, `Progress`×steps, then exactly one `Done`.
#[derive(Debug)]
pub enum JobEvent {
    Started,
    Progress(Progress),
    Done(Result<Vec<GeneratedImage>, EngineError>),
}

#[derive(Default)]
pub(crate) struct Counters {
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
}

/// Holds one place in the bounded queue until the worker is done with the job.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct Queued {
    pub model: usize,
    pub job: ImageJob,
    pub events: tmpsc::UnboundedSender<JobEvent>,
    pub cancel: Arc<AtomicBool>,
    pub _slot: Slot,
}

/// A submitted job. Dropping it (e.g. because the HTTP client went away) cancels the job.
pub struct JobTicket {
    rx: tmpsc::UnboundedReceiver<JobEvent>,
    cancel: Arc<AtomicBool>,
}

impl JobTicket {
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.rx.recv().await
    }

    /// Waits for the result, skipping progress events.
    pub async fn wait(mut self) -> Result<Vec<GeneratedImage>, EngineError> {
        loop {
            match self.rx.recv().await {
                Some(JobEvent::Done(r)) => return r,
                Some(_) => {}
                None => return Err(EngineError::ShuttingDown),
            }
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }
}

impl Drop for JobTicket {
    fn drop(&mut self) {
        self.cancel();
    }
}

struct Inner {
    models: Vec<(ServedModel, usize)>,
    workers: Vec<Mutex<Option<mpsc::Sender<worker::Msg>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    states: Arc<Mutex<Vec<ModelState>>>,
    in_flight: Arc<AtomicUsize>,
    max_queue: usize,
    preload: bool,
    draining: AtomicBool,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// Cheap to clone; all clones share the same workers.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl EngineHandle {
    /// Spawns one worker thread per distinct device among `models`.
    pub fn start(models: Vec<ServedModel>, config: EngineConfig) -> Result<Self, EngineError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = models.iter().find(|m| !seen.insert(m.id.clone())) {
            return Err(EngineError::Invalid {
                param: None,
                message: format!("model id `{}` is given twice", dup.id),
            });
        }
        let states = Arc::new(Mutex::new(vec![ModelState::Unloaded; models.len()]));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut by_device: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, m) in models.iter().enumerate() {
            by_device.entry(m.device.clone()).or_default().push(i);
        }
        let mut worker_of = vec![0; models.len()];
        let (mut workers, mut threads) = (Vec::new(), Vec::new());
        for (w, (device, idx)) in by_device.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let loaders = idx
                .iter()
                .map(|&i| (i, models[i].id.clone(), models[i].loader.clone()))
                .collect();
            let ctx = worker::Context {
                rx,
                loaders,
                states: states.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("kiln-worker-{device}"))
                .spawn(move || worker::run(ctx))
                .map_err(|e| EngineError::Failed(format!("cannot start a worker thread: {e}")))?;
            for &i in &idx {
                worker_of[i] = w;
            }
            workers.push(Mutex::new(Some(tx)));
            threads.push(thread);
        }
        let models: Vec<_> = models.into_iter().zip(worker_of).collect();
        let inner = Inner {
            models,
            workers,
            threads: Mutex::new(threads),
            states,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_queue: config.max_queue.max(1),
            preload: config.preload,
            draining: AtomicBool::new(false),
            stop,
            counters,
        };
        let engine = Self {
            inner: Arc::new(inner),
        };
        if config.preload {
            for (i, (_, w)) in engine.inner.models.iter().enumerate() {
                engine.send(*w, worker::Msg::Load(i));
            }
        }
        info!(
            models = engine.inner.models.len(),
            workers = engine.inner.workers.len(),
            max_queue = engine.inner.max_queue,
            "engine started"
        );
        Ok(engine)
    }

    fn send(&self, worker: usize, msg: worker::Msg) -> bool {
        let guard = self.inner.workers[worker]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard.as_ref().is_some_and(|tx| tx.send(msg).is_ok())
    }

    fn index(&self, id: &str) -> Option<usize> {
        self.inner.models.iter().position(|(m, _)| m.id == id)
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        let states = self
            .inner
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.inner
            .models
            .iter()
            .zip(states)
            .map(|((m, _), state)| ModelInfo {
                id: m.id.clone(),
                family: m.family,
                source: m.source.clone(),
                demo: m.demo,
                state,
            })
            .collect()
    }

    pub fn model(&self, id: &str) -> Option<ModelInfo> {
        self.models().into_iter().find(|m| m.id == id)
    }

    pub fn stats(&self) -> EngineStats {
        let c = &self.inner.counters;
        EngineStats {
            in_flight: self.inner.in_flight.load(Ordering::Acquire),
            capacity: self.inner.max_queue,
            completed: c.completed.load(Ordering::Acquire),
            cancelled: c.cancelled.load(Ordering::Acquire),
            failed: c.failed.load(Ordering::Acquire),
        }
    }

    /// Whether [`Self::begin_drain`] (or a shutdown) has begun: no new jobs are taken.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire) || self.inner.stop.load(Ordering::Acquire)
    }

    /// LEAD STUB (the devices branch has the real one): refuses new jobs, lets the rest finish.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether models load at start (`--preload`) rather than on first use.
    pub fn preloads(&self) -> bool {
        self.inner.preload
    }

    /// LEAD STUB: replaced by the devices branch.
    pub fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Queues `job` for `model`, or fails at once when the queue is full.
    pub fn submit(&self, model: &str, job: ImageJob) -> Result<JobTicket, EngineError> {
        if self.is_draining() {
            return Err(EngineError::ShuttingDown);
        }
        let idx = self
            .index(model)
            .ok_or_else(|| EngineError::UnknownModel(model.to_string()))?;
        let max = self.inner.max_queue;
        self.inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| EngineError::QueueFull(max))?;
        let slot = Slot(self.inner.in_flight.clone());
        let (tx, rx) = tmpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let queued = Queued {
            model: idx,
            job,
            events: tx,
            cancel: cancel.clone(),
            _slot: slot,
        };
        if !self.send(self.inner.models[idx].1, worker::Msg::Job(Box::new(queued))) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(JobTicket { rx, cancel })
    }

    /// Refuses new jobs and cancels queued and running ones (a running job stops at its next
    /// step); does not wait. Idempotent.
    pub fn begin_shutdown(&self) {
        self.inner.stop.store(true, Ordering::Release);
        for w in &self.inner.workers {
            if let Some(tx) = w.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
