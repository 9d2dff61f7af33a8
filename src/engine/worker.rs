//! One worker thread: owns the pipelines of its device, runs jobs one at a time in FIFO order.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use tracing::{error, info, warn};

use super::{Counters, EngineError, ImagePipeline, JobEvent, Loader, ModelState, Queued, pipeline};

pub(crate) enum Msg {
    Job(Box<Queued>),
    Load(usize),
    Stop,
}

pub(crate) struct Context {
    pub rx: mpsc::Receiver<Msg>,
    /// (model index, id, loader) for the models this worker owns.
    pub loaders: Vec<(usize, String, Loader)>,
    pub states: Arc<Mutex<Vec<ModelState>>>,
    pub stop: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
}

struct Worker {
    ctx: Context,
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
            Msg::Load(i) => {
                let _ = w.ensure_loaded(i);
            }
            Msg::Job(q) => w.run_job(*q),
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
    fn set_state(&self, i: usize, s: ModelState) {
        if let Some(slot) = self
            .ctx
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *slot = s;
        }
    }

    fn ensure_loaded(&mut self, i: usize) -> Result<(), EngineError> {
        if self.loaded.contains_key(&i) {
            return Ok(());
        }
        let Some((_, id, loader)) = self.ctx.loaders.iter().find(|(k, _, _)| *k == i).cloned()
        else {
            return Err(EngineError::UnknownModel(format!("#{i}")));
        };
        self.set_state(i, ModelState::Loading);
        let t0 = Instant::now();
        info!(model = %id, "loading model");
        // A panicking loader must not take the worker down with it.
        let result = catch_unwind(AssertUnwindSafe(|| loader()))
            .unwrap_or_else(|p| Err(EngineError::Panicked(panic_message(&*p))));
        match result {
            Ok(p) => {
                info!(model = %id, secs = t0.elapsed().as_secs_f32(), "model ready");
                self.loaded.insert(i, p);
                self.set_state(i, ModelState::Ready);
                Ok(())
            }
            Err(e) => {
                // Loaders report through `EngineError::from(crate::Error)`, whose catch-all is
                // `Failed` ("generation failed: …"): keep only the cause.
                let message = match e {
                    EngineError::Failed(m) => m,
                    other => other.to_string(),
                };
                error!(model = %id, error = %message, "model failed to load");
                self.set_state(i, ModelState::Failed(message.clone()));
                Err(EngineError::Load { model: id, message })
            }
        }
    }

    fn run_job(&mut self, q: Queued) {
        let Queued {
            model,
            job,
            events,
            cancel,
            _slot,
        } = q;
        let stop = self.ctx.stop.clone();
        let cancelled = || cancel.load(Ordering::Acquire) || stop.load(Ordering::Acquire);
        let counters = self.ctx.counters.clone();
        // A job stopped by shutdown says so (503 `shutting_down` with Retry-After), as jobs
        // refused during shutdown do; one whose client left is plainly cancelled.
        let stopped = |e: EngineError| match e {
            EngineError::Cancelled if stop.load(Ordering::Acquire) => EngineError::ShuttingDown,
            e => e,
        };
        if cancelled() {
            counters.cancelled.fetch_add(1, Ordering::AcqRel);
            let _ = events.send(JobEvent::Done(Err(stopped(EngineError::Cancelled))));
            return;
        }
        let _ = events.send(JobEvent::Started);
        let result = self.ensure_loaded(model).and_then(|()| {
            let Some(loaded) = self.loaded.get_mut(&model) else {
                return Err(EngineError::Failed("model vanished after loading".into()));
            };
            let t0 = Instant::now();
            let mut progress = |p: super::Progress| {
                let _ = events.send(JobEvent::Progress(p));
                !cancelled()
            };
            let r = catch_unwind(AssertUnwindSafe(|| {
                pipeline::run(loaded.as_mut(), &job, &mut progress)
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
                    r
                }
                Err(p) => {
                    // The pipeline's state is unknown after a panic: drop it, reload on next use.
                    let msg = panic_message(&*p);
                    error!(panic = %msg, "pipeline panicked; unloading it");
                    self.loaded.remove(&model);
                    self.set_state(model, ModelState::Unloaded);
                    Err(EngineError::Panicked(msg))
                }
            }
        });
        let result = result.map_err(stopped);
        match &result {
            Ok(_) => counters.completed.fetch_add(1, Ordering::AcqRel),
            Err(EngineError::Cancelled | EngineError::ShuttingDown) => {
                counters.cancelled.fetch_add(1, Ordering::AcqRel)
            }
            Err(e) => {
                warn!(error = %e, "job failed");
                counters.failed.fetch_add(1, Ordering::AcqRel)
            }
        };
        let _ = events.send(JobEvent::Done(result));
    }
}
