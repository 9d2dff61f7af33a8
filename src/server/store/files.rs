//! File primitives of the directory stores (images, and job records under `jobs/`): writes
//! that a reader sees whole or not at all, reads that never follow a symlink or block on a
//! FIFO, and removal that tolerates another replica having removed the file first.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Prefix of files being written; never a valid id (ids start with a hex digit or `job_`).
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// A temporary file this old was left by a writer that died: writing one file takes well
/// under a second, even on a network filesystem.
pub(crate) const STALE_TMP: Duration = Duration::from_secs(600);

/// Writes `bytes` to a new temporary file in `dir` (flushed to disk) and returns its path.
pub(crate) fn write_tmp(dir: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!("{TMP_PREFIX}{:032x}", rand::random::<u128>()));
    // `create_new` (O_EXCL) never follows a symlink planted at that name.
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            remove(&tmp);
            Err(e)
        }
    }
}

/// Replaces `dir/name` with `bytes` atomically: a temporary file, renamed into place.
/// `name` must already be validated (an id, never a path from a request as it came).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_tmp(dir, bytes)?;
    std::fs::rename(&tmp, dir.join(name)).inspect_err(|_| remove(&tmp))
}

/// Opens a regular file for reading: `None` when it does not exist, or is a symlink, FIFO,
/// socket or folder (logged: someone put it there).
pub(crate) fn open_regular(path: &Path) -> std::io::Result<Option<(File, Metadata)>> {
    let file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if not_a_file(&e) => {
            tracing::warn!(path = %path.display(), "not a regular file (symlink?); not read");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "not a regular file; not read");
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

/// How long ago the file was last written (zero if its time is ahead of this clock).
pub(crate) fn age(meta: &Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO)
}

/// Removes a file (a symlink itself, never its target); one already gone is fine, and a
/// failure is logged: the next sweep retries.
pub(crate) fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot remove: {e}"),
    }
}

/// Opens for reading without following a symlink in the last component (the only one an id
/// controls), and without blocking on a FIFO.
#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Elsewhere: refuse what `symlink_metadata` shows is not a regular file (racy, unlike unix).
#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    File::open(path)
}

/// The open refused a symlink (ELOOP) or a socket (ENXIO).
fn not_a_file(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    return matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO));
    #[cfg(not(unix))]
    return e.kind() == ErrorKind::InvalidInput;
}
