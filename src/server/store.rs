//! In-memory store behind `response_format=url`: bounded in count, entries expire.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    bytes: Vec<u8>,
    content_type: &'static str,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
}

pub struct ImageStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_entries: usize,
}

impl ImageStore {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stores an image and returns its unguessable id (with the file extension).
    pub fn put(&self, bytes: Vec<u8>, content_type: &'static str, ext: &str) -> String {
        let id = format!("{:032x}.{ext}", rand::random::<u128>());
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Oldest first: evict expired entries, then the oldest while over the bound.
        while let Some(front) = g.order.front().cloned() {
            let expired = g.map.get(&front).is_none_or(|e| e.expires <= now);
            if expired || g.map.len() >= self.max_entries {
                g.order.pop_front();
                g.map.remove(&front);
            } else {
                break;
            }
        }
        g.map.insert(
            id.clone(),
            Entry {
                bytes,
                content_type,
                expires: now + self.ttl,
            },
        );
        g.order.push_back(id.clone());
        id
    }

    pub fn get(&self, id: &str) -> Option<(Vec<u8>, &'static str)> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map
            .get(id)
            .filter(|e| e.expires > Instant::now())
            .map(|e| (e.bytes.clone(), e.content_type))
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
