//! The library's error type. Every variant names what the user can fix: a file, a tensor key,
//! an argument.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    #[error("{path}: cannot read weights: {message}")]
    WeightFile { path: PathBuf, message: String },

    #[error("{path}: tensor `{key}`: {message}")]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("{path}: {count} tensor(s) the model needs are missing, e.g. {examples}")]
    MissingTensors {
        path: PathBuf,
        count: usize,
        examples: String,
    },

    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: not a model kiln recognises: {message}")]
    UnknownModel { path: PathBuf, message: String },

    /// A LoRA that cannot be applied to this model: `message` names the first offending key.
    #[error("LoRA {path}: {message}")]
    Lora { path: PathBuf, message: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("device: {0}")]
    Device(String),

    #[error("image: {0}")]
    Image(String),

    #[error("numerical failure: {0}")]
    Numerical(String),

    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
