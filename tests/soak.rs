//! Soak: a real `kiln serve` on the demo models under mixed traffic from several clients —
//! valid SD and DALL·E generations, streamed ones, invalid bodies, unknown models, clients that
//! give up mid-request — for `KILN_SOAK_SECS` (default 600). It asserts no 5xx (none is
//! documented for this traffic), that every request that was waited for got an answer, that
//! the queue drains to 0, and that the server's RSS comes back near its warmed-up baseline.
//!
//! Behind `--ignored` (it is long): `cargo test --release --test soak -- --ignored`; CI runs it
//! for 60 s (`.ci/run`).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod process_common;
use process_common::{Server, start as serve};

fn start() -> Server {
    serve(&["--max-queue", "6"])
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    abandoned: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    busy: AtomicU64,
}

/// One request of kind `k`; returns the status (None when the client gave up on purpose).
fn one(base: &str, k: u64, tally: &Tally) -> Option<u16> {
    let url = format!("{base}/v1/images/generations");
    let post = |body: Value, timeout: Duration| {
        ureq::post(&url)
            .timeout(timeout)
            .set("content-type", "application/json")
            .send_string(&body.to_string())
            .map(|r| {
                let status = r.status();
                let mut sink = Vec::new();
                let _ = r.into_reader().take(64 << 20).read_to_end(&mut sink);
                status
            })
    };
    let long = Duration::from_secs(120);
    let res = match k % 7 {
        0 => post(
            json!({"prompt": "a red cube", "size": "64x64", "num_inference_steps": 2}),
            long,
        ),
        1 => post(
            json!({"prompt": "a cat", "model": "dalle-mini-demo", "size": "64x64"}),
            long,
        ),
        2 => post(
            json!({"prompt": "a (red:1.2) cube", "size": "64x64", "num_inference_steps": 3,
                   "stream": true, "partial_images": 1}),
            long,
        ),
        3 => post(json!({"prompt": "x", "size": "12x12"}), long),
        4 => post(json!({"prompt": "x", "model": "nope"}), long),
        5 => post(json!({"prompt": 7}), long),
        _ => {
            // a client that gives up: the server must cancel, not wedge
            let r = post(
                json!({"prompt": "gone", "size": "64x64", "num_inference_steps": 6}),
                Duration::from_millis(30),
            );
            if matches!(r, Err(ureq::Error::Transport(_))) {
                tally.abandoned.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            r
        }
    };
    let status = match res {
        Ok(s) => s,
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("request kind {} lost: {e}", k % 7),
    };
    tally.answered.fetch_add(1, Ordering::Relaxed);
    match status {
        200 => tally.ok.fetch_add(1, Ordering::Relaxed),
        429 => {
            // as a client honouring Retry-After would, roughly
            std::thread::sleep(Duration::from_millis(200));
            tally.busy.fetch_add(1, Ordering::Relaxed)
        }
        400..=499 => tally.client_errors.fetch_add(1, Ordering::Relaxed),
        s => panic!("request kind {} answered {s}", k % 7),
    };
    Some(status)
}

#[test]
#[ignore = "long: run with --ignored (KILN_SOAK_SECS, default 600)"]
fn mixed_traffic_for_minutes() {
    let secs: u64 = std::env::var("KILN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let server = start();
    let pid = server.child.id();
    let tally = Arc::new(Tally::default());
    // warm up every path once, then take the baseline
    for k in 0..7 {
        one(&server.base, k, &tally);
    }
    std::thread::sleep(Duration::from_secs(1));
    let baseline = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (base, tally, stop) = (server.base.clone(), tally.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = c * 3;
                while !stop.load(Ordering::Relaxed) {
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    one(&base, k, &tally);
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407)
                        >> 7;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("a client thread panicked: see its message above");
    }
    // abandoned jobs are cancelled: the queue drains
    let health = |base: &str| -> Value {
        ureq::get(&format!("{base}/health"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let t1 = Instant::now();
    while health(&server.base)["queue"] != 0 {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "the queue never drained"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let end = rss_kib(pid);
    let t = &*tally;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "soak {secs}s: sent {}, answered {} (200: {}, 4xx: {}, 429: {}), abandoned {}; RSS KiB \
         baseline {baseline}, peak {}, end {end}",
        n(&t.sent),
        n(&t.answered),
        n(&t.ok),
        n(&t.client_errors),
        n(&t.busy),
        n(&t.abandoned),
        n(&peak)
    );
    assert_eq!(
        n(&t.sent) + 7,
        n(&t.answered) + n(&t.abandoned),
        "a request was lost"
    );
    assert!(n(&t.ok) > 0 && n(&t.client_errors) > 0);
    // The allocator keeps some pages; growth beyond this is a leak.
    assert!(
        end <= baseline + baseline / 2 + 64 * 1024,
        "RSS did not come back: baseline {baseline} KiB, end {end} KiB"
    );
}
