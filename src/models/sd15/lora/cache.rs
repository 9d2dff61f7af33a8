//! Adapted variants kept for the next requests with the same LoRAs, least recently used out
//! first, under a bound on the bytes of the parameters they replaced.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use burn::tensor::backend::Backend;

use super::LoraSpec;
use super::adapted::Adapted;
use crate::error::{Error, Result};

/// A LoRA file as it is on disk now (a changed file is another key) and its weight.
#[derive(Debug, Clone, PartialEq)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    weight: u32,
}

fn key_of(specs: &[LoraSpec]) -> Result<Vec<FileKey>> {
    specs
        .iter()
        .filter(|s| s.weight != 0.0)
        .map(|s| {
            let bad = |e: std::io::Error| Error::Lora {
                path: s.path.clone(),
                message: format!("cannot read: {e}"),
            };
            if !s.weight.is_finite() {
                return Err(Error::Lora {
                    path: s.path.clone(),
                    message: format!("weight {} is not a finite number", s.weight),
                });
            }
            let meta = std::fs::metadata(&s.path).map_err(bad)?;
            Ok(FileKey {
                path: std::fs::canonicalize(&s.path).map_err(bad)?,
                len: meta.len(),
                modified: meta.modified().ok(),
                weight: s.weight.to_bits(),
            })
        })
        .collect()
}

struct Entry<B: Backend> {
    key: Vec<FileKey>,
    adapted: Adapted<B>,
}

pub struct LoraCache<B: Backend> {
    /// Least recently used first.
    entries: Mutex<Vec<Entry<B>>>,
    /// Bound on the summed `Adapted::bytes` of the kept variants; 0 keeps none.
    limit: usize,
}

impl<B: Backend> LoraCache<B> {
    pub fn new(limit: usize) -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// The variant for `specs`: `None` when no LoRA has a non-zero weight (use the base
    /// model), a kept one when the same files (same length and mtime) came with the same
    /// weights before, else one made by `build` (and kept if it fits the bound).
    pub fn get_or_build(
        &self,
        specs: &[LoraSpec],
        build: impl FnOnce() -> Result<Adapted<B>>,
    ) -> Result<Option<Adapted<B>>> {
        let key = key_of(specs)?;
        if key.is_empty() {
            return Ok(None);
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = entries.iter().position(|e| e.key == key) {
            let e = entries.remove(i);
            let adapted = e.adapted.clone();
            entries.push(e);
            return Ok(Some(adapted));
        }
        let adapted = build()?;
        if adapted.bytes <= self.limit {
            let mut total: usize = entries.iter().map(|e| e.adapted.bytes).sum();
            while total + adapted.bytes > self.limit && !entries.is_empty() {
                total -= entries.remove(0).adapted.bytes;
            }
            entries.push(Entry {
                key,
                adapted: adapted.clone(),
            });
        }
        Ok(Some(adapted))
    }

    /// How many variants are kept and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        (entries.len(), entries.iter().map(|e| e.adapted.bytes).sum())
    }
}
