//! A mock Hugging Face Hub on 127.0.0.1 for the download tests: the `resolve` URL scheme,
//! `X-Repo-Commit` / `X-Linked-Etag` / `X-Linked-Size` headers, 302 to a "CDN" for LFS files,
//! byte ranges, and fault injection (cut connection, corrupt body, token required).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::download::{DownloadRecipe, HubConfig};
use sha2::{Digest, Sha256};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(rel)
}

#[derive(Default)]
struct State {
    /// (repo, path) → content; revisions in `revisions` are accepted for every repo.
    files: HashMap<(String, String), Vec<u8>>,
    revisions: HashSet<String>,
    cut_once: HashSet<String>,
    corrupt: HashSet<String>,
    token: Option<String>,
    /// "METHOD path [range]" of every request, in order.
    log: Vec<String>,
}

#[derive(Clone)]
pub struct MockHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors") || path.ends_with(".msgpack")
}

impl MockHub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State::default()));
        let hub = MockHub { endpoint, state };
        let server = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = server.clone();
                std::thread::spawn(move || s.handle(stream));
            }
        });
        hub
    }

    /// Serves every file of `spec` at each of its revisions, content from `content(remote path)`.
    pub fn serve_spec(&self, spec: &DownloadRecipe, content: impl Fn(&str, &str) -> Vec<u8>) {
        for (rs, f) in spec.files() {
            self.add(
                &rs.repo,
                &rs.revision,
                &f.remote,
                content(&rs.repo, &f.remote),
            );
        }
    }

    pub fn add(&self, repo: &str, revision: &str, path: &str, body: Vec<u8>) {
        let mut s = self.state.lock().unwrap();
        s.revisions.insert(revision.to_string());
        s.files.insert((repo.to_string(), path.to_string()), body);
    }

    /// The first GET of `path` sends half the body, then closes the connection.
    pub fn cut_once(&self, path: &str) {
        self.state.lock().unwrap().cut_once.insert(path.to_string());
    }

    /// `path` is served with one byte flipped (headers still announce the true sha256).
    pub fn corrupt(&self, path: &str) {
        self.state.lock().unwrap().corrupt.insert(path.to_string());
    }

    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_string());
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn config(&self) -> HubConfig {
        HubConfig {
            progress: false,
            retry_delay: Duration::from_millis(10),
            read_timeout: Duration::from_secs(10),
            ..HubConfig::default()
        }
        .with_endpoint(self.endpoint.clone())
    }

    fn handle(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        self.state.lock().unwrap().log.push(format!(
            "{method} {target}{}",
            range.as_ref().map(|r| format!(" {r}")).unwrap_or_default()
        ));
        let mut out = stream;
        let _ = self.respond(
            &mut out,
            &method,
            &target,
            range.as_deref(),
            headers.get("authorization").map(String::as_str),
        );
        let _ = out.flush();
    }

    fn respond(
        &self,
        out: &mut TcpStream,
        method: &str,
        target: &str,
        range: Option<&str>,
        auth: Option<&str>,
    ) -> std::io::Result<()> {
        let head = method == "HEAD";
        // CDN: /cdn/<repo>/<path>, no auth, content by sha
        if let Some(rest) = target.strip_prefix("/cdn/") {
            let found = {
                let s = self.state.lock().unwrap();
                s.files
                    .iter()
                    .find(|((r, p), _)| format!("{r}/{p}") == rest)
                    .map(|((_, p), b)| (p.clone(), b.clone()))
            };
            let Some((path, body)) = found else {
                return simple(out, 404, &[], head);
            };
            return self.send_body(out, &path, body, range, head, &[]);
        }
        let Some((repo, rev, path)) = parse_resolve(target) else {
            return simple(out, 404, &[("X-Error-Code", "RepoNotFound".into())], head);
        };
        let (required, known_rev, body) = {
            let s = self.state.lock().unwrap();
            (
                s.token.clone(),
                s.revisions.contains(&rev),
                s.files.get(&(repo.clone(), path.clone())).cloned(),
            )
        };
        if let Some(t) = required
            && auth != Some(&format!("Bearer {t}"))
        {
            return simple(
                out,
                401,
                &[(
                    "X-Error-Message",
                    "Access to this repository is restricted".into(),
                )],
                head,
            );
        }
        let Some(body) = body.filter(|_| known_rev) else {
            return simple(
                out,
                404,
                &[
                    ("X-Error-Code", "EntryNotFound".into()),
                    ("X-Error-Message", "Entry not found".into()),
                ],
                head,
            );
        };
        let commit = ("X-Repo-Commit", COMMIT.to_string());
        if is_lfs(&path) {
            let sha = sha256_hex(&body);
            let port = self.endpoint.rsplit(':').next().unwrap_or("0");
            let hdrs = [
                commit,
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", body.len().to_string()),
                ("ETag", "\"0000aaaa\"".into()),
                (
                    "Location",
                    format!("http://127.0.0.1:{port}/cdn/{repo}/{path}"),
                ),
            ];
            return simple(out, 302, &hdrs, head);
        }
        // git-stored file: the ETag is a git blob id, not a sha256
        let etag = ("ETag", format!("\"{}\"", &sha256_hex(&body)[..40]));
        self.send_body(out, &path, body, range, head, &[commit, etag])
    }

    fn send_body(
        &self,
        out: &mut TcpStream,
        path: &str,
        mut body: Vec<u8>,
        range: Option<&str>,
        head: bool,
        extra: &[(&str, String)],
    ) -> std::io::Result<()> {
        let total = body.len();
        let (cut, corrupt) = {
            let mut s = self.state.lock().unwrap();
            let cut = !head && s.cut_once.remove(path);
            (cut, s.corrupt.contains(path))
        };
        if corrupt && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let start = range.and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
        let mut hdrs: Vec<(&str, String)> = extra.to_vec();
        let (status, slice) = match start {
            Some(s) if s >= total => {
                return simple(
                    out,
                    416,
                    &[("Content-Range", format!("bytes */{total}"))],
                    head,
                );
            }
            Some(s) => {
                hdrs.push(("Content-Range", format!("bytes {s}-{}/{total}", total - 1)));
                (206, &body[s..])
            }
            None => (200, &body[..]),
        };
        write_head(out, status, &hdrs, slice.len())?;
        if head {
            return Ok(());
        }
        if cut {
            out.write_all(&slice[..slice.len() / 2])?;
            out.flush()?;
            return out.shutdown(std::net::Shutdown::Both);
        }
        out.write_all(slice)
    }
}

/// `/{org}/{name}/resolve/{rev}/{path…}`
fn parse_resolve(target: &str) -> Option<(String, String, String)> {
    let mut it = target.trim_start_matches('/').splitn(5, '/');
    let (org, name, kw, rev, path) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    (kw == "resolve").then(|| (format!("{org}/{name}"), rev.to_string(), path.to_string()))
}

fn write_head(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut s = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n"
    );
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    out.write_all(s.as_bytes())
}

fn simple(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    _head: bool,
) -> std::io::Result<()> {
    write_head(out, status, headers, 0)
}

/// Content for SD 1.5's spec from the tiny fixture: the fp16/fp32 weight names both map to the
/// fixture's (fp32) files, which the loader reads under either name.
pub fn sd15_fixture_content(_repo: &str, remote: &str) -> Vec<u8> {
    let local = remote.replace(".fp16.safetensors", ".safetensors");
    // The tiny safety checker is a fixture of its own (the demo model runs without one).
    let dir = if local.starts_with("safety_checker/") || local.starts_with("feature_extractor/") {
        "safety-tiny"
    } else {
        "sd15-tiny"
    };
    std::fs::read(fixture(dir).join(local)).expect("fixture file")
}

/// Content for the DALL·E specs from the tiny flax fixture (+ a small word list).
pub fn dalle_fixture_content(repo: &str, remote: &str) -> Vec<u8> {
    if remote == "enwiki-words-frequency.txt" {
        return b"the 1000\ncat 500\nsmall 200\n".to_vec();
    }
    let dir = if repo.ends_with("vqgan_imagenet_f16_16384") {
        fixture("dalle-tiny/flax/vqgan")
    } else {
        fixture("dalle-tiny/flax")
    };
    std::fs::read(dir.join(remote)).expect("fixture file")
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
