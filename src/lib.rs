//! kiln: Stable Diffusion 1.5 and DALL·E Mini/Mega reimplemented in Burn, served through an
//! OpenAI-compatible Images API.
//!
//! Model code is generic over `B: burn::tensor::backend::Backend`; the binary picks the backend
//! at run time from `--device` among those compiled in (`cpu`, `wgpu`, `cuda` cargo features).

pub mod alloc;
pub mod backend;
pub mod doctor;
pub mod download;
pub mod engine;
pub mod error;
pub mod image_io;
pub mod models;
pub mod nn;
pub mod noise;
pub mod precision;
pub mod schedulers;
pub mod server;
mod sync;
pub mod weights;

pub use alloc::tune_allocator;
pub use error::{Error, Result};
