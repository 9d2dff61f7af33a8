//! The store behind `response_format=url`: in this process's memory, or in a directory that
//! several replicas share (an NFS/EFS mount, a ReadWriteMany volume), so that a link made by
//! one replica is served by any other. Both keep links for a TTL and hold a count cap and an
//! optional byte cap, evicting the oldest images first.
//!
//! An image's id is 128 random bits in lowercase hex plus its format's extension; the
//! extension is the one record of its content type ([`ImageFormat`]).

mod dir;
pub(crate) mod files;
mod memory;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;

use super::error::ApiError;
use crate::image_io::ImageFormat;
use dir::DirStore;
use memory::MemoryStore;

/// Where images live: `--image-store memory` or `dir:PATH`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreKind {
    #[default]
    Memory,
    Dir(PathBuf),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "memory" => Ok(Self::Memory),
            Some(("dir", path)) if !path.trim().is_empty() => Ok(Self::Dir(PathBuf::from(path))),
            Some(("dir", _)) => Err("`dir:` needs a path, e.g. `dir:/var/lib/kiln/images`".into()),
            _ => Err(format!(
                "unknown image store `{s}`: use `memory` or `dir:PATH`"
            )),
        }
    }
}

/// How long links live and how much is kept.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub ttl: Duration,
    /// Images kept at most (at least 1).
    pub max_images: usize,
    /// Bytes kept at most; the newest image is kept even when it alone is larger.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store directory {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("image store: {0}")]
    Task(String),
}

impl StoreError {
    fn io(path: &std::path::Path, action: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

impl From<StoreError> for ApiError {
    /// A 5xx that says what failed but not where: the path is for the server's log.
    fn from(e: StoreError) -> Self {
        tracing::error!("{e}");
        match e {
            StoreError::Io { action, source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("the image store is full: cannot {action}"),
                )
                .code("image_store_full")
            }
            StoreError::Io { action, source, .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the image store failed: cannot {action}: {}", source.kind()),
            )
            .code("image_store_error"),
            StoreError::Task(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the image store failed: {m}"),
            )
            .code("image_store_error"),
        }
    }
}

/// A valid image id: exactly 32 lowercase hex digits, a dot, and one of [`ImageFormat`]'s
/// extensions. Only such a name ever reaches the filesystem, so an id from a URL cannot
/// name another file (`../x`, `/etc/passwd`, `%2e%2e` all fail before any I/O).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageId {
    name: String,
    format: ImageFormat,
}

const ID_HEX: usize = 32;

impl ImageId {
    /// 128 bits from `rand`'s thread RNG: ChaCha12 seeded from the OS (a CSPRNG), so links
    /// cannot be guessed.
    fn random(format: ImageFormat) -> Self {
        Self {
            name: format!("{:032x}.{}", rand::random::<u128>(), format.extension()),
            format,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (hex, ext) = s.split_once('.')?;
        let hex_ok =
            hex.len() == ID_HEX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let format = ImageFormat::ALL
            .into_iter()
            .find(|f| f.extension() == ext)?;
        hex_ok.then(|| Self {
            name: s.to_string(),
            format,
        })
    }

    /// The id, which is also its file name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }
}

enum Backend {
    Memory(MemoryStore),
    Dir(Arc<DirStore>),
}

/// The one interface the handlers use, whichever store is configured.
pub struct ImageStore {
    backend: Backend,
    ttl: Duration,
}

impl ImageStore {
    /// Opens the store. For a directory this creates it if needed, checks that a file can be
    /// written there, and sweeps expired and stale files (blocking I/O: call it at start).
    pub fn open(kind: &StoreKind, limits: StoreLimits) -> Result<Self, StoreError> {
        let limits = StoreLimits {
            max_images: limits.max_images.max(1),
            ..limits
        };
        let backend = match kind {
            StoreKind::Memory => Backend::Memory(MemoryStore::new(limits)),
            StoreKind::Dir(path) => Backend::Dir(Arc::new(DirStore::open(path, limits)?)),
        };
        Ok(Self {
            backend,
            ttl: limits.ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stores an image and returns its id.
    pub async fn put(&self, bytes: Vec<u8>, format: ImageFormat) -> Result<ImageId, StoreError> {
        let id = ImageId::random(format);
        match &self.backend {
            Backend::Memory(m) => {
                m.put(id.clone(), bytes);
                Ok(id)
            }
            Backend::Dir(d) => {
                let d = d.clone();
                blocking(move || d.put(&id, &bytes).map(|()| id)).await
            }
        }
    }

    /// The image and its format, or `None` when `id` is malformed, unknown or expired.
    pub async fn get(&self, id: &str) -> Result<Option<(Vec<u8>, ImageFormat)>, StoreError> {
        let Some(id) = ImageId::parse(id) else {
            return Ok(None);
        };
        let format = id.format();
        let bytes = match &self.backend {
            Backend::Memory(m) => m.get(&id),
            Backend::Dir(d) => {
                let d = d.clone();
                blocking(move || d.get(&id)).await?
            }
        };
        Ok(bytes.map(|b| (b, format)))
    }

    /// Images held: for a directory, as counted by this replica's last write or sweep.
    pub fn len(&self) -> usize {
        match &self.backend {
            Backend::Memory(m) => m.len(),
            Backend::Dir(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Filesystem calls run on tokio's blocking pool: an NFS stall must not stall the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
