//! Reading tensors back to the host. Model and engine code read through here and nowhere else
//! (`tests/host_reads.rs` checks the sources), so the reads of a generation can be counted: on
//! a GPU each one waits for every queued kernel, so the denoising and decoding loops keep them
//! to what the algorithm needs (SD: none per step; DALL·E: one per token step, for sampling).

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::error::{Error, Result};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// The tensor's values as f32, read back to the host (one read, counted).
pub fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    READS.with(|r| r.set(r.get() + 1));
    t.into_data()
        .convert_dtype(DType::F32)
        .to_vec::<f32>()
        .map_err(|e| Error::Numerical(format!("reading a tensor back: {e:?}")))
}

/// How many reads [`host_f32`] has made for this thread: its own, and those of the stretches it
/// handed to [`crate::nn::run`] (on the CPU they run on a pool worker, see [`on_behalf`]).
pub fn host_reads() -> u64 {
    READS.with(Cell::get)
}

/// `f` wrapped to run on another thread for the calling one: the reads it makes there are
/// credited to the caller by [`credit`] (a tally per thread keeps concurrent generations, and
/// tests, apart).
pub(crate) fn on_behalf<R>(f: impl FnOnce() -> R + Send) -> impl FnOnce() -> (R, u64) + Send {
    let caller = std::thread::current().id();
    move || {
        let before = host_reads();
        let out = f();
        let elsewhere = std::thread::current().id() != caller;
        (out, if elsewhere { host_reads() - before } else { 0 })
    }
}

/// Credits this thread with `reads` made for it elsewhere (see [`on_behalf`]).
pub(crate) fn credit<R>((out, reads): (R, u64)) -> R {
    READS.with(|r| r.set(r.get() + reads));
    out
}
