//! The engine on several devices (`--device cpu,cpu`): jobs on two workers at once, cancelling
//! one, a replica that fails to load while the other serves, least-loaded dispatch, drain, the
//! Prometheus metrics and the request's span on the worker's log lines. The pipelines are fakes
//! held at a gate the test opens, so overlap is seen from inside the pipelines, not timed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use kiln::backend::DeviceList;
use kiln::engine::{
    EngineConfig, EngineError, EngineHandle, Family, GeneratedImage, ImageJob, ImagePipeline,
    JobEvent, JobTicket, ModelState, Progress, ServedModel, TokenUsage,
};

/// Holds every gated pipeline's steps until opened; records who ran what.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    /// Jobs inside `generate` now, and the most at once.
    inside: AtomicUsize,
    peak: AtomicUsize,
    /// (device, prompt) of each job, in the order they entered.
    log: Mutex<Vec<(String, String)>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::Release);
    }

    fn entered(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn ran_on(&self, prompt: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, p)| p == prompt)
            .map(|(d, _)| d.clone())
            .collect()
    }
}

struct Gated {
    device: String,
    gate: Arc<Gate>,
}

impl ImagePipeline for Gated {
    fn family(&self) -> Family {
        Family::Sd15
    }

    fn usage(&self, _job: &ImageJob) -> Result<TokenUsage, EngineError> {
        Ok(TokenUsage::default())
    }

    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        let g = &self.gate;
        g.log
            .lock()
            .unwrap()
            .push((self.device.clone(), job.prompt.clone()));
        let now = g.inside.fetch_add(1, Ordering::AcqRel) + 1;
        g.peak.fetch_max(now, Ordering::AcqRel);
        let total = job.steps.unwrap_or(2);
        let mut result = Ok(());
        'steps: for step in 1..=total {
            loop {
                let p = Progress {
                    step,
                    total,
                    preview: None,
                    decoding: false,
                };
                if !progress(p) {
                    result = Err(EngineError::Cancelled);
                    break 'steps;
                }
                if g.open.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        g.inside.fetch_sub(1, Ordering::AcqRel);
        result?;
        let image = RgbImage::new(job.width, job.height);
        Ok((0..job.n as u64)
            .map(|k| GeneratedImage::new(image.clone(), job.seed + k))
            .collect())
    }
}

fn gated(id: &str, device: &str, gate: &Arc<Gate>) -> ServedModel {
    let (gate, label) = (gate.clone(), device.to_string());
    ServedModel {
        id: id.into(),
        family: Family::Sd15,
        device: device.into(),
        source: "gated fake (tests)".into(),
        demo: false,
        loader: Arc::new(move || {
            let device = label.clone();
            let gate = gate.clone();
            Ok(Box::new(Gated { device, gate }) as Box<dyn ImagePipeline>)
        }),
    }
}

fn unloadable(id: &str, device: &str) -> ServedModel {
    let message = format!("no weights on {device}");
    ServedModel {
        id: id.into(),
        family: Family::Sd15,
        device: device.into(),
        source: "broken fake (tests)".into(),
        demo: false,
        loader: Arc::new(move || Err(EngineError::Failed(message.clone()))),
    }
}

fn start(specs: Vec<ServedModel>, max_queue: usize) -> EngineHandle {
    let config = EngineConfig {
        max_queue,
        preload: false,
    };
    EngineHandle::start(specs, config).expect("engine starts")
}

fn job(prompt: &str) -> ImageJob {
    ImageJob::new(prompt, 8, 8, 1)
}

/// Polls `cond`; the deadline only turns a hang (e.g. jobs that never overlap) into a failure.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn started(t: &mut JobTicket) {
    match t.next().await {
        Some(JobEvent::Started) => {}
        other => panic!("expected Started, got {other:?}"),
    }
}

#[test]
fn device_lists_parse_with_unique_labels() {
    let list: DeviceList = "cpu,cpu".parse().expect("cpu,cpu parses");
    let labels: Vec<&str> = list.iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["cpu#0", "cpu#1"]);
    assert!("cpu,,cpu".parse::<DeviceList>().is_err());
}

#[tokio::test]
async fn two_devices_run_two_jobs_at_once() {
    let gate = Arc::new(Gate::default());
    let e = start(
        vec![gated("m", "cpu#0", &gate), gated("m", "cpu#1", &gate)],
        4,
    );
    let mut a = e.submit("m", job("a")).expect("a");
    let mut b = e.submit("m", job("b")).expect("b");
    // Both inside their pipelines while the gate is shut: one worker could hold only one.
    until("both jobs inside a pipeline", || gate.entered() == 2).await;
    started(&mut a).await;
    started(&mut b).await;
    assert_eq!(gate.peak.load(Ordering::Acquire), 2);
    gate.open();
    assert!(a.wait().await.is_ok());
    assert!(b.wait().await.is_ok());
    let mut devices = [gate.ran_on("a"), gate.ran_on("b")].concat();
    devices.sort();
    assert_eq!(devices, ["cpu#0", "cpu#1"]);
    e.shutdown();
}

#[tokio::test]
async fn dropping_a_ticket_cancels_only_its_job() {
    let gate = Arc::new(Gate::default());
    let e = start(
        vec![gated("m", "cpu#0", &gate), gated("m", "cpu#1", &gate)],
        4,
    );
    let a = e.submit("m", job("a")).expect("a");
    let b = e.submit("m", job("b")).expect("b");
    until("both jobs running", || gate.entered() == 2).await;
    // Queued behind `a`: loads are 1 and 1, the first device wins the tie.
    let c = e.submit("m", job("c")).expect("c");
    assert_eq!(e.devices()[0].waiting, 1);
    drop(a);
    drop(c);
    until("a cancelled", || e.stats().cancelled == 2).await;
    assert_eq!(gate.inside.load(Ordering::Acquire), 1, "b still runs");
    gate.open();
    assert!(b.wait().await.is_ok());
    e.wait_idle().await;
    let s = e.stats();
    assert_eq!((s.completed, s.cancelled, s.failed), (1, 2, 0));
    assert!(gate.ran_on("c").is_empty(), "c never started");
    assert!(e.devices().iter().all(|d| d.waiting + d.running == 0));
    e.shutdown();
}

#[tokio::test]
async fn a_replica_that_fails_to_load_hands_its_jobs_to_the_other() {
    let gate = Arc::new(Gate::default());
    gate.open();
    let e = start(
        vec![unloadable("m", "cpu#0"), gated("m", "cpu#1", &gate)],
        8,
    );
    // The first job goes to cpu#0 (tie), fails to load there and moves to cpu#1.
    let tickets: Vec<_> = (0..4)
        .map(|i| e.submit("m", job(&format!("j{i}"))).expect("submit"))
        .collect();
    for t in tickets {
        let out = t.wait().await.expect("every job is served");
        assert_eq!(out.images.len(), 1);
    }
    assert!(gate.ran_on("j0") == ["cpu#1"]);
    let replicas = e.replicas();
    assert!(matches!(&replicas[0].state, ModelState::Failed(m) if m.contains("no weights")));
    assert_eq!(replicas[1].state, ModelState::Ready);
    assert_eq!(e.model("m").expect("m").state, ModelState::Ready);
    let s = e.stats();
    assert_eq!((s.completed, s.failed), (4, 0));
    e.shutdown();

    // With every replica failed, the client gets the load error.
    let e = start(vec![unloadable("x", "cpu#0"), unloadable("x", "cpu#1")], 8);
    let err = e.submit("x", job("x")).expect("submit").wait().await;
    assert!(matches!(err, Err(EngineError::Load { .. })), "{err:?}");
    let ModelState::Failed(message) = e.model("x").expect("x").state else {
        panic!("x is failed");
    };
    assert!(
        message.contains("cpu#0: no weights on cpu#0") && message.contains("cpu#1:"),
        "{message}"
    );
    e.shutdown();
}

#[tokio::test]
async fn jobs_go_to_the_least_loaded_device() {
    let gate = Arc::new(Gate::default());
    let specs = vec![
        gated("only0", "cpu#0", &gate),
        gated("m", "cpu#0", &gate),
        gated("m", "cpu#1", &gate),
    ];
    let e = start(specs, 8);
    let busy: Vec<_> = (0..3)
        .map(|i| e.submit("only0", job(&format!("busy{i}"))).expect("busy"))
        .collect();
    let m1 = e.submit("m", job("m1")).expect("m1");
    let m2 = e.submit("m", job("m2")).expect("m2");
    let load: Vec<usize> = e.devices().iter().map(|d| d.waiting + d.running).collect();
    assert_eq!(load, [3, 2]);
    gate.open();
    for t in busy.into_iter().chain([m1, m2]) {
        assert!(t.wait().await.is_ok());
    }
    assert_eq!(gate.ran_on("m1"), ["cpu#1"]);
    assert_eq!(gate.ran_on("m2"), ["cpu#1"]);
    e.shutdown();
}

#[tokio::test]
async fn drain_finishes_accepted_jobs_and_refuses_new_ones() {
    let gate = Arc::new(Gate::default());
    let e = start(vec![gated("m", "cpu", &gate)], 8);
    let tickets: Vec<_> = (0..3)
        .map(|i| e.submit("m", job(&format!("j{i}"))).expect("submit"))
        .collect();
    until("the first job running", || gate.entered() == 1).await;
    e.begin_drain();
    assert!(matches!(
        e.submit("m", job("late")),
        Err(EngineError::ShuttingDown)
    ));
    assert!(!e.is_idle());
    gate.open();
    for t in tickets {
        assert!(t.wait().await.is_ok(), "accepted jobs finish");
    }
    tokio::time::timeout(Duration::from_secs(30), e.wait_idle())
        .await
        .expect("idle once the jobs are done");
    assert!(e.is_idle());
    assert_eq!(e.stats().completed, 3);
    assert!(gate.ran_on("late").is_empty());
    e.shutdown();
}

/// The OpenMetrics text of `e`'s metrics.
fn scrape(e: &EngineHandle) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    e.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    text
}

fn has(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
}

#[tokio::test]
async fn metrics_count_queue_jobs_images_and_steps() {
    let gate = Arc::new(Gate::default());
    let e = start(
        vec![gated("m", "cpu#0", &gate), gated("m", "cpu#1", &gate)],
        5,
    );
    let a = e.submit("m", job("a")).expect("a");
    let b = e.submit("m", job("b")).expect("b");
    let c = e.submit("m", job("c")).expect("c");
    until("two jobs running", || gate.entered() == 2).await;
    let text = scrape(&e);
    has(&text, "kiln_queue_capacity 5");
    has(&text, r#"kiln_queue_running{device="cpu#0"} 1"#);
    has(&text, r#"kiln_queue_running{device="cpu#1"} 1"#);
    has(&text, r#"kiln_queue_waiting{device="cpu#0"} 1"#);
    has(&text, r#"kiln_queue_waiting{device="cpu#1"} 0"#);
    has(
        &text,
        r#"kiln_model_state{model="m",device="cpu#0",state="ready"} 1"#,
    );
    has(
        &text,
        r#"kiln_model_state{model="m",device="cpu#0",state="loading"} 0"#,
    );
    gate.open();
    let mut two = job("d");
    two.n = 2;
    two.steps = Some(3);
    let d = e.submit("m", two).expect("d");
    for t in [a, b, c, d] {
        assert!(t.wait().await.is_ok());
    }
    e.wait_idle().await;
    let text = scrape(&e);
    has(&text, r#"kiln_queue_waiting{device="cpu#0"} 0"#);
    has(&text, r#"kiln_queue_running{device="cpu#0"} 0"#);
    // a and c ran on cpu#0, b on cpu#1; d went to the first idle one, cpu#0 (tie) or cpu#1.
    let ran = |device: &str| {
        gate.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == device)
            .count()
    };
    let images = |device: &str| ran(device) + if gate.ran_on("d") == [device] { 1 } else { 0 };
    for device in ["cpu#0", "cpu#1"] {
        has(
            &text,
            &format!(
                r#"kiln_jobs_total{{model="m",device="{device}",outcome="completed"}} {}"#,
                ran(device)
            ),
        );
        has(
            &text,
            &format!(
                r#"kiln_images_generated_total{{model="m",device="{device}"}} {}"#,
                images(device)
            ),
        );
        has(
            &text,
            &format!(r#"kiln_jobs_total{{model="m",device="{device}",outcome="failed"}} 0"#),
        );
    }
    let steps: u64 = text
        .lines()
        .filter(|l| l.starts_with("kiln_step_duration_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(steps >= 2 * 3 + 3, "steps counted: {steps}\n{text}");
    assert!(text.contains("# TYPE kiln_model_load_duration_seconds gauge"));
    assert!(
        !text.contains("kiln_device_memory_bytes"),
        "the CPU reports no device memory"
    );
    e.shutdown();
}

/// Log lines go to a buffer the test reads.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn worker_log_lines_carry_the_submitters_span() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The only test here that sets it; the workers log from their own threads.
    tracing::subscriber::set_global_default(subscriber).expect("no subscriber yet");
    let gate = Arc::new(Gate::default());
    gate.open();
    let e = start(vec![gated("m", "cpu#0", &gate)], 4);
    let ticket = {
        let span = tracing::info_span!("request", request_id = "req-42");
        let _entered = span.enter();
        e.submit("m", job("x")).expect("submit")
    };
    assert!(ticket.wait().await.is_ok());
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("job finished"))
        .unwrap_or_else(|| panic!("no `job finished` line in:\n{text}"));
    assert!(
        line.contains("request_id=\"req-42\"") && line.contains("device=cpu#0"),
        "{line}"
    );
    e.shutdown();
}

#[tokio::test]
async fn queue_position_counts_the_jobs_ahead_on_the_same_device() {
    let gate = Arc::new(Gate::default());
    let e = start(vec![gated("m", "cpu#0", &gate)], 8);
    let mut a = e.submit("m", job("a")).expect("a");
    started(&mut a).await;
    let (b, c, d) = (
        e.submit("m", job("b")).expect("b"),
        e.submit("m", job("c")).expect("c"),
        e.submit("m", job("d")).expect("d"),
    );
    until("a inside", || gate.entered() == 1).await;
    // The running job has no place; the waiting ones count those ahead of them.
    assert_eq!(a.control().queue_position(), None);
    assert_eq!(b.control().queue_position(), Some(0));
    assert_eq!(c.control().queue_position(), Some(1));
    assert_eq!(d.control().queue_position(), Some(2));
    // Cancelling through a control (the ticket's owner keeps it) drops c unstarted.
    c.control().cancel();
    let (bc, dc) = (b.control(), d.control());
    gate.open();
    assert!(a.wait().await.is_ok());
    assert!(b.wait().await.is_ok());
    assert!(matches!(c.wait().await, Err(EngineError::Cancelled)));
    assert!(d.wait().await.is_ok());
    assert_eq!(bc.queue_position(), None);
    assert_eq!(dc.queue_position(), None);
    assert_eq!(gate.ran_on("c"), Vec::<String>::new());
    e.shutdown();
}
