//! `kiln probe`: a health check for container runtimes (Docker's HEALTHCHECK, exec probes),
//! so images need no curl. Exit 0 when the server answers 200, 1 otherwise.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// `ready`: GET /health/ready (models loaded, not draining); `live`: GET /health/live.
    #[arg(value_enum, default_value = "ready")]
    pub check: Check,
    /// The server's base URL (default http://127.0.0.1:PORT).
    #[arg(long, env = "KILN_PROBE_URL")]
    pub url: Option<String>,
    /// Port of the default URL: the server's own KILN_PORT when set.
    #[arg(long, env = "KILN_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Give up after this many seconds (connect and answer).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Check {
    Live,
    Ready,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let base = args
        .url
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", args.port));
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--url must start with http:// or https://, got `{base}`");
    }
    let path = match args.check {
        Check::Live => "/health/live",
        Check::Ready => "/health/ready",
    };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    // No redirects: a probe judges this server's own answer.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(args.timeout_secs))
        .redirects(0)
        .build();
    match agent.get(&url).call() {
        Ok(resp) if resp.status() == 200 => {
            println!("{url}: 200");
            Ok(())
        }
        Ok(resp) => bail!("{url}: {} {}", resp.status(), resp.status_text()),
        Err(ureq::Error::Status(code, resp)) => {
            // The body says why (the OpenAI error envelope); a probe log line shows it.
            let body = resp.into_string().unwrap_or_default();
            bail!("{url}: {code} {}", body.trim())
        }
        // ureq's message already names the URL.
        Err(e) => Err(e).context("no answer"),
    }
}
