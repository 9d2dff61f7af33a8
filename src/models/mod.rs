//! Model families. Each family owns its modules, weight loading and pipeline.

pub mod config;
pub mod dalle_mini;
mod detect;
pub mod family;
pub mod sd15;
pub mod text_head;

pub use family::{Family, ModelKind};
