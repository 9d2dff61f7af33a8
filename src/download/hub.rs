//! A small Hugging Face Hub client: file metadata from the `resolve` endpoint, then a
//! resumable, verified download into a `.part` file that is renamed only once it is complete.
//!
//! The Hub's protocol, as `huggingface_hub` uses it: `HEAD {endpoint}/{repo}/resolve/{rev}/{path}`
//! without following absolute redirects; `X-Repo-Commit` is the commit served, `X-Linked-Etag`
//! (else `ETag`) the file's id — the sha256 of the content for LFS files — and `X-Linked-Size`
//! (else `Content-Length`) its size. LFS files answer 302 to a CDN `Location`; relative
//! redirects (renamed repositories) are followed. The body is then fetched with `Range`.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::{debug, info, warn};

use super::error::{DownloadError, Result};
use super::hub_config::HubConfig;
use super::transfer::{Attempt, FileMeta, copy_body, truncate, verify};
use Attempt::{Fatal, Transient};

fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct HubClient {
    config: HubConfig,
    no_redirect: ureq::Agent,
    follow: ureq::Agent,
}

impl HubClient {
    pub fn new(config: HubConfig) -> Self {
        let build = |redirects| {
            ureq::AgentBuilder::new()
                .redirects(redirects)
                .timeout_connect(config.connect_timeout)
                .timeout_read(config.read_timeout)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        HubClient {
            no_redirect: build(0),
            follow: build(5),
            config,
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The token goes to the configured endpoint only, never to a CDN it redirects to.
    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        // identity: sizes and byte ranges must refer to the stored bytes (as huggingface_hub asks)
        let req = agent
            .request(method, url)
            .set("Accept-Encoding", "identity");
        match &self.config.token {
            Some(t) if origin(url) == origin(self.config.base()) => {
                req.set("Authorization", &format!("Bearer {t}"))
            }
            _ => req,
        }
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> DownloadError {
        DownloadError::Unreachable {
            endpoint: self.config.display_endpoint(),
            message: message.to_string(),
        }
    }

    /// Maps an HTTP error status to a message saying what to do.
    fn status_error(&self, url: &str, status: u16, resp: ureq::Response) -> DownloadError {
        let server_msg = resp
            .header("X-Error-Message")
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let hint = match status {
            401 | 403 => format!(
                "access denied{server_msg}: the repository may be gated or private; accept its terms on the Hub and set HF_TOKEN"
            ),
            404 => format!(
                "not found{server_msg}: the repository, revision or file does not exist (moved? try `--revision main`)"
            ),
            416 => "the server refused the byte range".to_string(),
            429 => format!("rate limited{server_msg}: wait a little, or set HF_TOKEN"),
            s if s >= 500 => {
                return self.unreachable(format!(
                    "the Hub answered HTTP {status}{server_msg} for {url}"
                ));
            }
            _ => format!("unexpected status{server_msg}"),
        };
        DownloadError::Http {
            url: url.to_string(),
            status,
            hint,
        }
    }

    /// `HEAD` on the resolve URL, following relative redirects only (as huggingface_hub does).
    pub fn metadata(&self, repo: &str, revision: &str, path: &str) -> Result<FileMeta> {
        let mut url = self.config.resolve_url(repo, revision, path);
        for _ in 0..5 {
            let resp = match self.request(&self.no_redirect, "HEAD", &url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(status, resp)) => {
                    return Err(self.status_error(&url, status, resp));
                }
                Err(ureq::Error::Transport(t)) => return Err(self.unreachable(t)),
            };
            let location = resp.header("Location").map(str::to_string);
            if (300..400).contains(&resp.status()) {
                let Some(loc) = location else {
                    return Err(DownloadError::Protocol {
                        url,
                        message: format!("HTTP {} without a Location", resp.status()),
                    });
                };
                if loc.starts_with('/') {
                    url = format!("{}{loc}", origin(&url));
                    continue;
                }
                return self.meta_from(&url, &resp, loc);
            }
            return self.meta_from(&url, &resp, url.clone());
        }
        Err(DownloadError::Protocol {
            url,
            message: "too many redirects".into(),
        })
    }

    fn meta_from(
        &self,
        url: &str,
        resp: &ureq::Response,
        download_url: String,
    ) -> Result<FileMeta> {
        let header = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| resp.header(n))
                .map(str::to_string)
        };
        let etag = header(&["X-Linked-Etag", "ETag"])
            .map(|e| normalize_etag(&e))
            .ok_or_else(|| DownloadError::Protocol {
                url: url.into(),
                message: "no ETag / X-Linked-Etag header (is HF_ENDPOINT a Hub?)".into(),
            })?;
        let size = header(&["X-Linked-Size", "Content-Length"])
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| DownloadError::Protocol {
                url: url.into(),
                message: "no file size (X-Linked-Size / Content-Length)".into(),
            })?;
        let sha256 = is_sha256(&etag).then(|| etag.to_ascii_lowercase());
        Ok(FileMeta {
            commit: header(&["X-Repo-Commit"]),
            etag,
            size,
            sha256,
            url: download_url,
        })
    }

    /// Downloads `meta` into `part` (resuming what is there), verifies size and sha256, and
    /// renames it to `dest`. On a checksum or size mismatch the part file is deleted.
    pub fn download(
        &self,
        meta: &FileMeta,
        part: &Path,
        dest: &Path,
        label: &str,
    ) -> Result<String> {
        let bar = self.progress_bar(meta.size, label);
        let mut failures = 0u32;
        loop {
            let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
            if have == meta.size {
                break;
            }
            match self.fetch_from(meta, part, have, &bar, label) {
                Ok(()) => {
                    let now = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
                    if now >= meta.size {
                        break;
                    }
                    // the body ended early without an error: treat as a cut connection
                    warn!(
                        file = label,
                        got = now,
                        expected = meta.size,
                        "connection closed early"
                    );
                }
                Err(Transient(msg)) => warn!(file = label, "download interrupted: {msg}"),
                Err(Fatal(e)) => {
                    bar.abandon();
                    return Err(e);
                }
            }
            failures += 1;
            if failures > self.config.retries {
                bar.abandon();
                return Err(self.unreachable(format!(
                    "{label}: connection lost {failures} times; run the command again to resume"
                )));
            }
            let wait = self
                .config
                .retry_delay
                .saturating_mul(1 << (failures - 1).min(5))
                .min(Duration::from_secs(30));
            info!(file = label, attempt = failures, "resuming in {wait:?}");
            std::thread::sleep(wait);
        }
        bar.finish_and_clear();
        let sha = verify(part, meta)?;
        std::fs::rename(part, dest).map_err(|e| DownloadError::io(dest, e))?;
        Ok(sha)
    }

    fn progress_bar(&self, size: u64, label: &str) -> ProgressBar {
        if !self.config.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(size);
        let style = ProgressStyle::with_template(
            "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(label.to_string());
        bar
    }

    /// One GET from byte `have` to the end, appended to `part`.
    fn fetch_from(
        &self,
        meta: &FileMeta,
        part: &Path,
        have: u64,
        bar: &ProgressBar,
        label: &str,
    ) -> Result<(), Attempt> {
        let mut req = self.request(&self.follow, "GET", &meta.url);
        if have > 0 {
            req = req.set("Range", &format!("bytes={have}-"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(416, _)) => {
                // our part file does not fit the file the server has: start over
                truncate(part).map_err(Fatal)?;
                return Err(Transient(
                    "server refused the resume range; restarting this file".into(),
                ));
            }
            Err(ureq::Error::Status(s, _)) if s >= 500 => {
                return Err(Transient(format!("HTTP {s}")));
            }
            Err(ureq::Error::Status(s, r)) => {
                return Err(Fatal(self.status_error(&meta.url, s, r)));
            }
            Err(ureq::Error::Transport(t)) => return Err(Transient(t.to_string())),
        };
        let start = if resp.status() == 206 {
            let start = resp.header("Content-Range").and_then(|r| {
                r.trim()
                    .strip_prefix("bytes ")?
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            if start != Some(have) {
                truncate(part).map_err(Fatal)?;
                return Err(Transient(format!(
                    "server resumed at {start:?}, not {have}; restarting this file"
                )));
            }
            have
        } else {
            if have > 0 {
                debug!(
                    file = label,
                    "server ignored Range; downloading from the start"
                );
            }
            0
        };
        let mut file = if start == 0 {
            File::create(part)
        } else {
            OpenOptions::new().append(true).open(part)
        }
        .map_err(|e| Fatal(DownloadError::io(part, e)))?;
        bar.set_position(start);
        copy_body(
            resp.into_reader(),
            &mut file,
            part,
            bar,
            label,
            start,
            meta.size,
        )?;
        file.sync_all()
            .map_err(|e| Fatal(DownloadError::io(part, e)))
    }
}
