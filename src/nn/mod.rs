//! Neural-network building blocks, in three places:
//!
//! - `layers`: modules with PyTorch parameter names and layouts (`Linear`, `Conv2d`, the
//!   norms, `Embedding`);
//! - `ops`: the functional half (activations, attention, layout helpers);
//! - `kernels`: the one seam where a backend's own kernels are chosen, the CPU's fused kernels
//!   in `cpu` (Flex) and the GPU backends' in `gpu`; everything else is plain Burn ops.
//!
//! Layers and ops call `kernels`; model code calls layers and ops, and [`run`] for a stretch
//! of model code (it never picks threads itself).

#[cfg(feature = "cpu")]
mod cpu;
mod gpu;
mod host;
pub mod kernels;
mod layers;
mod ops;

pub use host::{host_f32, host_reads};
pub use kernels::{Stretch, attends_cache_prefix, compute_dtype, run};
pub use layers::{Conv2d, Embedding, GroupNorm, LayerNorm, Linear, WeightLayout, conv1x1, conv3x3};
pub use ops::*;
