//! `kiln serve` (also what `kiln` with no subcommand does): the OpenAI-compatible image server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use kiln::backend::DeviceList;
use kiln::engine::{DEMO_HELP, EngineConfig, EngineHandle, JobRules, Limits, discover};
use kiln::server::{
    Background, ConnLimits, JobsConfig, ServerConfig, StoreKind, WebhookAllow, build_server, serve,
};
use tracing::{info, warn};

use super::addons::AddOnArgs;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to bind. 127.0.0.1 keeps the server private to this machine; 0.0.0.0 exposes it.
    #[arg(long, env = "KILN_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "KILN_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Every diffusers folder directly under this directory is served (id = folder name).
    #[arg(long, env = "KILN_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Serve PATH (diffusers folder or .safetensors/.ckpt) as model ID. Repeatable.
    #[arg(long = "model", env = "KILN_MODEL", value_name = "ID=PATH", value_delimiter = ',', value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// Model used when a request names none (default: the first one).
    #[arg(long, env = "KILN_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// cpu, wgpu[:N] or cuda[:N], or a comma list (cuda:0,cuda:1): one worker per entry, each
    /// with a replica of every model; a request goes to the least-loaded one. Logs and metrics
    /// name a worker by its device, with #K added when a device is listed twice (cpu,cpu:
    /// cpu#0 and cpu#1).
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// auto (f16 on wgpu/cuda, f32 on cpu), f32, f16 or bf16 (on the CPU: SD's weights held
    /// and multiplied in bf16, f32 between layers). The VAE stays f32 when its config says
    /// `force_upcast` (SD 1.5's does), as diffusers does.
    #[arg(long, env = "KILN_PRECISION", default_value = "auto")]
    pub precision: String,
    /// Require `Authorization: Bearer KEY` on /v1 endpoints.
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests queued or running at once; more get 429 with Retry-After.
    #[arg(long, env = "KILN_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,
    /// Allowed CORS origin (repeatable; `*` = any). CORS is off when none is given.
    #[arg(long = "cors-origin", env = "KILN_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Never contact the Hugging Face Hub (no first-run download of the default model).
    #[arg(long, env = "KILN_OFFLINE")]
    pub offline: bool,
    /// Load every model at start instead of on its first request.
    #[arg(long, env = "KILN_PRELOAD")]
    pub preload: bool,
    #[command(flatten)]
    pub addons: AddOnArgs,
    /// How SD prompts are read when a request does not say (`prompt_syntax`): a1111 (emphasis,
    /// BREAK, no 77-token limit) or plain (diffusers).
    #[arg(long, env = "KILN_PROMPT_SYNTAX", default_value = "a1111", value_parser = ["a1111", "plain"])]
    pub prompt_syntax: String,
    /// Largest width or height a request may ask for.
    #[arg(long, env = "KILN_MAX_SIZE", default_value_t = Limits::default().max_side)]
    pub max_size: u32,
    /// Most denoising steps a request may ask for.
    #[arg(long, env = "KILN_MAX_STEPS", default_value_t = Limits::default().max_steps)]
    pub max_steps: u32,
    /// Most work one request may ask for, in denoising steps of a 512x512 image: an SD request
    /// costs n × steps × width·height / 512², a DALL·E image 50. The default (1000) passes 4
    /// images of 1024x1024 at 50 steps; more is refused up front with a 400. Lower it on a CPU.
    #[arg(long, env = "KILN_MAX_WORK", default_value_t = Limits::default().max_work,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_work: u64,
    /// Largest request body for edits and variations (uploads, or JSON with data: URLs), in MiB.
    #[arg(long, env = "KILN_MAX_UPLOAD_MB", default_value_t = 32)]
    pub max_upload_mb: usize,
    /// Lifetime of `response_format=url` links, in seconds.
    #[arg(long, env = "KILN_URL_TTL_SECS", default_value_t = 3600)]
    pub url_ttl_secs: u64,
    /// Images kept for `response_format=url` links (oldest dropped first).
    #[arg(long, env = "KILN_URL_STORE_MAX", default_value_t = 256)]
    pub url_store_max: usize,
    /// MiB kept for `response_format=url` links (oldest dropped first; default: no byte cap).
    #[arg(long, env = "KILN_URL_STORE_MAX_MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub url_store_max_mib: Option<u64>,
    /// Where `response_format=url` images live: `memory` (this process), or `dir:PATH`, a
    /// directory replicas share (NFS/EFS, a ReadWriteMany volume) so any replica serves any link.
    #[arg(long, env = "KILN_IMAGE_STORE", default_value = "memory")]
    pub image_store: StoreKind,
    /// Async jobs: seconds a finished job's record and results are kept.
    #[arg(long, env = "KILN_JOB_TTL_SECS", default_value_t = JobsConfig::default().ttl.as_secs())]
    pub job_ttl_secs: u64,
    /// Async jobs: records kept by this replica (oldest finished dropped first; when all are
    /// unfinished, new jobs get 429).
    #[arg(long, env = "KILN_MAX_JOBS", default_value_t = JobsConfig::default().max_jobs)]
    pub max_jobs: usize,
    /// Async jobs: MiB of results (b64 images, links) kept by this replica (oldest finished
    /// dropped first; the newest is kept even when alone larger).
    #[arg(long, env = "KILN_JOBS_MAX_MIB", default_value_t = JobsConfig::default().max_bytes.unwrap_or(0) >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs_max_mib: u64,
    /// Async jobs with `--image-store dir:PATH`: a queued or running job whose record was not
    /// rewritten for this many seconds is reported failed (`replica_lost`) by other replicas.
    #[arg(long, env = "KILN_JOB_STALE_SECS", default_value_t = JobsConfig::default().stale.as_secs(),
          value_parser = clap::value_parser!(u64).range(4..))]
    pub job_stale_secs: u64,
    /// Hosts job webhooks may be sent to (exact names or IP literals, comma list; `*` = any
    /// host). Without it, a job with `webhook_url` is refused (400). See README "Async jobs"
    /// on SSRF.
    #[arg(
        long = "webhook-allow",
        env = "KILN_WEBHOOK_ALLOW",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub webhook_allow: Vec<String>,
    /// Base URL for image links when behind a proxy (default: the Host header when it is a
    /// plain host[:port], else the address the request came in on).
    #[arg(long, env = "KILN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Drain on SIGTERM / Ctrl-C: readiness turns 503 and new jobs are refused (503 +
    /// Retry-After) at once, while the jobs already queued or running finish for up to this
    /// many seconds; only what still runs then is cancelled. A second signal cancels at once.
    #[arg(long, env = "KILN_SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    pub shutdown_grace_secs: u64,
    /// Open connections at most; more clients wait until one closes. Keep it below `ulimit -n`.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = ConnLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (from connecting, or from the first
    /// byte of a later request on the same connection).
    #[arg(long, env = "KILN_HEADER_TIMEOUT_SECS", default_value_t = ConnLimits::default().header_timeout.as_secs())]
    pub header_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait for its next request, or stall reading a response.
    #[arg(long, env = "KILN_IDLE_TIMEOUT_SECS", default_value_t = ConnLimits::default().idle_timeout.as_secs())]
    pub idle_timeout_secs: u64,
    /// Longest pause, in seconds, while a client sends a request body (408 after it).
    #[arg(long, env = "KILN_BODY_TIMEOUT_SECS", default_value_t = ConnLimits::default().body_timeout.as_secs())]
    pub body_timeout_secs: u64,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((id, path)) if !id.trim().is_empty() && !path.trim().is_empty() => {
            Ok((id.trim().to_string(), PathBuf::from(path.trim())))
        }
        _ => Err(format!("expected ID=PATH, got `{s}`")),
    }
}

/// `kiln` without a subcommand: serve with options from the environment only.
#[derive(Parser)]
struct EnvOnly {
    #[command(flatten)]
    args: ServeArgs,
}

pub fn default_args() -> ServeArgs {
    EnvOnly::parse_from(["kiln"]).args
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from creation on: a second signal that comes while
/// the first is being handled is not lost (a fresh `ctrl_c()` future only listens once polled).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Needs the runtime: call it inside a task.
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            let Self { term, int } = self;
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long finished responses get to reach their clients once the jobs are done (or cancelled).
const RESPONSE_GRACE: Duration = Duration::from_secs(10);

/// Resolves when the server should stop accepting: after a signal, once every accepted job is
/// done, or the grace period is over (then the rest is cancelled), or a second signal came.
/// Until then the listener stays open, so probes and late clients get a 503 with Retry-After
/// rather than a refused connection.
async fn drain(engine: EngineHandle, jobs: Background, grace: Duration) {
    let mut signals = Signals::new();
    signals.next().await;
    let pending = engine.stats().in_flight;
    info!(
        jobs = pending,
        grace_secs = grace.as_secs(),
        "draining: readiness is 503, new jobs are refused, accepted jobs finish"
    );
    engine.begin_drain();
    tokio::select! {
        // Async jobs: the engine's part, then their records and webhooks.
        _ = async { engine.wait_idle().await; jobs.jobs_settled().await } => {
            info!("drained: every accepted job finished");
        }
        _ = tokio::time::sleep(grace) => {
            warn!(jobs = engine.stats().in_flight, "grace period over: cancelling the jobs still queued or running");
            engine.begin_shutdown();
        }
        _ = signals.next() => {
            warn!(jobs = engine.stats().in_flight, "second signal: cancelling the jobs still queued or running");
            engine.begin_shutdown();
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let device = kiln::precision::Placements {
        devices: args
            .device
            .parse::<DeviceList>()
            .with_context(|| format!("--device {}", args.device))?,
        precision: args.precision.parse()?,
    };
    let addons = args.addons.resolve(&args.models_dir);
    let mut found = discover(&args.models_dir, &args.models, device.clone(), &addons)?;
    if found.demo && args.models.is_empty() {
        // First run: fetch the default model when the Hub is reachable (unless --offline);
        // `ensure_model` logs the loud fallback line itself when it cannot.
        let id = args.default_model.as_deref().unwrap_or("sd15");
        if id == "sd15" {
            let hub = kiln::download::HubConfig::from_env().with_offline(args.offline);
            match kiln::download::ensure_model(id, &args.models_dir, &hub) {
                Ok(kiln::download::EnsureOutcome::Downloaded(dir)) => {
                    info!(model = id, dir = %dir.display(), "downloaded the default model");
                    found = discover(&args.models_dir, &args.models, device.clone(), &addons)?;
                }
                Ok(outcome) => info!(?outcome, "default model"),
                Err(e) => warn!("{id}: download failed: {e}; continuing with what is installed"),
            }
        }
    }
    let demo_notice = found.demo.then(|| {
        format!("This is a tiny random demo model: it produces noise, not pictures. {DEMO_HELP}")
    });
    if found.demo {
        warn!("==================================================================================");
        warn!(
            "no real model weights under {}: serving the tiny DEMO models `sd15-demo` and `dalle-mini-demo` (random weights: noise images)",
            args.models_dir.display()
        );
        for line in DEMO_HELP.lines() {
            warn!("{line}");
        }
        warn!("==================================================================================");
    }
    for m in &found.specs {
        info!(model = %m.id, family = m.family.id(), source = %m.source, device = %m.device, demo = m.demo, "serving");
    }
    let engine = EngineHandle::start(
        found.specs,
        EngineConfig {
            max_queue: args.max_queue,
            preload: args.preload,
        },
    )?;
    let config = ServerConfig {
        default_model: args.default_model.clone(),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        rules: JobRules {
            limits: Limits {
                max_side: args.max_size,
                max_steps: args.max_steps,
                max_work: args.max_work,
                ..Limits::default()
            },
            loras: addons.loras.clone(),
            lora_paths: false,
            prompt_syntax: args.prompt_syntax.parse().map_err(anyhow::Error::msg)?,
        },
        embeddings_dir: addons.embeddings_dir.clone(),
        max_upload_bytes: args.max_upload_mb << 20,
        cors_origins: args.cors_origins.clone(),
        url_ttl: Duration::from_secs(args.url_ttl_secs),
        url_store_max: args.url_store_max,
        url_store_max_bytes: args.url_store_max_mib.map(|m| m << 20),
        image_store: args.image_store.clone(),
        public_url: args.public_url.clone(),
        connections: ConnLimits {
            max_connections: args.max_connections.max(1),
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(args.body_timeout_secs.max(1)),
        },
        demo_notice,
        jobs: JobsConfig {
            ttl: Duration::from_secs(args.job_ttl_secs),
            max_jobs: args.max_jobs.max(1),
            max_bytes: Some(args.jobs_max_mib << 20),
            stale: Duration::from_secs(args.job_stale_secs),
            webhook_allow: WebhookAllow::from_list(&args.webhook_allow),
        },
        ..ServerConfig::default()
    };
    let limits = config.connections.clone();
    let (app, jobs) = build_server(config, engine.clone())?;
    let addr = format!("{}:{}", args.host, args.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let result = runtime.block_on(serve(
        app,
        &addr,
        drain(engine.clone(), jobs, grace),
        // After the jobs: time for their responses to reach the clients.
        RESPONSE_GRACE,
        &limits,
    ));
    engine.shutdown();
    result?;
    info!("bye");
    Ok(())
}
