//! One worker thread: owns the replicas of its device (one per model), runs jobs one at a time
//! in FIFO order. A job whose replica here fails to load goes to another replica of its model.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Instant;

use tracing::{error, info, info_span, warn};

use super::handle::Inner;
use super::metrics::ReplicaMetrics;
use super::queue::{Counters, WorkerLoad};
use super::{
    EngineError, EngineHandle, ImagePipeline, JobEvent, Loader, ModelState, Progress, Queued,
    pipeline,
};
use crate::sync::Locked;

pub(crate) enum Msg {
    Job(Box<Queued>),
    /// Load a replica (by its index) now (`--preload`).
    Load(usize),
    Stop,
}

/// A replica this worker owns.
pub(crate) struct Owned {
    /// Index in the engine's replicas (and in `states`).
    pub replica: usize,
    /// Index in the engine's models (what a [`Queued`] names).
    pub model: usize,
    pub id: String,
    pub loader: Loader,
    pub metrics: ReplicaMetrics,
}

pub(crate) struct Context {
    pub rx: mpsc::Receiver<Msg>,
    /// This worker's index in the engine.
    pub index: usize,
    /// Its device label (`cuda:0`, `cpu#1`).
    pub device: String,
    pub replicas: Vec<Owned>,
    pub states: Arc<Mutex<Vec<ModelState>>>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    pub load: Arc<WorkerLoad>,
    /// To hand a job to another replica; weak, so the workers do not keep the engine alive.
    pub engine: Weak<Inner>,
}

struct Worker {
    ctx: Context,
    /// By index in `ctx.replicas`.
    loaded: HashMap<usize, Box<dyn ImagePipeline>>,
}

pub(crate) fn run(ctx: Context) {
    let mut w = Worker {
        ctx,
        loaded: HashMap::new(),
    };
    while let Ok(msg) = w.ctx.rx.recv() {
        match msg {
            Msg::Stop => break,
            Msg::Load(r) => {
                if let Some(own) = w.ctx.replicas.iter().position(|o| o.replica == r) {
                    let _ = w.ensure_loaded(own);
                }
            }
            Msg::Job(q) => w.run_job(q),
        }
    }
    // Jobs still queued are dropped here: their tickets see the channel close (ShuttingDown).
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Worker {
    fn set_state(&self, own: usize, s: ModelState) {
        let r = self.ctx.replicas[own].replica;
        let mut states = self.ctx.states.locked();
        if let Some(slot) = states.get_mut(r) {
            *slot = s;
        }
    }

    /// Keeps what the backend reports of this device's memory for the metrics.
    fn read_memory(&self, own: usize) {
        if let Some(m) = self.loaded.get(&own).and_then(|p| p.device_memory()) {
            let load = &self.ctx.load;
            load.memory_in_use.store(m.bytes_in_use, Ordering::Release);
            load.memory_reserved
                .store(m.bytes_reserved, Ordering::Release);
        }
    }

    fn ensure_loaded(&mut self, own: usize) -> Result<(), EngineError> {
        if self.loaded.contains_key(&own) {
            return Ok(());
        }
        let o = &self.ctx.replicas[own];
        let (id, loader, gauge) = (
            o.id.clone(),
            o.loader.clone(),
            o.metrics.load_seconds.clone(),
        );
        self.set_state(own, ModelState::Loading);
        let t0 = Instant::now();
        info!(model = %id, device = %self.ctx.device, "loading model");
        // A panicking loader must not take the worker down with it.
        let result = catch_unwind(AssertUnwindSafe(|| loader()))
            .unwrap_or_else(|p| Err(EngineError::Panicked(panic_message(&*p))));
        match result {
            Ok(p) => {
                let secs = t0.elapsed().as_secs_f64();
                info!(model = %id, device = %self.ctx.device, secs, "model ready");
                gauge.set(secs);
                self.loaded.insert(own, p);
                self.read_memory(own);
                self.set_state(own, ModelState::Ready);
                Ok(())
            }
            Err(e) => {
                // Loaders report through `EngineError::from(crate::Error)`, whose catch-all is
                // `Failed` ("generation failed: …"): keep only the cause.
                let message = match e {
                    EngineError::Failed(m) => m,
                    other => other.to_string(),
                };
                error!(model = %id, device = %self.ctx.device, error = %message, "model failed to load");
                self.set_state(own, ModelState::Failed(message.clone()));
                Err(EngineError::Load { model: id, message })
            }
        }
    }

    fn run_job(&mut self, mut q: Box<Queued>) {
        let span = info_span!(parent: &q.span, "job", device = %self.ctx.device);
        let _entered = span.enter();
        q.slot.start();
        let Some(own) = self.ctx.replicas.iter().position(|o| o.model == q.model) else {
            // Dispatch only sends a job to a worker with a replica of its model.
            let _ = q.events.send(JobEvent::Done(Err(EngineError::Failed(
                "no replica of the model on this worker".into(),
            ))));
            return;
        };
        let stop = self.ctx.stop.clone();
        let cancel = q.cancel.clone();
        let cancelled = || cancel.load(Ordering::Acquire) || stop.load(Ordering::Acquire);
        // A job stopped by shutdown says so (503 `shutting_down` with Retry-After), as jobs
        // refused during shutdown do; one whose client left is plainly cancelled.
        let stopped = |e: EngineError| match e {
            EngineError::Cancelled if stop.load(Ordering::Acquire) => EngineError::ShuttingDown,
            e => e,
        };
        let result = if cancelled() {
            Err(EngineError::Cancelled)
        } else {
            if !q.started {
                let _ = q.events.send(JobEvent::Started);
                q.started = true;
            }
            match self.ensure_loaded(own) {
                Ok(()) => self.generate(own, &q, &cancelled),
                Err(e) => {
                    q.tried.push(self.ctx.index);
                    let Some(engine) = EngineHandle::upgrade(&self.ctx.engine) else {
                        return; // The engine is gone: the ticket sees ShuttingDown.
                    };
                    match engine.reroute(q) {
                        Ok(()) => {
                            warn!(error = %e, "the model failed to load here; the job goes to another device");
                            return;
                        }
                        Err(back) => q = back,
                    }
                    Err(e)
                }
            }
        };
        let result = result.map_err(stopped);
        let (counters, metrics) = (&self.ctx.counters, &self.ctx.replicas[own].metrics);
        match &result {
            Ok(out) => {
                counters.completed.fetch_add(1, Ordering::AcqRel);
                metrics.completed.inc();
                metrics.images.inc_by(out.images.len() as u64);
                metrics.withheld.inc_by(out.withheld.len() as u64);
            }
            // The job ran; the safety checker withheld what it made.
            Err(EngineError::Blocked { images }) => {
                counters.completed.fetch_add(1, Ordering::AcqRel);
                metrics.completed.inc();
                metrics.withheld.inc_by(*images as u64);
            }
            Err(EngineError::Cancelled | EngineError::ShuttingDown) => {
                counters.cancelled.fetch_add(1, Ordering::AcqRel);
                metrics.cancelled.inc();
            }
            Err(e) => {
                warn!(error = %e, "job failed");
                counters.failed.fetch_add(1, Ordering::AcqRel);
                metrics.failed.inc();
            }
        }
        let _ = q.events.send(JobEvent::Done(result));
        // `q.slot` drops here, after `Done` was sent: `is_idle` means every result is out.
    }

    /// Runs `q` on the loaded replica `own`, timing each step.
    fn generate(
        &mut self,
        own: usize,
        q: &Queued,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<super::JobOutput, EngineError> {
        let Some(loaded) = self.loaded.get_mut(&own) else {
            return Err(EngineError::Failed("model vanished after loading".into()));
        };
        let steps = self.ctx.replicas[own].metrics.steps.clone();
        let (job, events) = (&q.job, &q.events);
        let t0 = Instant::now();
        let mut last = t0;
        let mut progress = |p: Progress| {
            if !p.decoding {
                let now = Instant::now();
                steps.observe(now.duration_since(last).as_secs_f64());
                last = now;
            }
            let _ = events.send(JobEvent::Progress(p));
            !cancelled()
        };
        let r = catch_unwind(AssertUnwindSafe(|| {
            pipeline::run(loaded.as_mut(), job, &mut progress)
        }));
        match r {
            Ok(r) => {
                info!(
                    n = job.n,
                    width = job.width,
                    height = job.height,
                    secs = t0.elapsed().as_secs_f32(),
                    ok = r.is_ok(),
                    "job finished"
                );
                self.read_memory(own);
                r
            }
            Err(p) => {
                // The pipeline's state is unknown after a panic: drop it, reload on next use.
                let msg = panic_message(&*p);
                error!(panic = %msg, "pipeline panicked; unloading it");
                self.loaded.remove(&own);
                self.set_state(own, ModelState::Unloaded);
                Err(EngineError::Panicked(msg))
            }
        }
    }
}
