//! `GET /metrics`: the Prometheus text format (crate `prometheus-client`). The server's own
//! families live here; the engine registers its queue, job, step and model families itself
//! (`EngineHandle::register_metrics`). Recording is a hash lookup and an atomic add per
//! request; scrape-time figures (readiness, drain, stored images, memory) are read when scraped.

use std::sync::atomic::AtomicU64;

use poem::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::AppState;
use crate::engine::EngineHandle;

/// The endpoints requests are counted by: the route, never the raw path (image ids and model
/// names a client makes up would grow the label set without bound).
const ENDPOINTS: &[&str] = &[
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/files/{id}",
    "/v1/images/jobs/generations",
    "/v1/images/jobs/edits",
    "/v1/images/jobs",
    "/v1/images/jobs/{id}",
    "/v1/models",
    "/v1/models/{model}",
    "/v1/loras",
    "/v1/textual_inversions",
    "/v1",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/",
];

/// The route label of `path`; `other` for anything unrouted.
pub fn endpoint_label(path: &str) -> &'static str {
    let path = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    if let Some(exact) = ENDPOINTS.iter().find(|e| **e == path) {
        return exact;
    }
    if path.starts_with("/v1/images/files/") {
        "/v1/images/files/{id}"
    } else if path.starts_with("/v1/images/jobs/") {
        "/v1/images/jobs/{id}"
    } else if path.starts_with("/v1/models/") {
        "/v1/models/{model}"
    } else if path.starts_with("/docs/") {
        "/docs"
    } else {
        "other"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    endpoint: &'static str,
    model: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latency buckets: 5 ms … ~5.5 min (×2 each). Health checks and image links answer in
/// milliseconds; an SD 1.5 request takes seconds on a GPU and minutes on a CPU.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Histograms<DurationLabels>,
    ready: Gauge,
    draining: Gauge,
    stored_images: Gauge,
    resident_bytes: Gauge<u64, AtomicU64>,
}

impl ServerMetrics {
    pub fn new(engine: &EngineHandle) -> Self {
        // No prefix: the engine's families (`register_metrics`) carry `kiln_` in their names.
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Histograms<DurationLabels> =
            Family::new_with_constructor(request_histogram as fn() -> Histogram);
        let (ready, draining, stored_images) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        let resident_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "kiln_http_requests",
            "HTTP requests answered, by endpoint, served model (empty when none) and status",
            requests.clone(),
        );
        registry.register(
            "kiln_http_request_duration_seconds",
            "Time from a request's arrival to its response headers (for event streams: to the stream's start)",
            durations.clone(),
        );
        registry.register(
            "kiln_ready",
            "1 when /health/ready answers 200 (models loaded, not draining)",
            ready.clone(),
        );
        registry.register(
            "kiln_draining",
            "1 from SIGTERM/SIGINT until exit: no new jobs, the accepted ones finish",
            draining.clone(),
        );
        registry.register(
            "kiln_image_store_images",
            "Images kept for response_format=url links (a shared directory: as counted at this replica's last write or sweep)",
            stored_images.clone(),
        );
        registry.register(
            "kiln_process_resident_memory_bytes",
            "Resident memory of this process (Linux)",
            resident_bytes.clone(),
        );
        registry.register(
            "kiln_build",
            "The kiln version and the backends compiled in",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("backends", crate::backend::compiled_backends().join(",")),
            ]),
        );
        engine.register_metrics(&mut registry);
        Self {
            registry,
            requests,
            durations,
            ready,
            draining,
            stored_images,
            resident_bytes,
        }
    }

    pub fn observe_request(
        &self,
        endpoint: &'static str,
        model: &str,
        status: StatusCode,
        secs: f64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                model: model.to_string(),
                status: status.as_u16().to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&DurationLabels {
                endpoint,
                model: model.to_string(),
            })
            .observe(secs);
    }
}

/// Resident set size from `/proc/self/status` (`VmRSS: N kB`); `None` off Linux.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The scrape: sets the read-at-scrape figures, then encodes every family.
pub fn render(state: &AppState) -> Result<String, std::fmt::Error> {
    let m = &state.metrics;
    m.ready.set(i64::from(
        super::health_api::readiness(state, false).is_ok(),
    ));
    m.draining.set(i64::from(state.engine.is_draining()));
    m.stored_images.set(state.store.len() as i64);
    if let Some(rss) = resident_bytes() {
        m.resident_bytes.set(rss);
    }
    let mut out = String::with_capacity(16 << 10);
    encode(&mut out, &m.registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_are_bounded() {
        assert_eq!(
            endpoint_label("/v1/images/generations"),
            "/v1/images/generations"
        );
        assert_eq!(
            endpoint_label("/v1/images/generations/"),
            "/v1/images/generations"
        );
        assert_eq!(
            endpoint_label("/v1/images/files/abc.png"),
            "/v1/images/files/{id}"
        );
        assert_eq!(endpoint_label("/v1/models/sd15-demo"), "/v1/models/{model}");
        assert_eq!(endpoint_label("/v1/images/jobs"), "/v1/images/jobs");
        assert_eq!(
            endpoint_label("/v1/images/jobs/edits"),
            "/v1/images/jobs/edits"
        );
        assert_eq!(
            endpoint_label("/v1/images/jobs/job_0a"),
            "/v1/images/jobs/{id}"
        );
        assert_eq!(endpoint_label("/v1/"), "/v1");
        assert_eq!(endpoint_label("/docs/index.css"), "/docs");
        assert_eq!(endpoint_label("/"), "/");
        assert_eq!(endpoint_label("/wp-admin/x.php"), "other");
        assert_eq!(endpoint_label("/v1/images/generationsX"), "other");
    }
}
