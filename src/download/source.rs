//! `kiln-source.json`: written next to downloaded files, it says where each came from (repository,
//! revision asked for, commit served, size, sha256) and whether the download is complete.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{DownloadError, Result};
use super::spec::Contents;

pub const SOURCE_FILE: &str = "kiln-source.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Path inside the model folder.
    pub path: String,
    pub repo: String,
    /// The revision asked for (a commit hash, or `main`).
    pub revision: String,
    /// Path inside the repository.
    pub remote: String,
    /// The commit the Hub served (`X-Repo-Commit`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceManifest {
    pub model: String,
    /// Stored as `family` (the name of the files' first format).
    #[serde(rename = "family")]
    pub kind: Contents,
    pub precision: String,
    /// The Hub or mirror the files came from.
    pub endpoint: String,
    /// False while a download is under way or was interrupted.
    pub complete: bool,
    pub files: Vec<SourceFile>,
}

impl SourceManifest {
    /// The manifest of `dir`, `None` when there is none (a folder the user filled by hand).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(SOURCE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DownloadError::io(path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DownloadError::Manifest {
                path,
                message: e.to_string(),
            })
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a manifest.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SOURCE_FILE);
        let tmp = dir.join(format!("{SOURCE_FILE}.tmp"));
        let json = serde_json::to_string_pretty(self).map_err(|e| DownloadError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, json + "\n").map_err(|e| DownloadError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| DownloadError::io(&path, e))
    }

    pub fn entry(&self, local: &str) -> Option<&SourceFile> {
        self.files.iter().find(|f| f.path == local)
    }

    pub fn upsert(&mut self, file: SourceFile) {
        match self.files.iter_mut().find(|f| f.path == file.path) {
            Some(slot) => *slot = file,
            None => self.files.push(file),
        }
    }

    /// Files recorded but absent, or whose size changed since.
    pub fn damaged(&self, dir: &Path) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| {
                std::fs::metadata(dir.join(&f.path))
                    .map(|m| m.len() != f.size)
                    .unwrap_or(true)
            })
            .map(|f| f.path.clone())
            .collect()
    }

    /// Complete and every recorded file still there with its size.
    pub fn is_intact(&self, dir: &Path) -> bool {
        self.complete && !self.files.is_empty() && self.damaged(dir).is_empty()
    }

    /// `repo@rev` of each repository, main one first: "where it came from".
    pub fn origin(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for f in &self.files {
            let rev = f.commit.as_deref().unwrap_or(&f.revision);
            let item = format!("{}@{}", f.repo, &rev[..rev.len().min(12)]);
            if !seen.contains(&item) {
                seen.push(item);
            }
        }
        if seen.is_empty() {
            "kiln download (nothing fetched yet)".into()
        } else {
            seen.join(" + ")
        }
    }
}
