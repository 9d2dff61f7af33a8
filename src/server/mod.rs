//! The OpenAI-compatible HTTP server (poem + poem-openapi). It validates requests, turns them
//! into engine jobs and awaits the results; models live in [`crate::engine`].

mod accept;
mod addons_api;
mod allow;
mod api;
mod async_jobs;
mod choices;
mod conn;
mod disconnect;
mod edit_form;
mod edit_input;
mod encode;
mod error;
mod guard;
mod health_api;
mod jobs;
mod metrics;
mod observe;
mod page;
mod respond;
mod scheduler_param;
mod schema_check;
mod store;
mod stream;
pub mod types;
mod upload;
mod usage;
mod variation;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use poem::middleware::{CatchPanic, Cors};
use poem::{Endpoint, EndpointExt, Route};
use poem_openapi::OpenApiService;

pub use accept::accept_with_backoff;
pub use addons_api::AddOnsApi;
pub use api::Api;
pub use async_jobs::api::JobsApi;
pub use async_jobs::{JobStoreError, JobsConfig, WebhookAllow};
pub use conn::ConnLimits;
pub use error::ApiError;
pub use health_api::HealthApi;
pub use store::{ImageStore, StoreError, StoreKind, StoreLimits};

use crate::engine::{EngineHandle, JobRules};
use schema_check::BodySchema;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Model used when a request names none; the first model when unset.
    pub default_model: Option<String>,
    /// Require `Authorization: Bearer <key>` on /v1 (except `GET /v1/` and image links).
    pub api_key: Option<String>,
    /// Largest generated width/height, most denoising steps and images a request may ask for,
    /// and the LoRA library requests name LoRAs from (by name only: never a path).
    pub rules: JobRules,
    /// The textual-inversion embeddings folder, for `GET /v1/textual_inversions`.
    pub embeddings_dir: Option<std::path::PathBuf>,
    /// Largest side of an uploaded image (checked before decoding).
    pub max_upload_side: u32,
    pub max_json_bytes: usize,
    pub max_upload_bytes: usize,
    /// Allowed CORS origins; empty = CORS off, `*` = any origin.
    pub cors_origins: Vec<String>,
    /// How long `response_format=url` links live, how many images (and bytes) are kept,
    /// and where (memory, or a directory replicas share).
    pub url_ttl: Duration,
    pub url_store_max: usize,
    pub url_store_max_bytes: Option<u64>,
    pub image_store: StoreKind,
    /// Base of image links (e.g. behind a proxy); default: from the request's Host header when
    /// it is a plain `host[:port]`, else the address the request came in on.
    pub public_url: Option<String>,
    /// Connection cap and header / idle / body timeouts.
    pub connections: ConnLimits,
    /// Shown in logs and `/v1/models` when demo models are served.
    pub demo_notice: Option<String>,
    /// Async jobs: how long and how many records are kept, and where webhooks may go.
    pub jobs: JobsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            default_model: None,
            api_key: None,
            rules: JobRules::default(),
            embeddings_dir: None,
            max_upload_side: 4096,
            max_json_bytes: 1 << 20,
            max_upload_bytes: 32 << 20,
            cors_origins: Vec::new(),
            url_ttl: Duration::from_secs(3600),
            url_store_max: 256,
            url_store_max_bytes: None,
            image_store: StoreKind::Memory,
            public_url: None,
            connections: ConnLimits::default(),
            demo_notice: None,
            jobs: JobsConfig::default(),
        }
    }
}

/// Shared by all handlers (poem `Data`).
pub struct AppState {
    pub engine: EngineHandle,
    pub config: ServerConfig,
    pub store: ImageStore,
    pub jobs: async_jobs::JobTable,
    pub default_model: String,
    pub demo_notice: Option<String>,
    generation_schema: BodySchema,
    job_schema: BodySchema,
    edit_schema: BodySchema,
    job_edit_schema: BodySchema,
    metrics: metrics::ServerMetrics,
}

impl AppState {
    /// `scheme://host` for image links: `--public-url`, else the Host header if it is a plain
    /// `host[:port]` (never a path, query or user info a client slipped in), else the address
    /// the request came in on.
    fn public_base(&self, req: &poem::Request) -> String {
        if let Some(u) = &self.config.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let host = req
            .headers()
            .get(poem::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| valid_host(h));
        match (host, req.local_addr().as_socket_addr()) {
            (Some(h), _) => format!("http://{h}"),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => "http://127.0.0.1".to_string(),
        }
    }
}

/// `host[:port]`: a DNS name or IPv4 address (letters, digits, `-`, `.`), or `[IPv6]`, and an
/// optional decimal port.
pub(crate) fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        // `[::1]` without a port: the last colon is inside the brackets.
        Some((host, _)) if host.contains('[') && !host.ends_with(']') => (h, None),
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let port_ok =
        port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let host_ok = match host.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        }
    };
    port_ok && host_ok
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The OpenAPI service; `openapi.json` is `service().spec()`.
pub fn service() -> OpenApiService<(Api, AddOnsApi, HealthApi, JobsApi), ()> {
    OpenApiService::new(
        (Api, AddOnsApi, HealthApi, JobsApi),
        "kiln",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "OpenAI-compatible image generation (Stable Diffusion 1.5, DALL·E Mini) served by kiln.",
    )
}

/// The spec as committed in `openapi.json` (with a trailing newline).
pub fn spec_json() -> String {
    let mut s = service().spec();
    s.push('\n');
    s
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the default model `{0}` is not among the served models ({1})")]
    UnknownDefaultModel(String, String),
    #[error("no models to serve")]
    NoModels,
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    ImageStore(#[from] StoreError),
    #[error(transparent)]
    JobStore(#[from] JobStoreError),
}

/// What the server process keeps a hand on besides the app: the async jobs, whose tasks the
/// drain waits for.
pub struct Background {
    state: Arc<AppState>,
}

impl Background {
    /// Returns once no async job's task is alive: each accepted job has its final record
    /// (and its webhook tries are over). With the engine drained, nothing new starts one.
    pub async fn jobs_settled(&self) {
        self.state.jobs.tasks.settled().await;
    }
}

/// The whole HTTP app: the API, `/openapi.json`, `/docs`, the page at `/`, middlewares.
pub fn build_app(config: ServerConfig, engine: EngineHandle) -> Result<impl Endpoint, ServerError> {
    build_server(config, engine).map(|(app, _)| app)
}

/// [`build_app`], plus the [`Background`] handle `kiln serve` drains with.
pub fn build_server(
    config: ServerConfig,
    engine: EngineHandle,
) -> Result<(impl Endpoint, Background), ServerError> {
    let ids: Vec<String> = engine.models().into_iter().map(|m| m.id).collect();
    let default_model = match &config.default_model {
        Some(d) if ids.contains(d) => d.clone(),
        Some(d) => return Err(ServerError::UnknownDefaultModel(d.clone(), ids.join(", "))),
        None => ids.first().cloned().ok_or(ServerError::NoModels)?,
    };
    let state = Arc::new(AppState {
        metrics: metrics::ServerMetrics::new(&engine),
        engine,
        store: ImageStore::open(
            &config.image_store,
            StoreLimits {
                ttl: config.url_ttl,
                max_images: config.url_store_max,
                max_bytes: config.url_store_max_bytes,
            },
        )?,
        jobs: async_jobs::JobTable::open(&config.image_store, config.jobs.clone())?,
        default_model,
        demo_notice: config.demo_notice.clone(),
        generation_schema: BodySchema::of::<types::CreateImageRequest>(),
        job_schema: BodySchema::of::<types::CreateImageJobRequest>(),
        edit_schema: BodySchema::of::<variation::CreateImageEditJsonRequest>(),
        job_edit_schema: BodySchema::of::<variation::CreateImageJobEditJsonRequest>(),
        config,
    });
    let api = service();
    let cors = (!state.config.cors_origins.is_empty()).then(|| {
        let origins = &state.config.cors_origins;
        if origins.iter().any(|o| o == "*") {
            Cors::new()
        } else {
            Cors::new().allow_origins(origins.iter().map(String::as_str))
        }
    });
    let background = Background {
        state: state.clone(),
    };
    let guard_state = state.clone();
    let observe_state = state.clone();
    let body_timeout = state.config.connections.body_timeout;
    // `/openapi.json`, `/docs` and `/v1/` answer any method, so only the operations can 405.
    let allow = Arc::new(allow::AllowTable::of::<(Api, AddOnsApi, HealthApi, JobsApi)>());
    let app = Route::new()
        .at("/openapi.json", api.spec_endpoint())
        .nest("/docs", api.swagger_ui())
        // The spec normalises `/v1/` to `/v1`; the Prem app calls `/v1/` literally.
        .at(
            "/v1/",
            poem::endpoint::make_sync(|_| poem::web::Json(serde_json::json!({"status": true}))),
        )
        .nest("/", api)
        // The "try it" page: a plain route like `/docs`, not in the spec. Not `.at("/")`:
        // poem's router gives `/` to the API nested at `/` (its catch-all wins on an empty rest).
        .around(|ep, req| async move { page::or_route(&*ep, req).await })
        .with(CatchPanic::new().with_handler(error::panic_response))
        .around(move |ep, req| {
            let allow = allow.clone();
            async move { allow::add_allow(&*ep, req, &allow).await }
        })
        .around(move |ep, req| {
            let state = guard_state.clone();
            async move { guard::guard(&*ep, req, state).await }
        })
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .data(state)
        .around(|ep, req| async move { error::finalize(&*ep, req).await })
        .around(move |ep, req| {
            let state = observe_state.clone();
            async move { observe::observe(&*ep, req, state).await }
        })
        .around(move |ep, req| async move { conn::track(&*ep, req, body_timeout).await });
    // Boxed: the layers' nested types are laid out once, here, not in every crate that serves.
    Ok((app.boxed(), background))
}

/// Serves until `shutdown` resolves, then stops accepting, lets running requests finish for up
/// to `grace`, and returns. `limits` caps and times out connections (the body timeout is
/// applied by [`build_app`] from [`ServerConfig::connections`]).
pub async fn serve(
    app: impl Endpoint + 'static,
    addr: &str,
    shutdown: impl std::future::Future<Output = ()> + Send,
    grace: Duration,
    limits: &ConnLimits,
) -> Result<(), ServerError> {
    use poem::listener::{Acceptor, Listener, TcpListener};
    let acceptor = TcpListener::bind(addr)
        .into_acceptor()
        .await
        .map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let acceptor = disconnect::WatchedAcceptor::new(acceptor, limits.clone());
    for a in acceptor
        .local_addr()
        .iter()
        .filter_map(|a| a.as_socket_addr().copied())
    {
        tracing::info!("listening on http://{a} (docs: http://{a}/docs)");
    }
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(grace))
        .await?;
    Ok(())
}
