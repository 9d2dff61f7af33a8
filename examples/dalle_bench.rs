//! Timing of DALL·E Mini / Mega, loaded from a full-size min-dalle or flax folder (random weights
//! are fine: `models/make_dalle_fixtures.py full`). Driven by `benches/compare.py`, which runs
//! this and min-dalle alternately and collects peak RSS.
//! `BENCH_DEVICE` (cpu, wgpu[:N], cuda[:N]; default cpu; the binary must be built with that
//! feature) and `BENCH_PRECISION` (auto, f32, f16; default auto: f32 on the CPU, f16 for BART on
//! a GPU, as the server) place the model; on a GPU the JSON line also carries
//! `"device_memory": {"bytes_in_use", "bytes_reserved"}`, read after the timed runs.
//!
//! ```text
//! cargo run --release --example dalle_bench -- <dalle_bart-folder> <step|image|encode|vqgan> [timed] [warmup]
//! ```
//! Prints one JSON line on stdout:
//! `{"component", "impl", "device", "dtype", "load_plus_warmup_s", "times_s": [...], "median_s",
//! "model", ...}`.
//!
//! Both components use min-dalle's settings with greedy sampling, so that kiln and min-dalle do
//! the same work with no random numbers involved: min-dalle's tokeniser, super-condition 16,
//! top_k = 1, temperature 1, one image = decoder batch 2 (unconditional + conditional row).
//! - `step`: one decoder step (embedding → layers → lm_head → logits on the host → token
//!   choice). `warmup` real steps from position 0, then `timed` consecutive steps from position
//!   128 (the middle of the 256, so that 256 × step ≈ the whole decode when the cost grows with
//!   the position; min-dalle's own step attends over all 256 cache slots whatever the position).
//! - `image`: the whole `generate` call: tokenise, encode, 256 steps, VQGAN decode, RGB8.
//! - `encode`, `vqgan`: the two ends of `image` alone (text encoder plus the cross K/V
//!   projection; the VQGAN decode of 256 tokens), for kiln only.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use kiln::backend::{BackendTask, DeviceSpec, device_memory, dispatch};
use kiln::models::dalle_mini::bart_decoder::DecoderCache;
use kiln::models::dalle_mini::sampling::sample_token;
use kiln::models::dalle_mini::{DalleMini, DalleRequest, SamplingConfig, Tokenization};
use kiln::precision::Precision;

/// The prompt both sides use (min-dalle tokeniser; the toy vocabulary of the random models
/// covers it).
const PROMPT: &str = "a photo of a cat sitting on a red chair";
/// First position of the timed steps.
const STEP_AT: usize = 128;

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

struct Bench {
    dir: PathBuf,
    what: String,
    timed: usize,
    warmup: usize,
    spec: DeviceSpec,
    precision: Precision,
}

fn main() {
    kiln::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: dalle_bench <dalle_bart-folder> <step|image|encode|vqgan> [timed] [warmup]";
    let spec: DeviceSpec = std::env::var("BENCH_DEVICE")
        .as_deref()
        .unwrap_or("cpu")
        .parse()
        .unwrap_or_else(|e| panic!("BENCH_DEVICE: {e}"));
    let bench = Bench {
        dir: PathBuf::from(args.get(1).expect(usage)),
        what: args.get(2).cloned().unwrap_or_else(|| "step".into()),
        timed: args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4),
        warmup: args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1),
        spec,
        precision: std::env::var("BENCH_PRECISION")
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .unwrap_or_else(|e| panic!("BENCH_PRECISION: {e}")),
    };
    if let Err(e) = dispatch(spec, bench) {
        eprintln!("dalle_bench: {e}");
        std::process::exit(2);
    }
}

impl BackendTask for Bench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let usage = "step|image|encode|vqgan";
        let (dir, what, timed, warmup) = (
            self.dir.as_path(),
            self.what.as_str(),
            self.timed,
            self.warmup,
        );
        let dtype = self
            .precision
            .resolve::<B>(self.spec, &device)
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = Instant::now();
        let m = DalleMini::<B>::load_as(dir, None, &device, dtype).expect("DALL·E loads");
        eprintln!(
            "loaded {} ({} layers, d {}) in {:.2}s",
            m.name(),
            m.config.decoder_layers,
            m.config.d_model,
            t0.elapsed().as_secs_f64()
        );
        let sampling = SamplingConfig {
            cond_scale: 16.0,
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        let mut extra = format!(
            ",\"model\":\"{}\",\"device\":\"{}\",\"dtype\":\"{dtype:?}\"",
            m.name(),
            self.spec
        );
        let times: Vec<f64> = match what {
            "step" => {
                let steps = m.config.image_length;
                assert!(
                    warmup <= STEP_AT && timed <= steps - STEP_AT,
                    "warmup <= {STEP_AT} and timed <= {}",
                    steps - STEP_AT
                );
                let rows = m
                    .text_rows(PROMPT, Tokenization::MinDalle, 0)
                    .expect("text rows");
                let (enc, pad) = m.encode(&rows);
                // One image: decoder row 0 reads encoder row 0 (unconditional), row 1 row 1.
                let mut cache = m.decoder.start(enc, pad, &[0, 1]);
                let codebook = m.vqgan.codebook_size().min(m.config.image_rows());
                let mut feed = vec![m.config.decoder_start_token_id; 2];
                // On the CPU pool, as `DalleMini::decode_tokens` runs each step.
                let step = |cache: &mut DecoderCache<B>, feed: &mut Vec<u32>| {
                    let (w, host) = kiln::nn::on_cpu_team::<B, _>(|| {
                        let logits = m.decoder.step(feed, cache);
                        (logits.dims()[1], logits.into_data().to_vec::<f32>())
                    });
                    let host = host.expect("f32 logits");
                    let token = sample_token(&host[..w], &host[w..], codebook, &sampling, 0.5);
                    feed.fill(token);
                };
                for _ in 0..warmup {
                    step(&mut cache, &mut feed);
                }
                // Positions warmup..STEP_AT keep zero K/V: same work, other numbers.
                cache.position = STEP_AT;
                extra += &format!(",\"first_position\":{STEP_AT}");
                time_each(timed, || step(&mut cache, &mut feed))
            }
            "image" => {
                let req = DalleRequest {
                    prompt: PROMPT.into(),
                    n: 1,
                    seed: 0,
                    cond_scale: sampling.cond_scale,
                    temperature: sampling.temperature,
                    top_k: sampling.top_k,
                    top_p: sampling.top_p,
                    tokenization: Tokenization::MinDalle,
                };
                let run = || {
                    let out = m.generate(&req, &mut |_, _| true).expect("generates");
                    assert_eq!(out.rgb8[0].len(), out.width * out.height * 3);
                    out.tokens[0].clone()
                };
                (0..warmup).for_each(|_| _ = run());
                let mut tokens = Vec::new();
                let times = time_each(timed, || tokens = run());
                let head: Vec<String> = tokens.iter().take(8).map(u32::to_string).collect();
                extra += &format!(",\"first_tokens\":[{}]", head.join(","));
                times
            }
            // The two ends of `image` alone (not timed by the harness against min-dalle).
            "encode" => {
                let rows = m
                    .text_rows(PROMPT, Tokenization::MinDalle, 0)
                    .expect("text rows");
                let run = || {
                    kiln::nn::on_cpu_pool::<B, _>(|| {
                        let (enc, pad) = m.encode(&rows);
                        m.decoder.start(enc, pad, &[0, 1]).layers.len()
                    })
                };
                (0..warmup).for_each(|_| _ = run());
                time_each(timed, || _ = run())
            }
            "vqgan" => {
                let codebook = m.vqgan.codebook_size().min(m.config.image_rows()) as u32;
                let tokens: Vec<u32> = (0..m.config.image_length as u32)
                    .map(|i| i * 7919 % codebook)
                    .collect();
                let run = || {
                    kiln::nn::on_cpu_pool::<B, _>(|| {
                        m.vqgan
                            .decode(std::slice::from_ref(&tokens), &m.device)
                            .dims()
                    })
                };
                (0..warmup).for_each(|_| _ = run());
                time_each(timed, || _ = run())
            }
            other => panic!("unknown component {other}; {usage}"),
        };
        if let Some(mem) = device_memory::<B>(&device) {
            extra += &format!(
                ",\"device_memory\":{{\"bytes_in_use\":{},\"bytes_reserved\":{}}}",
                mem.bytes_in_use, mem.bytes_reserved
            );
        }
        let load_s = t0.elapsed().as_secs_f64() - times.iter().sum::<f64>();
        let list: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
        println!(
            "{{\"component\":\"{what}\",\"impl\":\"kiln\",\"load_plus_warmup_s\":{load_s:.3},\"times_s\":[{}],\"median_s\":{:.4}{extra}}}",
            list.join(","),
            median(&times)
        );
    }
}

/// Seconds each of `n` calls of `f` took.
fn time_each(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}
