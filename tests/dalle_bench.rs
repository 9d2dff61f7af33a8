//! First CPU timing of DALL·E Mini at full size with random weights (not a CI test):
//!
//! ```text
//! .venv-ref/bin/python models/make_dalle_fixtures.py full --model mini   # -> .cache/dalle-mini-random
//! cargo test --release --test dalle_bench -- --ignored --nocapture
//! ```
//! `DALLE_BENCH_DIR` points at another min-dalle/flax folder; `DALLE_BENCH_STEPS` (default 16)
//! sets how many decode steps are timed; `DALLE_BENCH_N` the images per batch (default 1).

#[path = "common/dalle.rs"]
mod dalle;

use std::time::Instant;

use kiln::models::dalle_mini::{DalleMini, SamplingConfig, Tokenization};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "needs full-size weights in .cache (see the file docs)"]
fn mini_cpu_timing() {
    let dir = std::env::var("DALLE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/dalle-mini-random/dalle_bart_mini")
        });
    let (steps, n) = (env("DALLE_BENCH_STEPS", 16), env("DALLE_BENCH_N", 1));
    let t0 = Instant::now();
    let m = DalleMini::<dalle::B>::load(&dir, &dalle::device()).expect("loads");
    let load = t0.elapsed().as_secs_f64();
    let rows = m
        .text_rows(
            "a photo of a cat sitting on a red chair",
            Tokenization::MinDalle,
            0,
        )
        .expect("rows");

    let t0 = Instant::now();
    let (enc, pad) = m.encode(&rows);
    let _ = dalle::values(enc.clone().slice([0..1, 0..1, 0..1]));
    let encoder = t0.elapsed().as_secs_f64();

    let cfg = SamplingConfig {
        cond_scale: 16.0,
        temperature: 1.0,
        top_k: 256,
        top_p: 1.0,
    };
    let mut times = Vec::new();
    let mut last = Instant::now();
    let t0 = Instant::now();
    let mut seen = 0;
    // decode_tokens runs all 256 steps; cancel after `steps` to time only those
    let r = m.decode_tokens(
        enc,
        pad,
        n,
        &cfg,
        &mut |_, t| (t as f64 * 0.37) % 1.0,
        &mut |s, _| {
            times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
            seen = s;
            s < steps
        },
    );
    assert!(r.is_err() || steps >= 256);
    let decode_total = t0.elapsed().as_secs_f64();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];

    let t0 = Instant::now();
    let img = m.vqgan.decode(&vec![vec![7u32; 256]; n], &dalle::device());
    let _ = dalle::values(img.slice([0..1, 0..1, 0..1, 0..1]));
    let vqgan = t0.elapsed().as_secs_f64();
    eprintln!(
        "dalle-mini CPU (n={n}): load {load:.1} s, encoder {encoder:.2} s, {seen} steps in {decode_total:.2} s \
         (first {:.3} s, median {median:.3} s/step), VQGAN {vqgan:.2} s for {n} image(s) \
         -> per batch ≈ {:.1} s (encoder + 256 × median + VQGAN)",
        times[0],
        encoder + 256.0 * median + vqgan
    );
    eprintln!(
        "step times: {:?}",
        times
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
}
