//! What can go wrong while fetching weights; every message says what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "unknown model `{0}`: kiln can download sd15, dalle-mini, dalle-mega (or all), and the SD \
         1.5 add-ons taesd and lcm-lora-sdv1-5"
    )]
    UnknownModel(String),

    #[error(
        "{model}: not installed in {dir} and offline mode is on (--offline or HF_HUB_OFFLINE=1); \
         missing e.g. {missing}. Run `kiln download {model}` with network access, or copy the files there"
    )]
    Offline {
        model: String,
        dir: PathBuf,
        missing: String,
    },

    #[error(
        "cannot reach the Hugging Face Hub at {endpoint}: {message}. Check the network (or set \
         HF_ENDPOINT to a mirror); files already downloaded are kept and the next run resumes"
    )]
    Unreachable { endpoint: String, message: String },

    #[error("{url}: HTTP {status}: {hint}")]
    Http {
        url: String,
        status: u16,
        hint: String,
    },

    #[error("{url}: unexpected answer from the Hub: {message}")]
    Protocol { url: String, message: String },

    #[error(
        "{path}: checksum mismatch (expected sha256 {expected}, got {actual}); the corrupt download \
         was deleted, run the command again to retry"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "{path}: size mismatch (the Hub says {expected} bytes, got {actual}); the download was deleted, run again to retry"
    )]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{dir} already holds files kiln did not download (no kiln-source.json); they are left \
         alone: move them elsewhere, or pass another --models-dir"
    )]
    NotOurs { dir: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: invalid kiln-source.json: {message}")]
    Manifest { path: PathBuf, message: String },
}

impl DownloadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DownloadError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the failure means "no usable network" (the server then falls back to the demo
    /// models) rather than a problem with the files or the request.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DownloadError::Unreachable { .. } | DownloadError::Offline { .. }
        )
    }
}

impl From<DownloadError> for crate::Error {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::Io { path, source } => crate::Error::io(path, source),
            other => crate::Error::InvalidArgument(other.to_string()),
        }
    }
}

pub type Result<T, E = DownloadError> = std::result::Result<T, E>;
