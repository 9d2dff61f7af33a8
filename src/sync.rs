//! Mutexes that stay usable after a panic: a worker or request that panics while holding one
//! (caught by `catch_unwind` or poem's `CatchPanic`) must not take every later caller down with
//! it. Every lock in kiln guards data that is whole between statements, so the guard of a
//! poisoned mutex is taken as it is.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) trait Locked<T> {
    /// `lock()`, ignoring poisoning.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
