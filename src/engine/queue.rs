//! What travels through the queue: the [`Queued`] job a worker receives, the [`JobTicket`] its
//! submitter follows and cancels it through, and the [`Slot`] that counts it against the
//! bounded queue and its worker's load until the worker is done with it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc as tmpsc};

use super::{EngineError, ImageJob, JobOutput, Progress};
use crate::sync::Locked;

/// What a job reports, in order: `Started`, `Progress`×steps, then exactly one `Done`.
#[derive(Debug)]
pub enum JobEvent {
    Started,
    Progress(Progress),
    Done(Result<JobOutput, EngineError>),
}

#[derive(Default)]
pub(crate) struct Counters {
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
}

/// One worker's load and device memory, read by dispatch and at metrics scrapes. Atomics only:
/// dispatch reads them on every submit.
#[derive(Debug, Default)]
pub(crate) struct WorkerLoad {
    /// Jobs sent to this worker and not started.
    pub waiting: AtomicUsize,
    /// 0 or 1: a worker runs one job at a time.
    pub running: AtomicUsize,
    /// [`crate::backend::DeviceMemory`] as last read by the worker; `u64::MAX` = not reported
    /// (the CPU, or nothing loaded yet).
    pub memory_in_use: AtomicU64,
    pub memory_reserved: AtomicU64,
    /// Jobs sent into this worker's FIFO channel so far: the next one gets this number.
    pub sent: AtomicU64,
    /// Jobs the worker has taken off its channel so far.
    pub taken: AtomicU64,
}

impl WorkerLoad {
    pub fn new() -> Self {
        Self {
            memory_in_use: AtomicU64::new(u64::MAX),
            memory_reserved: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    /// What least-loaded dispatch compares.
    pub fn total(&self) -> usize {
        self.waiting.load(Ordering::Acquire) + self.running.load(Ordering::Acquire)
    }
}

/// The jobs accepted and not finished, over all workers (what `--max-queue` bounds).
#[derive(Default)]
pub(crate) struct Admission {
    pub in_flight: AtomicUsize,
    /// Woken each time `in_flight` drops to 0.
    pub idle: Notify,
}

/// Where a waiting job is: its worker's load and its number in that worker's channel; `None`
/// while no worker channel holds it (not sent yet, taken by a worker, or done).
type Place = Arc<Mutex<Option<(Arc<WorkerLoad>, u64)>>>;

/// Holds one place in the bounded queue, and counts as waiting or running on one worker, until
/// the worker is done with the job (or drops it on shutdown).
pub(crate) struct Slot {
    admission: Arc<Admission>,
    load: Arc<WorkerLoad>,
    running: bool,
    place: Place,
}

impl Slot {
    /// A place already taken in `admission` (see `EngineHandle::submit`), waiting on `load`.
    pub fn new(admission: Arc<Admission>, load: Arc<WorkerLoad>, place: Place) -> Self {
        load.waiting.fetch_add(1, Ordering::AcqRel);
        Self {
            admission,
            load,
            running: false,
            place,
        }
    }

    /// Numbers the job in its worker's channel. Called with the channel's sender locked, just
    /// before the send, so numbers follow the channel's FIFO order exactly.
    pub fn enqueue(&self) {
        let number = self.load.sent.fetch_add(1, Ordering::AcqRel);
        *self.place.locked() = Some((self.load.clone(), number));
    }

    fn counter(&self) -> &AtomicUsize {
        if self.running {
            &self.load.running
        } else {
            &self.load.waiting
        }
    }

    /// The worker took the job: waiting → running.
    pub fn start(&mut self) {
        if !self.running {
            self.load.waiting.fetch_sub(1, Ordering::AcqRel);
            self.load.running.fetch_add(1, Ordering::AcqRel);
            self.load.taken.fetch_add(1, Ordering::AcqRel);
            self.running = true;
            *self.place.locked() = None;
        }
    }

    /// The job goes to another worker's queue (its replica there will serve it).
    pub fn move_to(&mut self, load: Arc<WorkerLoad>) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
        load.waiting.fetch_add(1, Ordering::AcqRel);
        self.load = load;
        self.running = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
        if self.admission.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.admission.idle.notify_waiters();
        }
    }
}

pub(crate) struct Queued {
    /// The model (an index in the engine's model table), not a replica: the worker that gets
    /// the job runs it on its own replica.
    pub model: usize,
    pub job: ImageJob,
    pub events: tmpsc::UnboundedSender<JobEvent>,
    pub cancel: Arc<AtomicBool>,
    /// The submitter's span (the HTTP request's, with its id): the worker enters it while it
    /// runs the job, so its log lines carry the request's context.
    pub span: tracing::Span,
    /// `Started` was sent (a job moved to another replica does not send it twice).
    pub started: bool,
    /// Workers whose replica failed to load this job's model.
    pub tried: Vec<usize>,
    pub slot: Slot,
}

/// A submitted job. Dropping it (e.g. because the HTTP client went away) cancels the job.
pub struct JobTicket {
    pub(crate) rx: tmpsc::UnboundedReceiver<JobEvent>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) place: Place,
}

/// Cancels a job and reads its place in the queue, apart from its [`JobTicket`] (which whoever
/// awaits the result owns). Cheap to clone; holds no resources of the job.
#[derive(Clone)]
pub struct JobControl {
    cancel: Arc<AtomicBool>,
    place: Place,
}

impl JobControl {
    /// Asks the job to stop: a waiting job is dropped when its worker reaches it, a running one
    /// stops at its next step (or within the final decode).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
    }

    /// How many jobs wait ahead of this one in its device's queue (0: it starts when the
    /// running job ends); `None` once a worker has taken it. Jobs ahead that were cancelled are
    /// counted until their worker drops them (which takes no time).
    pub fn queue_position(&self) -> Option<u64> {
        let place = self.place.locked();
        let (load, number) = place.as_ref()?;
        Some(number.saturating_sub(load.taken.load(Ordering::Acquire)))
    }
}

impl JobTicket {
    pub fn control(&self) -> JobControl {
        JobControl {
            cancel: self.cancel.clone(),
            place: self.place.clone(),
        }
    }

    pub async fn next(&mut self) -> Option<JobEvent> {
        self.rx.recv().await
    }

    /// Waits for the result, skipping progress events.
    pub async fn wait(mut self) -> Result<JobOutput, EngineError> {
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
