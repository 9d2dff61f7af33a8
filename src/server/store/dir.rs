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

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use super::files::{STALE_TMP, TMP_PREFIX, age, open_regular, remove, write_atomic, write_tmp};
use super::{ImageId, StoreError, StoreLimits};

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
        let probe =
            write_tmp(dir, b"").map_err(|e| StoreError::io(dir, "write a file in it", e))?;
        std::fs::remove_file(&probe).map_err(|e| StoreError::io(dir, "remove a file in it", e))?;
        store.sweep(None)?;
        Ok(store)
    }

    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub(super) fn put(&self, id: &ImageId, bytes: &[u8]) -> Result<(), StoreError> {
        self.sweep(Some(bytes.len() as u64))?;
        write_atomic(&self.dir, id.as_str(), bytes)
            .map_err(|e| StoreError::io(&self.dir, "write an image into place", e))?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn get(&self, id: &ImageId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(id.as_str());
        let err = |e| StoreError::io(&self.dir, "read an image", e);
        let Some((mut file, meta)) = open_regular(&path).map_err(err)? else {
            return Ok(None);
        };
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
