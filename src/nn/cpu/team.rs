//! A spinning team of the pool's workers for a stretch of many small parallel loops.
//!
//! A DALL·E decode step is ~100 parallel loops of 10–300 µs (GEMV blocks, one-query
//! attention) with short serial Flex ops between them. rayon parks a worker that finds no work
//! for ~40 µs, and waking it again costs tens of µs on a VM (an inter-processor interrupt
//! through the hypervisor): the size of the loops themselves, ~120 context switches a step. In
//! a team the other workers spin between loops instead and take the next one's first index
//! within a fraction of a µs. [`with_team`] holds the team for one closure; [`for_each`] runs
//! on it when called from that closure's thread and on rayon otherwise.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::sync::Locked;

/// A job's closure with its lifetime erased; [`Team::run`] waits for every index it hands
/// out to finish before the closure goes out of scope.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync` and outlives every use (see `JobPtr`).
unsafe impl Send for JobPtr {}

/// Spinning this long without work, a helper starts yielding its core between checks (to
/// anything else runnable; it still never sleeps while the team is held).
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(50);

struct Team {
    /// `generation << 32 | next index`: claiming an index is one `fetch_add`, and a claim
    /// that lands in a newer generation than the claimer expected is still a valid claim of
    /// that generation's job.
    word: AtomicU64,
    /// The current generation's job and index count.
    slot: Mutex<(u32, Option<JobPtr>, usize)>,
    /// Indices of the current generation that have finished.
    done: AtomicUsize,
    stop: AtomicBool,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    owner: AtomicUsize,
}

thread_local! {
    /// The team held by this thread, while in [`with_team`] and not inside one of its jobs.
    static HELD: Cell<Option<*const Team>> = const { Cell::new(None) };
}

impl Team {
    fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            slot: Mutex::new((0, None, 0)),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panic: Mutex::new(None),
            owner: AtomicUsize::new(usize::MAX),
        }
    }

    /// The job of generation `g`, if it is still the current one.
    fn job(&self, g: u32) -> Option<(JobPtr, usize)> {
        let slot = self.slot.locked();
        match *slot {
            (sg, Some(job), n) if sg == g => Some((job, n)),
            _ => None,
        }
    }

    /// Runs index `i` of `job`, keeping a panic for the owner to rethrow, and counts it done.
    fn execute(&self, job: JobPtr, i: usize) {
        // SAFETY: index `i` was claimed and is not yet counted done, so the owner is still
        // waiting in `run` and the closure is alive.
        let f = unsafe { &*job.0 };
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            let mut slot = self.panic.locked();
            slot.get_or_insert(e);
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// Claims and runs indices from `word` on, starting in generation `g`, until the current
    /// generation has none left.
    fn claim_all(&self, mut g: u32, mut job: Option<(JobPtr, usize)>) {
        loop {
            let w = self.word.fetch_add(1, Ordering::AcqRel);
            let (wg, i) = ((w >> 32) as u32, (w & 0xffff_ffff) as usize);
            if wg != g {
                // The owner moved on; this claim belongs to the newer job (alive: it cannot
                // finish without this index).
                g = wg;
                job = self.job(g);
            }
            match job {
                Some((f, n)) if i < n => self.execute(f, i),
                _ => return,
            }
        }
    }

    /// A helper's loop: spin for new generations and join them until the owner stops.
    fn help(&self) {
        if rayon::current_thread_index() == Some(self.owner.load(Ordering::Acquire)) {
            return; // the owner popped its own unstarted helper job at the end
        }
        let mut seen = (self.word.load(Ordering::Acquire) >> 32) as u32;
        let (mut idle, mut spins, mut lazy) = (Instant::now(), 0u32, false);
        while !self.stop.load(Ordering::Acquire) {
            let g = (self.word.load(Ordering::Acquire) >> 32) as u32;
            if g != seen {
                seen = g;
                self.claim_all(g, self.job(g));
                (idle, spins, lazy) = (Instant::now(), 0, false);
            } else if lazy {
                std::thread::yield_now();
            } else {
                // The clock only every 256 spins: reading it costs more than a spin.
                spins = spins.wrapping_add(1);
                lazy = spins % 256 == 0 && idle.elapsed() >= SPIN_BEFORE_YIELD;
                std::hint::spin_loop();
            }
        }
    }

    /// Runs `f(0..n)` on the team, the owner taking indices too, and returns when all are done.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!(n < 1 << 31, "team job of {n} indices");
        let g = ((self.word.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
        // SAFETY (lifetime erasure): this function does not return before `done == n`, and no
        // index is run after it is counted done.
        let job: JobPtr = JobPtr(unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        });
        *self.slot.locked() = (g, Some(job), n);
        self.done.store(0, Ordering::Relaxed);
        self.word.store(u64::from(g) << 32, Ordering::Release);
        self.claim_all(g, Some((job, n)));
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if let Some(e) = self.panic.locked().take() {
            resume_unwind(e);
        }
    }
}

/// Runs `f` on a pool worker with every other worker of the pool spinning as a team for the
/// [`for_each`] loops `f` makes (and not for anything else: Flex's own parallel ops inside
/// `f` run on the calling worker alone, so hold a team only around small-op stretches).
pub(crate) fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let team = Team::new();
    let out = rayon::scope(|s| {
        team.owner.store(
            rayon::current_thread_index().unwrap_or(usize::MAX),
            Ordering::Release,
        );
        for _ in 1..rayon::current_num_threads() {
            s.spawn(|_| team.help());
        }
        let before = HELD.replace(Some(&team as *const Team));
        let out = catch_unwind(AssertUnwindSafe(f));
        HELD.set(before);
        team.stop.store(true, Ordering::Release);
        out
    });
    out.unwrap_or_else(|e| resume_unwind(e))
}

/// `f(i)` for every `i` in `0..n`, in parallel: on the team when this thread holds one (see
/// [`with_team`]), on rayon otherwise.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    match HELD.get() {
        Some(team) => {
            // No nested team jobs: a loop inside `f` runs on rayon (here, this thread alone).
            HELD.set(None);
            // SAFETY: the team lives in `with_team`'s frame, below this call on the stack.
            let out = catch_unwind(AssertUnwindSafe(|| unsafe { &*team }.run(n, &f)));
            HELD.set(Some(team));
            out.unwrap_or_else(|e| resume_unwind(e));
        }
        None => (0..n).into_par_iter().for_each(&f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index runs exactly once, over many back-to-back jobs of varied sizes, on a team
    /// and without one; a nested loop inside a team job still covers its range.
    #[test]
    fn each_index_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let sizes: Vec<usize> = (0..400).map(|j| j * 7 % 53).collect();
        let check = |nested: bool| {
            for &n in &sizes {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    if nested {
                        let inner = AtomicUsize::new(0);
                        for_each(5, |_| {
                            inner.fetch_add(1, Ordering::Relaxed);
                        });
                        assert_eq!(inner.load(Ordering::Relaxed), 5);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n {n}");
            }
        };
        pool.install(|| with_team(|| check(false)));
        pool.install(|| with_team(|| check(true)));
        pool.install(|| check(false));
    }

    /// A panic in a team job reaches the caller of `with_team`, after the team is released.
    #[test]
    fn a_panic_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let caught = pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                with_team(|| for_each(64, |i| assert!(i != 40, "index 40")))
            }))
        });
        assert!(caught.is_err());
        // The pool still works afterwards.
        let sum = AtomicUsize::new(0);
        pool.install(|| with_team(|| for_each(10, |i| _ = sum.fetch_add(i, Ordering::Relaxed))));
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
