//! The engine's Prometheus metrics (crate `prometheus-client`), registered into the server's
//! registry by [`super::EngineHandle::register_metrics`]:
//!
//! - `kiln_queue_waiting{device}`, `kiln_queue_running{device}`, `kiln_queue_capacity`,
//!   `kiln_model_state{model,device,state}` and `kiln_device_memory_bytes{device,kind}` are
//!   read at scrape time from the atomics and states the engine keeps anyway ([`Scrape`]), so
//!   the job path does nothing for them;
//! - `kiln_jobs_total{model,device,outcome}`, `kiln_images_generated_total{model,device}`,
//!   `kiln_images_withheld_total{model,device}` (flagged by the safety checker),
//!   `kiln_step_duration_seconds{model,device}` and `kiln_model_load_duration_seconds{model,device}`
//!   are counted by the workers through handles taken once per replica ([`ReplicaMetrics`]):
//!   an atomic add per event, no lookup or lock.
//!
//! Every series of a replica exists from the start (at 0), so `rate()` sees its first job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ModelState;
use super::queue::WorkerLoad;
use crate::sync::Locked;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    model: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    model: String,
    device: String,
    outcome: &'static str,
}

/// One denoising step (SD) or image token (DALL·E), in seconds. Buckets double from 5 ms to
/// 164 s: the tiny test models step in a few ms, SD 1.5 at 512² on a GPU in tens of ms, on a
/// CPU in seconds (its 512² VAE decode alone takes 20 s on 2 cores, see README), and a 1024²
/// CPU step passes a minute; doubling keeps 16 buckets for that range (the `+Inf` one above).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The metric families the workers count into.
pub(crate) struct EngineMetrics {
    jobs: Family<JobLabels, Counter>,
    images: Family<ReplicaLabels, Counter>,
    withheld: Family<ReplicaLabels, Counter>,
    steps: Family<ReplicaLabels, Histogram, fn() -> Histogram>,
    load_seconds: Family<ReplicaLabels, Gauge<f64, AtomicU64>>,
}

impl EngineMetrics {
    pub fn new() -> Self {
        Self {
            jobs: Family::default(),
            images: Family::default(),
            withheld: Family::default(),
            steps: Family::new_with_constructor(step_histogram),
            load_seconds: Family::default(),
        }
    }

    /// The handles of the replica of `model` on `device` (creating its series at 0).
    pub fn replica(&self, model: &str, device: &str) -> ReplicaMetrics {
        let labels = ReplicaLabels {
            model: model.into(),
            device: device.into(),
        };
        let job = |outcome| {
            self.jobs.get_or_create_owned(&JobLabels {
                model: model.into(),
                device: device.into(),
                outcome,
            })
        };
        ReplicaMetrics {
            completed: job("completed"),
            cancelled: job("cancelled"),
            failed: job("failed"),
            images: self.images.get_or_create_owned(&labels),
            withheld: self.withheld.get_or_create_owned(&labels),
            steps: self.steps.get_or_create_owned(&labels),
            load_seconds: self.load_seconds.get_or_create_owned(&labels),
        }
    }

    pub fn register(&self, registry: &mut Registry, scrape: Scrape) {
        // prometheus-client adds `_total` to counters' names.
        registry.register(
            "kiln_jobs",
            "Jobs finished, by outcome (completed, cancelled, failed)",
            self.jobs.clone(),
        );
        registry.register(
            "kiln_images_generated",
            "Images generated",
            self.images.clone(),
        );
        registry.register(
            "kiln_images_withheld",
            "Images the safety checker flagged and kiln did not return",
            self.withheld.clone(),
        );
        registry.register(
            "kiln_step_duration_seconds",
            "Time of one denoising step (SD) or image token (DALL·E); a job's first step includes its prompt encoding",
            self.steps.clone(),
        );
        registry.register(
            "kiln_model_load_duration_seconds",
            "Time the last successful load of the model took on the device",
            self.load_seconds.clone(),
        );
        registry.register_collector(Box::new(scrape));
    }
}

/// What one worker counts for one replica; clones of the families' series.
#[derive(Clone)]
pub(crate) struct ReplicaMetrics {
    pub completed: Counter,
    pub cancelled: Counter,
    pub failed: Counter,
    pub images: Counter,
    pub withheld: Counter,
    pub steps: Histogram,
    pub load_seconds: Gauge<f64, AtomicU64>,
}

/// The gauges computed at scrape time from the engine's own state.
#[derive(Debug)]
pub(crate) struct Scrape {
    /// (device label, its worker's load), one per worker.
    pub workers: Vec<(String, Arc<WorkerLoad>)>,
    /// (model id, device label), one per replica, in the order of `states`.
    pub replicas: Vec<(String, String)>,
    pub states: Arc<Mutex<Vec<ModelState>>>,
    pub capacity: usize,
}

fn gauge<'a, S: EncodeLabelSet + 'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_device = |f: fn(&WorkerLoad) -> usize| {
            self.workers
                .iter()
                .map(move |(device, load)| ([("device", device.as_str())], f(load) as i64))
        };
        gauge(
            &mut encoder,
            "kiln_queue_waiting",
            "Jobs accepted and not started (the autoscaling metric: sum(kiln_queue_waiting))",
            per_device(|l| l.waiting.load(Ordering::Acquire)),
        )?;
        gauge(
            &mut encoder,
            "kiln_queue_running",
            "Jobs running (0 or 1 per device)",
            per_device(|l| l.running.load(Ordering::Acquire)),
        )?;
        let capacity = self.capacity as i64;
        let metric = encoder.encode_descriptor(
            "kiln_queue_capacity",
            "Jobs queued or running at once over all devices (--max-queue); more are refused",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(capacity).encode(metric)?;
        let states = self.states.locked().clone();
        const STATES: [&str; 4] = ["unloaded", "loading", "ready", "failed"];
        let series = self.replicas.iter().zip(&states).flat_map(|((m, d), s)| {
            STATES.map(|state| {
                let labels = [
                    ("model", m.as_str()),
                    ("device", d.as_str()),
                    ("state", state),
                ];
                (labels, i64::from(s.label() == state))
            })
        });
        gauge(
            &mut encoder,
            "kiln_model_state",
            "1 for the state each model's replica on each device is in (unloaded, loading, ready, failed)",
            series,
        )?;
        // Only the GPU backends report memory: on the CPU the family stays out of the scrape.
        let memory: Vec<_> = self
            .workers
            .iter()
            .flat_map(|(device, load)| {
                let kinds = [
                    ("in_use", &load.memory_in_use),
                    ("reserved", &load.memory_reserved),
                ];
                kinds.into_iter().filter_map(move |(kind, v)| {
                    let v = v.load(Ordering::Acquire);
                    (v != u64::MAX).then(|| {
                        let labels = [("device", device.as_str()), ("kind", kind)];
                        (labels, i64::try_from(v).unwrap_or(i64::MAX))
                    })
                })
            })
            .collect();
        if memory.is_empty() {
            return Ok(());
        }
        gauge(
            &mut encoder,
            "kiln_device_memory_bytes",
            "GPU memory of each worker's pools as the backend counts them after its last job or load: in_use (live tensors), reserved (taken from the device)",
            memory,
        )?;
        Ok(())
    }
}
