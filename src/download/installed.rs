//! What is under `models/`: family, precision, size on disk and origin of each model folder
//! (`kiln models`). Folders without `kiln-source.json` are recognised from their files.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{DownloadError, Result};
use super::source::SourceManifest;
use crate::models::ModelKind;
use crate::models::family::NOT_MODEL_DIRS;

#[derive(Debug, Clone, Serialize)]
pub struct InstalledModel {
    pub id: String,
    pub path: PathBuf,
    /// `sd15`, `dalle-mini`, `dalle-mega`, or `unknown`.
    pub family: String,
    /// `fp16`, `fp32`, `bf16`, `fp32+fp16` (the two largest when mixed) or `unknown`, read from
    /// the weight files.
    pub precision: String,
    pub size_bytes: u64,
    /// `repo@commit (+ …)` for downloads, `local files` otherwise.
    pub source: String,
    /// Whether a download is unfinished (`kiln download <id>` resumes it).
    pub incomplete: bool,
}

/// Every model folder directly under `models_dir`, sorted by id. A missing `models_dir` is empty.
pub fn installed_models(models_dir: &Path) -> Result<Vec<InstalledModel>> {
    let entries = match std::fs::read_dir(models_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DownloadError::io(models_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !path.is_dir() || id.starts_with('.') || NOT_MODEL_DIRS.contains(&id.as_str()) {
            continue;
        }
        if let Some(m) = inspect(&id, &path)? {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// One folder, or `None` when it is neither a download nor a folder a loader recognises.
pub fn inspect(id: &str, path: &Path) -> Result<Option<InstalledModel>> {
    let manifest = SourceManifest::read(path)?;
    let family = match &manifest {
        Some(m) => m.kind.as_str().to_string(),
        None => match ModelKind::detect(path) {
            Some(k) => k.as_str().to_string(),
            None => return Ok(None),
        },
    };
    let mut files = Vec::new();
    walk(path, 4, &mut files);
    let size_bytes = files.iter().map(|(_, len)| len).sum();
    let detected = precision_of(files.iter().map(|(p, _)| p.as_path()));
    let precision = match (&manifest, detected.as_str()) {
        (Some(m), "unknown") if m.precision != "published" => m.precision.clone(),
        _ => detected,
    };
    let (source, incomplete) = match &manifest {
        Some(m) => (m.origin(), !m.is_intact(path)),
        None => ("local files".to_string(), false),
    };
    Ok(Some(InstalledModel {
        id: id.to_string(),
        path: path.to_path_buf(),
        family,
        precision,
        size_bytes,
        source,
        incomplete,
    }))
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() && depth > 0 => walk(&p, depth - 1, out),
            Ok(m) if m.is_file() => out.push((p, m.len())),
            _ => {}
        }
    }
}

/// The dtype holding most bytes across the weight files (safetensors headers, flax msgpack).
fn precision_of<'a>(files: impl Iterator<Item = &'a Path>) -> String {
    let mut bytes: Vec<(&'static str, u64)> = Vec::new();
    let mut add = |name: &'static str, n: u64| match bytes.iter_mut().find(|(k, _)| *k == name) {
        Some((_, v)) => *v += n,
        None => bytes.push((name, n)),
    };
    for f in files {
        match f.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => {
                for (dtype, n) in safetensors_dtypes(f).unwrap_or_default() {
                    add(dtype, n);
                }
            }
            Some("msgpack") => {
                if let Some(dtype) = msgpack_dtype(f) {
                    add(dtype, std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
                }
            }
            _ => {}
        }
    }
    let total: u64 = bytes.iter().map(|(_, n)| n).sum();
    bytes.sort_by(|a, b| b.1.cmp(&a.1));
    match bytes.as_slice() {
        [] => "unknown".into(),
        // a few fp32 tensors (e.g. position ids) in an fp16 file still make it fp16
        [(name, n), ..] if *n as f64 >= 0.9 * total as f64 => name.to_string(),
        // e.g. an fp32 DalleBart with an fp16 VQGAN: "fp32+fp16"
        [(a, _), (b, _), ..] => format!("{a}+{b}"),
        [(a, _)] => a.to_string(),
    }
}

/// Bytes per dtype from a safetensors header (8-byte length + JSON), without reading the data.
fn safetensors_dtypes(path: &Path) -> Option<Vec<(&'static str, u64)>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let mut out = Vec::new();
    for (key, t) in v.as_object()? {
        if key == "__metadata__" {
            continue;
        }
        let dtype = match t.get("dtype")?.as_str()? {
            "F16" => "fp16",
            "BF16" => "bf16",
            "F32" => "fp32",
            "F64" => "fp64",
            _ => "other",
        };
        let off = t.get("data_offsets")?.as_array()?;
        let (a, b) = (off.first()?.as_u64()?, off.get(1)?.as_u64()?);
        out.push((dtype, b.saturating_sub(a)));
    }
    Some(out)
}

/// Flax msgpack stores each array as (shape, dtype name, bytes): the first dtype name in the
/// first MiB is taken as the file's.
fn msgpack_dtype(path: &Path) -> Option<&'static str> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut head)
        .ok()?;
    let find = |pat: &[u8]| head.windows(pat.len()).position(|w| w == pat);
    let mut hits: Vec<(usize, &'static str)> = Vec::new();
    for (pat, name) in [
        (&b"bfloat16"[..], "bf16"),
        (b"float16", "fp16"),
        (b"float32", "fp32"),
    ] {
        if let Some(p) = find(pat) {
            // "bfloat16" also contains "float16", one byte later
            let p = if name == "fp16" && p > 0 && head[p - 1] == b'b' {
                continue;
            } else {
                p
            };
            hits.push((p, name));
        }
    }
    hits.into_iter().min_by_key(|(p, _)| *p).map(|(_, n)| n)
}

/// `1.7 GB`, `335 MB`, `12 kB`.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.0} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}
