//! Where the Hub is and how to talk to it: endpoint, token, offline mode, retries and timeouts,
//! from the environment variables `huggingface_hub` honours or set explicitly.

use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the Hub. Pass it explicitly (tests point `endpoint` at a local mock);
/// [`HubConfig::from_env`] reads the variables `huggingface_hub` honours.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, `HF_ENDPOINT` (mirrors).
    pub endpoint: String,
    /// `HF_TOKEN` (or the token file `huggingface-cli login` writes); sent to the endpoint only.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: never touch the network, use what is on disk.
    pub offline: bool,
    /// Draw progress bars (they only appear when stderr is a terminal; logs go on regardless).
    pub progress: bool,
    /// Resume attempts after a cut connection, per file.
    pub retries: u32,
    /// First wait before a resume attempt (doubles each time, at most 30 s).
    pub retry_delay: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            offline: false,
            progress: true,
            retries: 5,
            retry_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn token_from_env() -> Option<String> {
    let clean = |s: String| Some(s.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(clean) {
        return Some(t);
    }
    // The file `huggingface-cli login` writes.
    let file = match std::env::var_os("HF_TOKEN_PATH") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HF_HOME") {
            Some(home) => PathBuf::from(home).join("token"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/huggingface/token"),
        },
    };
    std::fs::read_to_string(file).ok().and_then(clean)
}

impl HubConfig {
    /// `HF_ENDPOINT`, `HF_TOKEN` (or the login token file) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty());
        HubConfig {
            endpoint: endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            token: token_from_env(),
            offline: env_true("HF_HUB_OFFLINE"),
            ..Default::default()
        }
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// `--offline` adds to `HF_HUB_OFFLINE`, it never turns it off.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline |= offline;
        self
    }

    pub fn base(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }

    /// The endpoint without any `user:password@` part, for messages and kiln-source.json.
    pub fn display_endpoint(&self) -> String {
        let base = self.base();
        let start = base.find("://").map_or(0, |i| i + 3);
        let end = base[start..].find('/').map_or(base.len(), |i| start + i);
        match base[start..end].rfind('@') {
            Some(at) => format!("{}{}", &base[..start], &base[start + at + 1..]),
            None => base.to_string(),
        }
    }

    pub fn resolve_url(&self, repo: &str, revision: &str, path: &str) -> String {
        format!("{}/{repo}/resolve/{revision}/{path}", self.base())
    }
}
