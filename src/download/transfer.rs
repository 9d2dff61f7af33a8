//! The byte side of a download: streaming a body into the `.part` file with progress, and
//! checking size and sha256 before it is renamed into place.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tracing::info;

use super::error::{DownloadError, Result};

/// What the Hub says about one file: what a finished transfer is checked against.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub commit: Option<String>,
    pub etag: String,
    pub size: u64,
    /// The etag when it is a sha256 (LFS files); git-stored files have a git blob id instead.
    pub sha256: Option<String>,
    /// Where to GET the content (the CDN location for LFS files).
    pub url: String,
}

/// The outcome of one attempt: worth retrying (network), or not (disk, HTTP 4xx).
pub(super) enum Attempt {
    Transient(String),
    Fatal(DownloadError),
}
use Attempt::{Fatal, Transient};

pub(super) fn truncate(part: &Path) -> Result<(), DownloadError> {
    File::create(part)
        .map(|_| ())
        .map_err(|e| DownloadError::io(part, e))
}

/// Streams the body to `file`; read errors are transient (cut connection), write errors fatal.
/// Logs progress every 15 s for servers whose stderr is not a terminal.
pub(super) fn copy_body(
    mut body: impl Read,
    file: &mut File,
    part: &Path,
    bar: &ProgressBar,
    label: &str,
    start: u64,
    total: u64,
) -> Result<(), Attempt> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut done, t0) = (start, Instant::now());
    let mut last_log = t0;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Transient(e.to_string())),
        };
        file.write_all(&buf[..n])
            .map_err(|e| Fatal(DownloadError::io(part, e)))?;
        done += n as u64;
        bar.inc(n as u64);
        if last_log.elapsed() >= Duration::from_secs(15) {
            last_log = Instant::now();
            let rate = (done - start) as f64 / t0.elapsed().as_secs_f64().max(1e-3) / 1e6;
            info!(
                file = label,
                "{:.0}% of {:.1} MB at {rate:.1} MB/s",
                100.0 * done as f64 / total.max(1) as f64,
                total as f64 / 1e6
            );
        }
    }
}

/// Size then sha256 (when the Hub gave one) of the finished part file; deletes it on mismatch.
pub(super) fn verify(part: &Path, meta: &FileMeta) -> Result<String> {
    let actual_size = std::fs::metadata(part)
        .map_err(|e| DownloadError::io(part, e))?
        .len();
    if actual_size != meta.size {
        let _ = std::fs::remove_file(part);
        return Err(DownloadError::Size {
            path: part.to_path_buf(),
            expected: meta.size,
            actual: actual_size,
        });
    }
    let actual = sha256_file(part)?;
    if let Some(expected) = &meta.sha256
        && *expected != actual
    {
        let _ = std::fs::remove_file(part);
        return Err(DownloadError::Checksum {
            path: part.to_path_buf(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(actual)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| DownloadError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DownloadError::io(path, e)),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
