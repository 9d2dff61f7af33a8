//! Fetching published weights from the Hugging Face Hub into `models/<id>/`, in the layout the
//! loaders read: `kiln download`, `kiln models`, and the first-run download of `kiln serve`.
//!
//! ```ignore
//! use kiln::download::{HubConfig, ensure_model, EnsureOutcome};
//! let hub = HubConfig::from_env().with_offline(args.offline);   // HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE
//! match ensure_model("sd15", &args.models_dir, &hub)? {
//!     EnsureOutcome::Present(dir) | EnsureOutcome::Downloaded(dir) => { /* serve dir */ }
//!     EnsureOutcome::Unavailable { reason } => { /* already logged loudly: fall back to the demo */ }
//! }
//! ```
//!
//! Each file is fetched into `<name>.<etag>.part`, resumed with `Range` after a cut connection
//! (also across runs), checked against the Hub's size and sha256, and only then renamed into
//! place; `kiln-source.json` records every finished file, so a folder is either complete or
//! marked incomplete. A folder without `kiln-source.json` is the user's and is never touched.
//!
//! Why not the `hf-hub` crate: 0.4 writes into the HF cache layout (blobs + symlinks), not
//! `models/<id>/`, does not verify sha256, ignores `HF_HUB_OFFLINE`, and pulls a second
//! indicatif; 1.0 is reqwest + tokio only. This client is ~300 lines on ureq (rustls).

pub mod error;
pub mod hub;
mod hub_config;
pub mod installed;
pub mod source;
pub mod spec;
mod transfer;

use std::path::{Path, PathBuf};

use tracing::{info, warn};

pub use error::{DownloadError, Result};
pub use hub::HubClient;
pub use hub_config::{DEFAULT_ENDPOINT, HubConfig};
pub use installed::{InstalledModel, human_size, installed_models};
pub use source::{SOURCE_FILE, SourceFile, SourceManifest};
pub use spec::{
    AddOn, Contents, DownloadRecipe, RepoFile, RepoSpec, expand_ids, known_ids, recipe,
};
pub use transfer::{FileMeta, sha256_file};

/// What `download_model` did.
#[derive(Debug, Clone, Default)]
pub struct DownloadReport {
    pub dir: PathBuf,
    /// Files fetched now (local paths).
    pub fetched: Vec<String>,
    /// Files that were already there and verified.
    pub present: Vec<String>,
    pub bytes_fetched: u64,
}

/// Result of [`ensure_model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// Installed already (downloaded before, or a folder the user filled).
    Present(PathBuf),
    /// Fetched now.
    Downloaded(PathBuf),
    /// Not installed and the Hub cannot be used (offline mode or unreachable); already logged.
    Unavailable { reason: String },
}

/// Whether `dir` holds a download that has not finished (servers should skip it).
pub fn is_incomplete_download(dir: &Path) -> bool {
    matches!(SourceManifest::read(dir), Ok(Some(m)) if !m.is_intact(dir))
}

fn part_path(dest: &Path, etag: &str) -> PathBuf {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tag: String = etag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    dest.with_file_name(format!("{name}.{tag}.part"))
}

/// Removes `<name>.*.part` files of other versions of the file (a stale resume would be wrong).
fn remove_stale_parts(dest: &Path, keep: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let stale = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{name}.")) && n.ends_with(".part"));
        if stale && p != keep {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn recorded(manifest: &SourceManifest, dir: &Path, rs: &RepoSpec, f: &RepoFile) -> bool {
    manifest.entry(&f.local).is_some_and(|e| {
        e.repo == rs.repo
            && e.revision == rs.revision
            && e.remote == f.remote
            && std::fs::metadata(dir.join(&f.local)).is_ok_and(|m| m.len() == e.size)
    })
}

/// Fetches what `spec` lists into `models_dir/<id>/`, skipping files already recorded there.
/// Offline, succeeds only when every file is already present. A non-empty folder without
/// `kiln-source.json` is the user's: refused (`NotOurs`), never overwritten.
pub fn download_model(
    spec: &DownloadRecipe,
    models_dir: &Path,
    hub: &HubConfig,
) -> Result<DownloadReport> {
    let dir = models_dir.join(&spec.dir);
    let existing = SourceManifest::read(&dir)?;
    let hand_made = existing.is_none() && has_files(&dir);
    let mut manifest = existing.unwrap_or_else(|| SourceManifest {
        model: spec.id.clone(),
        kind: spec.kind,
        precision: spec.precision.clone(),
        endpoint: hub.display_endpoint(),
        complete: false,
        files: Vec::new(),
    });
    let mut report = DownloadReport {
        dir: dir.clone(),
        ..Default::default()
    };

    if hub.offline {
        // Present = recorded by an earlier download, or simply there (copied by hand).
        let missing: Vec<&str> = spec
            .files()
            .filter(|(rs, f)| !recorded(&manifest, &dir, rs, f) && !dir.join(&f.local).is_file())
            .map(|(_, f)| f.local.as_str())
            .collect();
        if let Some(first) = missing.first() {
            let missing = if missing.len() > 1 {
                format!("{first} and {} more", missing.len() - 1)
            } else {
                first.to_string()
            };
            return Err(DownloadError::Offline {
                model: spec.id.clone(),
                dir,
                missing,
            });
        }
        report.present = spec.files().map(|(_, f)| f.local.clone()).collect();
        return Ok(report);
    }

    if hand_made {
        return Err(DownloadError::NotOurs { dir });
    }
    std::fs::create_dir_all(&dir).map_err(|e| DownloadError::io(&dir, e))?;
    // Only this spec's files are described; an interrupted run stays marked incomplete.
    manifest
        .files
        .retain(|e| spec.files().any(|(_, f)| f.local == e.path));
    manifest.precision = spec.precision.clone();
    manifest.complete = false;
    manifest.write(&dir)?;

    let client = HubClient::new(hub.clone());
    let count = spec.files().count();
    for (i, (rs, f)) in spec.files().enumerate() {
        if recorded(&manifest, &dir, rs, f) {
            report.present.push(f.local.clone());
            continue;
        }
        let meta = client.metadata(&rs.repo, &rs.revision, &f.remote)?;
        let dest = dir.join(&f.local);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DownloadError::io(parent, e))?;
        }
        let label = format!("[{}/{count}] {}/{}", i + 1, spec.id, f.local);
        // A file already there (an earlier run that stopped before recording it) is kept when it matches.
        let existing = match std::fs::metadata(&dest) {
            Ok(m) if m.len() == meta.size => {
                Some(sha256_file(&dest)?).filter(|s| meta.sha256.as_ref().is_none_or(|e| e == s))
            }
            _ => None,
        };
        let sha256 = match existing {
            Some(sha) => {
                report.present.push(f.local.clone());
                sha
            }
            None => {
                let part = part_path(&dest, &meta.etag);
                remove_stale_parts(&dest, &part);
                info!(file = %f.local, repo = %rs.repo, size = meta.size, "downloading");
                let sha = client.download(&meta, &part, &dest, &label)?;
                report.fetched.push(f.local.clone());
                report.bytes_fetched += meta.size;
                sha
            }
        };
        let commit = meta.commit.clone();
        manifest.upsert(SourceFile {
            path: f.local.clone(),
            repo: rs.repo.clone(),
            revision: rs.revision.clone(),
            remote: f.remote.clone(),
            commit,
            size: meta.size,
            sha256,
        });
        manifest.write(&dir)?;
    }
    manifest.complete = true;
    manifest.endpoint = hub.display_endpoint();
    manifest.write(&dir)?;
    info!(model = %spec.id, dir = %dir.display(), fetched = report.fetched.len(), present = report.present.len(), "model ready");
    Ok(report)
}

/// For `kiln serve`'s first run: `Present` when `models_dir/<id>` is installed, else downloads
/// it (progress bars + logs) unless offline. When the Hub cannot be used, logs one loud line and
/// returns `Unavailable` so the caller falls back to the demo models; other failures (checksum,
/// disk, HTTP 404) are errors. Blocking: call it outside async code (or in `spawn_blocking`).
pub fn ensure_model(id: &str, models_dir: &Path, hub: &HubConfig) -> Result<EnsureOutcome> {
    let dir = models_dir.join(id);
    let manifest = SourceManifest::read(&dir)?;
    match &manifest {
        Some(m) if m.is_intact(&dir) => return Ok(EnsureOutcome::Present(dir)),
        None if has_files(&dir) => {
            info!(dir = %dir.display(), "no kiln-source.json: using the files there as they are");
            return Ok(EnsureOutcome::Present(dir));
        }
        _ => {}
    }
    // resume the precision an interrupted download had chosen
    let fp16 = manifest.as_ref().is_none_or(|m| m.precision != "fp32");
    let spec = recipe(id, fp16)?;
    if !hub.offline {
        let size = spec
            .approx_bytes
            .map(|b| format!(" (about {})", human_size(b)))
            .unwrap_or_default();
        warn!(
            "{id}: weights not found in {}; downloading them{size} from {} — use --offline to skip",
            dir.display(),
            hub.display_endpoint()
        );
    }
    match download_model(&spec, models_dir, hub) {
        Ok(_) => Ok(EnsureOutcome::Downloaded(dir)),
        Err(e) if e.is_unreachable() => {
            let reason = e.to_string();
            warn!(
                "!!! {id} IS NOT INSTALLED and cannot be downloaded now: {reason}. Continuing without it \
                 (the server falls back to the DEMO models, which draw noise, if nothing else is installed). \
                 Run `kiln download {id}` once the Hub is reachable."
            );
            Ok(EnsureOutcome::Unavailable { reason })
        }
        Err(e) => Err(e),
    }
}

/// Anything but hidden files and our own `.part` files.
fn has_files(dir: &Path) -> bool {
    let ours = |name: &str| name.starts_with('.') || name.ends_with(".part");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            has_files(&p)
        } else {
            !ours(&e.file_name().to_string_lossy())
        }
    })
}
