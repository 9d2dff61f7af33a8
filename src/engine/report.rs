//! What the engine reports: models and their replicas' states, each device's load, stats,
//! idleness (for the drain) and the Prometheus families (`metrics.rs`).

use std::sync::atomic::Ordering;

use super::handle::EngineHandle;
use super::metrics::Scrape;
use super::{DeviceLoad, EngineStats, ModelInfo, ModelState, ReplicaInfo};
use crate::sync::Locked;

impl EngineHandle {
    fn states(&self) -> Vec<ModelState> {
        self.inner.states.locked().clone()
    }

    /// One entry per model id. Its state sums up its replicas': ready when one is, else
    /// loading, else unloaded; failed only when every replica failed (the message names each
    /// device when there are several).
    pub fn models(&self) -> Vec<ModelInfo> {
        let states = self.states();
        let inner = &self.inner;
        inner
            .models
            .iter()
            .map(|m| {
                let of = |r: &usize| (inner.replicas[*r].device.as_str(), &states[*r]);
                let all: Vec<(&str, &ModelState)> = m.replicas.iter().map(of).collect();
                let any = |s: ModelState| all.iter().any(|(_, x)| **x == s);
                let state = if any(ModelState::Ready) {
                    ModelState::Ready
                } else if any(ModelState::Loading) {
                    ModelState::Loading
                } else if any(ModelState::Unloaded) {
                    ModelState::Unloaded
                } else {
                    let errors: Vec<String> = all
                        .iter()
                        .filter_map(|(d, s)| match s {
                            ModelState::Failed(e) if all.len() > 1 => Some(format!("{d}: {e}")),
                            ModelState::Failed(e) => Some(e.clone()),
                            _ => None,
                        })
                        .collect();
                    ModelState::Failed(errors.join("; "))
                };
                ModelInfo {
                    id: m.spec.id.clone(),
                    family: m.spec.family,
                    source: m.spec.source.clone(),
                    demo: m.spec.demo,
                    state,
                }
            })
            .collect()
    }

    pub fn model(&self, id: &str) -> Option<ModelInfo> {
        self.models().into_iter().find(|m| m.id == id)
    }

    /// Every replica: each model on each device, with its own state.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let states = self.states();
        let inner = &self.inner;
        inner
            .replicas
            .iter()
            .zip(states)
            .map(|(r, state)| ReplicaInfo {
                id: inner.models[r.model].spec.id.clone(),
                device: r.device.clone(),
                state,
            })
            .collect()
    }

    /// The jobs waiting and running on each device's worker.
    pub fn devices(&self) -> Vec<DeviceLoad> {
        self.inner
            .workers
            .iter()
            .map(|w| DeviceLoad {
                device: w.device.clone(),
                waiting: w.load.waiting.load(Ordering::Acquire),
                running: w.load.running.load(Ordering::Acquire),
            })
            .collect()
    }

    pub fn stats(&self) -> EngineStats {
        let c = &self.inner.counters;
        EngineStats {
            in_flight: self.inner.admission.in_flight.load(Ordering::SeqCst),
            capacity: self.inner.max_queue,
            completed: c.completed.load(Ordering::Acquire),
            cancelled: c.cancelled.load(Ordering::Acquire),
            failed: c.failed.load(Ordering::Acquire),
        }
    }

    /// No accepted job is queued or running: each has sent its `Done` (or was dropped by
    /// shutdown). After [`Self::begin_drain`] it stays true once true.
    pub fn is_idle(&self) -> bool {
        self.inner.admission.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Returns once [`Self::is_idle`]; with [`Self::begin_drain`] before, once every accepted
    /// job is done (wrap it in a timeout for a grace period).
    pub async fn wait_idle(&self) {
        let admission = &self.inner.admission;
        loop {
            let idle = admission.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.is_idle() {
                return;
            }
            idle.await;
        }
    }

    /// Adds the engine's metrics (see `metrics.rs` for the names) to `registry`, which must
    /// not have a prefix: the names already start with `kiln_`. Call it once per registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let inner = &self.inner;
        let scrape = Scrape {
            workers: inner
                .workers
                .iter()
                .map(|w| (w.device.clone(), w.load.clone()))
                .collect(),
            replicas: inner
                .replicas
                .iter()
                .map(|r| (inner.models[r.model].spec.id.clone(), r.device.clone()))
                .collect(),
            states: inner.states.clone(),
            capacity: inner.max_queue,
        };
        inner.metrics.register(registry, scrape);
    }
}
