//! The directory store (`--image-store dir:PATH`): one file per image, named by its id, in a
//! directory that replicas may share. There is no index to keep in step: the files are the
//! state. An image expires by its file's modification time (so every replica agrees, given
//! synchronised clocks), and whichever replica writes sweeps expired files and evicts the
//! oldest ones over the caps. Concurrent writers may overshoot the count cap by the number
//! of writes in flight until the next write's sweep.
//!
//! Safety: only validated [`ImageId`]s become paths; reads never follow a symlink (or open a
//! FIFO); writes go to a temporary file in the same directory, renamed into place, so a
//! reader sees a whole image or none.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::{ImageId, StoreError, StoreLimits};

/// Prefix of files being written; never a valid id (ids start with a hex digit).
const TMP_PREFIX: &str = ".tmp-";

/// A temporary file this old was left by a writer that died: writing one image takes well
/// under a second, even on a network filesystem.
const STALE_TMP: Duration = Duration::from_secs(600);

pub(super) struct DirStore {
    dir: PathBuf,
    limits: StoreLimits,
    /// Images seen by the last sweep, plus this replica's writes since.
    count: AtomicUsize,
}

impl DirStore {
    /// Creates the directory if needed, checks that a file can be written in it, and sweeps it.
    pub(super) fn open(dir: &Path, limits: StoreLimits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, "create it", e))?;
        let store = Self {
            dir: dir.to_path_buf(),
            limits,
            count: AtomicUsize::new(0),
        };
        let probe = store.write_tmp(b"")?;
        std::fs::remove_file(&probe).map_err(|e| StoreError::io(dir, "remove a file in it", e))?;
        store.sweep(None)?;
        Ok(store)
    }

    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(super) fn put(&self, id: &ImageId, bytes: &[u8]) -> Result<(), StoreError> {
        self.sweep(Some(bytes.len() as u64))?;
        let tmp = self.write_tmp(bytes)?;
        if let Err(e) = std::fs::rename(&tmp, self.dir.join(id.as_str())) {
            remove(&tmp);
            return Err(StoreError::io(&self.dir, "rename an image into place", e));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn get(&self, id: &ImageId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(id.as_str());
        let err = |e| StoreError::io(&self.dir, "read an image", e);
        let mut file = match open_no_follow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if not_a_file(&e) => {
                tracing::warn!(path = %path.display(), "image store: not a regular file (symlink?); not served");
                return Ok(None);
            }
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() {
            tracing::warn!(path = %path.display(), "image store: not a regular file; not served");
            return Ok(None);
        }
        if self.expired(&meta) {
            remove(&path);
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).map_err(err)?;
        Ok(Some(bytes))
    }

    fn expired(&self, meta: &std::fs::Metadata) -> bool {
        age(meta) >= self.limits.ttl
    }

    /// Writes `bytes` to a new temporary file in the directory (flushed to disk).
    fn write_tmp(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{:032x}", rand::random::<u128>()));
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
                Err(StoreError::io(&self.dir, "write a file in it", e))
            }
        }
    }

    /// Removes expired images and stale temporary files, then the oldest images while the
    /// store (plus `incoming` bytes, when an image is about to be written) is over a cap.
    fn sweep(&self, incoming: Option<u64>) -> Result<(), StoreError> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, "list it", e))?;
        let mut live = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, "list it", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // `DirEntry::metadata` does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // another replica's sweep
                Err(e) => return Err(StoreError::io(&self.dir, "read a file's metadata", e)),
            };
            if name.starts_with(TMP_PREFIX) {
                if meta.is_file() && age(&meta) >= STALE_TMP {
                    remove(&entry.path());
                }
                continue;
            }
            // Anything else (foreign files, symlinks, folders) is neither counted nor touched.
            if ImageId::parse(name).is_none() || !meta.is_file() {
                continue;
            }
            if self.expired(&meta) {
                remove(&entry.path());
                continue;
            }
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            live.push((modified, entry.file_name(), meta.len()));
        }
        // Oldest first; the name breaks ties between files written in the same clock tick.
        live.sort();
        let (mut count, mut bytes) = (live.len(), live.iter().map(|l| l.2).sum::<u64>());
        let room = usize::from(incoming.is_some());
        for (_, name, len) in &live {
            let over_count = count + room > self.limits.max_images;
            let over_bytes = self
                .limits
                .max_bytes
                .is_some_and(|max| bytes + incoming.unwrap_or(0) > max);
            if !(over_count || over_bytes) {
                break;
            }
            remove(&self.dir.join(name));
            count -= 1;
            bytes -= len;
        }
        self.count.store(count, Ordering::Relaxed);
        Ok(())
    }
}

/// How long ago the file was last written (zero if its time is ahead of this clock).
fn age(meta: &std::fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO)
}

/// Removes a file (a symlink itself, never its target); one already gone is fine, and a
/// failure is logged: the next sweep retries.
fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), "image store: cannot remove: {e}"),
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
