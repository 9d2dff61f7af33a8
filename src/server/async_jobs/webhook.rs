//! Per-job webhooks: which URLs a request may name (the operator's allow-list), and delivery
//! of the finished job to them.
//!
//! SSRF: a webhook makes the server send a request where a client says. So webhooks are off
//! unless the operator lists the hosts they may go to (`--webhook-allow`), matched exactly by
//! name or IP literal as the URL spells it; `*` allows any host and is for networks where the
//! server can reach nothing a client should not. Only http and https; no redirects are
//! followed (a 3xx is a failed try); no credentials in the URL (the record would echo them in
//! logs; put a secret in the path or query instead).

use std::time::Duration;

use url::Url;

use crate::server::error::ApiError;

/// Each try's limit (connect, send, answer).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses before the second and third tries.
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(4)];

/// Where webhooks may go: `--webhook-allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WebhookAllow {
    /// No list: a request with `webhook_url` is refused.
    #[default]
    Off,
    /// `*`.
    Any,
    /// Host names or IP literals (lowercase, IPv6 without brackets).
    Hosts(Vec<String>),
}

impl WebhookAllow {
    /// From the flag's values: none → off, `*` among them → any, else exact hosts.
    pub fn from_list(hosts: &[String]) -> Self {
        let hosts: Vec<String> = hosts
            .iter()
            .map(|h| normal_host(h.trim()))
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            Self::Off
        } else if hosts.iter().any(|h| h == "*") {
            Self::Any
        } else {
            Self::Hosts(hosts)
        }
    }

    /// The URL a request gave, if this server may call it; else the 400 to answer.
    pub fn check(&self, raw: &str) -> Result<Url, ApiError> {
        let bad = |code: &str, msg: String| ApiError::invalid("webhook_url", msg).code(code);
        if *self == Self::Off {
            return Err(bad(
                "webhooks_disabled",
                "webhooks are off on this server (its operator enables them with --webhook-allow)"
                    .into(),
            ));
        }
        let url = Url::parse(raw.trim())
            .map_err(|e| bad("invalid_value", format!("`webhook_url` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(
                "invalid_value",
                format!(
                    "`webhook_url` must be http or https, not `{}`",
                    url.scheme()
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "invalid_value",
                "`webhook_url` must not carry credentials; put a secret in its path or query"
                    .into(),
            ));
        }
        let host = url.host_str().map(normal_host).unwrap_or_default();
        if let Self::Hosts(allowed) = self
            && !allowed.contains(&host)
        {
            return Err(bad(
                "webhook_not_allowed",
                format!("webhooks to `{host}` are not allowed on this server (--webhook-allow)"),
            ));
        }
        Ok(url)
    }
}

/// Lowercase, without the brackets of an IPv6 literal.
fn normal_host(h: &str) -> String {
    let h = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h);
    h.to_ascii_lowercase()
}

/// POSTs `body` (the finished job as JSON) to `url`, up to three times; true when a try was
/// answered 2xx. Failures are logged with the job id.
pub async fn deliver(url: &Url, job_id: &str, body: String) -> bool {
    let agent = ureq::AgentBuilder::new()
        .timeout(TIMEOUT)
        .redirects(0)
        .build();
    let tries = BACKOFF.len() + 1;
    for attempt in 1..=tries {
        let (agent, url_s, id, body) = (
            agent.clone(),
            url.to_string(),
            job_id.to_string(),
            body.clone(),
        );
        // ureq blocks: on tokio's blocking pool, never on the runtime's threads.
        let outcome = tokio::task::spawn_blocking(move || {
            agent
                .post(&url_s)
                .set("Content-Type", "application/json")
                .set("X-Kiln-Job-Id", &id)
                .send_string(&body)
        })
        .await;
        let why = match outcome {
            Ok(Ok(r)) if (200..300).contains(&r.status()) => {
                tracing::info!(job = job_id, attempt, "webhook delivered");
                return true;
            }
            Ok(Ok(r)) => format!("answered {}", r.status()),
            Ok(Err(ureq::Error::Status(code, _))) => format!("answered {code}"),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            job = job_id,
            attempt,
            tries,
            host = url.host_str().unwrap_or(""),
            "webhook failed: {why}"
        );
        if let Some(pause) = BACKOFF.get(attempt - 1) {
            tokio::time::sleep(*pause).await;
        }
    }
    false
}
