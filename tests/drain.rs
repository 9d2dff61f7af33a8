//! Graceful shutdown of a real `kiln serve` (demo models): on SIGTERM readiness turns 503 and
//! new jobs are refused with Retry-After while the accepted ones finish and reach their
//! clients, then the process exits 0; past `--shutdown-grace-secs`, or on a second signal, the
//! rest is cancelled. Also: `--log-format json|text` lines of a request carry its id.
#![cfg(unix)]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

mod process_common;
use process_common::{BOUND, Server, start, start_logged};

impl Server {
    /// Jobs waiting plus running, from /metrics.
    fn queue_depth(&self) -> u64 {
        let text = ureq::get(&format!("{}/metrics", self.base))
            .call()
            .expect("/metrics")
            .into_string()
            .expect("text");
        text.lines()
            .filter(|l| {
                l.starts_with("kiln_queue_waiting{") || l.starts_with("kiln_queue_running{")
            })
            .map(|l| {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("a count")
            })
            .sum()
    }

    fn wait_depth(&self, n: u64) {
        let t0 = Instant::now();
        while self.queue_depth() != n {
            assert!(t0.elapsed() < BOUND, "queue never reached {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a request got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    connection: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn code(&self) -> Value {
        self.json()["error"]["code"].clone()
    }
}

fn answer(res: Result<ureq::Response, ureq::Error>) -> Result<Answer, ureq::Transport> {
    let r = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t),
    };
    Ok(Answer {
        status: r.status(),
        retry_after: r.header("retry-after").map(str::to_string),
        connection: r.header("connection").map(str::to_string),
        body: r.into_string().expect("a body"),
    })
}

fn get(base: &str, path: &str) -> Result<Answer, ureq::Transport> {
    answer(ureq::get(&format!("{base}{path}")).timeout(BOUND).call())
}

/// A demo SD generation of `steps` steps at `side`².
fn generate(
    base: &str,
    steps: u32,
    side: u32,
    id: Option<&str>,
) -> Result<Answer, ureq::Transport> {
    let body = json!({"prompt": "a red cube", "size": format!("{side}x{side}"),
                      "num_inference_steps": steps, "seed": 1});
    let mut req = ureq::post(&format!("{base}/v1/images/generations"))
        .timeout(BOUND)
        .set("content-type", "application/json");
    if let Some(id) = id {
        req = req.set("X-Request-Id", id);
    }
    answer(req.send_string(&body.to_string()))
}

fn spawn_generate(
    base: &str,
    steps: u32,
    side: u32,
) -> JoinHandle<Result<Answer, ureq::Transport>> {
    let base = base.to_string();
    std::thread::spawn(move || generate(&base, steps, side, None))
}

/// Polls `path` until it answers `status` (the signal is handled asynchronously).
fn until_status(base: &str, path: &str, status: u16) -> Answer {
    let t0 = Instant::now();
    loop {
        match get(base, path) {
            Ok(a) if a.status == status => return a,
            Ok(_) | Err(_) if t0.elapsed() < Duration::from_secs(10) => {}
            other => panic!("{path} never answered {status}: last {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_image(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.body);
    let b64 = a.json()["data"][0]["b64_json"]
        .as_str()
        .expect("b64_json")
        .to_string();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    image::load_from_memory(&bytes).expect("a decodable image");
}

#[test]
fn sigterm_lets_accepted_jobs_finish_then_exits_0() {
    let mut s = start(&["--max-queue", "8"]);
    // Warm up: the first job loads the demo model.
    assert_image(&generate(&s.base, 2, 64, None).expect("warm-up"));
    // 4 jobs of 150 steps at 64² run one after another on the one worker: 1.4 s each alone on
    // 2 cores (20 steps take 0.12 s: too short to see all 4 in the queue), ~5.5 s in all.
    let clients: Vec<_> = (0..4).map(|_| spawn_generate(&s.base, 150, 64)).collect();
    s.wait_depth(4);
    s.signal("TERM");

    let ready = until_status(&s.base, "/health/ready", 503);
    assert_eq!(ready.code(), "draining", "{}", ready.body);
    assert!(ready.retry_after.is_some(), "Retry-After on /health/ready");
    let live = get(&s.base, "/health/live").expect("the listener stays open while draining");
    assert_eq!(live.status, 200);
    assert_eq!(
        live.connection.as_deref(),
        Some("close"),
        "draining asks clients to reconnect elsewhere"
    );
    let late = generate(&s.base, 2, 64, None).expect("the listener stays open while draining");
    assert_eq!(late.status, 503, "{}", late.body);
    assert_eq!(late.code(), "shutting_down");
    assert!(late.retry_after.is_some(), "Retry-After on a refused job");

    for (i, c) in clients.into_iter().enumerate() {
        let a = c
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("job {i} lost in the drain: {e}"));
        assert_image(&a);
    }
    let status = s.exit(BOUND);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn past_the_grace_period_the_rest_is_cancelled() {
    let mut s = start(&["--shutdown-grace-secs", "1"]);
    // 150 steps at 256² run 11.6 s alone on 2 cores: far past the 1 s grace.
    let client = spawn_generate(&s.base, 150, 256);
    s.wait_depth(1);
    s.signal("TERM");
    let status = s.exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status:?}");
    match client.join().expect("client thread") {
        Ok(a) => {
            assert_eq!(a.status, 503, "the job should be cut off: {}", a.body);
            assert_eq!(a.code(), "shutting_down");
        }
        // The response may be cut with the connection; the client is not left hanging.
        Err(e) => eprintln!("the cancelled job's connection ended: {e}"),
    }
}

#[test]
fn a_second_signal_cancels_at_once() {
    // The default grace is 60 s; the second signal must not wait for it.
    let mut s = start(&[]);
    let client = spawn_generate(&s.base, 150, 256);
    s.wait_depth(1);
    s.signal("TERM");
    until_status(&s.base, "/health/ready", 503);
    // At once: the signal listeners exist from the first signal on, so one that comes while
    // the drain begins is not lost.
    s.signal("INT");
    let status = s.exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status:?}");
    if let Ok(a) = client.join().expect("client thread") {
        assert_eq!(a.status, 503, "cancelled, not finished: {}", a.body);
        assert_eq!(a.code(), "shutting_down");
    }
}

/// Serves one request with id `test-req-42`, stops, and returns the log.
fn log_of_one_request(format: &str) -> String {
    let mut s = start_logged(&[], format);
    let a = generate(&s.base, 2, 64, Some("test-req-42")).expect("generation");
    assert_image(&a);
    s.signal("TERM");
    let status = s.exit(BOUND);
    assert_eq!(status.code(), Some(0), "{status:?}");
    s.log()
}

#[test]
fn json_log_lines_carry_the_request_id() {
    let log = log_of_one_request("json");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    // The probes polled at start are requests too (with ids of their own): pick the generation.
    let generation = |v: &&Value| v.to_string().contains("/v1/images/generations");
    let done: Vec<&Value> = lines
        .iter()
        .filter(|v| message(v) == "request done")
        .filter(generation)
        .collect();
    assert_eq!(
        done.len(),
        1,
        "one access log line for the generation in:\n{log}"
    );
    assert_eq!(done[0]["span"]["id"], "test-req-42", "{}", done[0]);
    assert_eq!(done[0]["fields"]["status"], 200, "{}", done[0]);
    let job: Vec<&Value> = lines
        .iter()
        .filter(|v| message(v) == "job finished")
        .collect();
    assert_eq!(job.len(), 1, "one `job finished` line in:\n{log}");
    assert!(
        job[0].to_string().contains("\"test-req-42\""),
        "the worker's line of the request lacks its id: {}",
        job[0]
    );
    assert!(
        lines.iter().any(|v| message(v) == "bye"),
        "a clean exit is logged:\n{log}"
    );
}

#[test]
fn text_log_lines_carry_the_request_id() {
    let log = log_of_one_request("text");
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request done") && l.contains("/v1/images/generations"))
        .collect();
    // (not "drained: every accepted job finished")
    let job: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kiln::engine::worker: job finished"))
        .collect();
    assert_eq!((done.len(), job.len()), (1, 1), "one line each in:\n{log}");
    for l in done.into_iter().chain(job) {
        assert!(
            l.contains("test-req-42"),
            "a line of the request without its id: {l}"
        );
    }
}
