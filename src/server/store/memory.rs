//! The in-process store (`--image-store memory`): a map plus insertion order; links work only
//! on the replica that made them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use super::{ImageId, StoreLimits};
use crate::sync::Locked;

struct Entry {
    bytes: Vec<u8>,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ImageId, Entry>,
    order: VecDeque<ImageId>,
    bytes: u64,
}

pub(super) struct MemoryStore {
    inner: Mutex<Inner>,
    limits: StoreLimits,
}

impl MemoryStore {
    pub(super) fn new(limits: StoreLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    pub(super) fn put(&self, id: ImageId, bytes: Vec<u8>) {
        let incoming = bytes.len() as u64;
        let now = Instant::now();
        let mut g = self.lock();
        // Oldest first: drop expired entries, then the oldest while the new one would not fit.
        while let Some(front) = g.order.front().cloned() {
            let expired = g.map.get(&front).is_none_or(|e| e.expires <= now);
            let over_count = g.map.len() >= self.limits.max_images;
            let over_bytes = self
                .limits
                .max_bytes
                .is_some_and(|max| g.bytes + incoming > max);
            if !(expired || over_count || over_bytes) {
                break;
            }
            g.order.pop_front();
            if let Some(e) = g.map.remove(&front) {
                g.bytes -= e.bytes.len() as u64;
            }
        }
        g.bytes += incoming;
        g.order.push_back(id.clone());
        g.map.insert(
            id,
            Entry {
                bytes,
                expires: now + self.limits.ttl,
            },
        );
    }

    pub(super) fn get(&self, id: &ImageId) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.lock()
            .map
            .get(id)
            .filter(|e| e.expires > now)
            .map(|e| e.bytes.clone())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }
}
