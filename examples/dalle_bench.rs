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

use std::time::Instant;

use burn::tensor::backend::Backend;
use kiln::backend::BackendTask;
use kiln::models::dalle_mini::bart_decoder::DecoderCache;
use kiln::models::dalle_mini::sampling::sample_token;
use kiln::models::dalle_mini::{DalleMini, DalleRequest, SamplingConfig, Tokenization};

mod common;
use common::time_runs;

/// The prompt both sides use (min-dalle tokeniser; the toy vocabulary of the random models
/// covers it).
const PROMPT: &str = "a photo of a cat sitting on a red chair";
/// First position of the timed steps.
const STEP_AT: usize = 128;

struct Bench(common::Args);

pub fn main() {
    let usage = "usage: dalle_bench <dalle_bart-folder> <step|image|encode|vqgan> [timed] [warmup]";
    let args = common::Args::parse(usage, "step", 4);
    common::run_on("dalle_bench", args.spec, Bench(args));
}

impl BackendTask for Bench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let usage = "step|image|encode|vqgan";
        let a = self.0;
        let (dir, what, timed, warmup) = (a.path.as_path(), a.what.as_str(), a.timed, a.warmup);
        let dtype = a
            .precision
            .resolve::<B>(a.spec, &device)
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
            a.spec
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
                // Through `nn::run`, as `DalleMini::decode_tokens` runs each step.
                let step = |cache: &mut DecoderCache<B>, feed: &mut Vec<u32>| {
                    let (w, host) = kiln::nn::run::<B, _>(kiln::nn::Stretch::SmallOps, || {
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
                time_runs(timed, 0, || step(&mut cache, &mut feed))
            }
            "image" => {
                // BENCH_IMAGE_N images in one request: the decoder runs at batch 2n.
                let n: usize = std::env::var("BENCH_IMAGE_N")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                extra += &format!(",\"n\":{n}");
                let req = DalleRequest {
                    prompt: PROMPT.into(),
                    n,
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
                let times = time_runs(timed, 0, || tokens = run());
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
                    kiln::nn::run::<B, _>(kiln::nn::Stretch::Layers, || {
                        let (enc, pad) = m.encode(&rows);
                        m.decoder.start(enc, pad, &[0, 1]).layers.len()
                    })
                };
                (0..warmup).for_each(|_| _ = run());
                time_runs(timed, 0, || _ = run())
            }
            "vqgan" => {
                let codebook = m.vqgan.codebook_size().min(m.config.image_rows()) as u32;
                let tokens: Vec<u32> = (0..m.config.image_length as u32)
                    .map(|i| i * 7919 % codebook)
                    .collect();
                let run = || {
                    kiln::nn::run::<B, _>(kiln::nn::Stretch::Layers, || {
                        m.vqgan
                            .decode(std::slice::from_ref(&tokens), &m.device)
                            .dims()
                    })
                };
                (0..warmup).for_each(|_| _ = run());
                time_runs(timed, 0, || _ = run())
            }
            other => panic!("unknown component {other}; {usage}"),
        };
        common::print_line::<B>(what, &device, t0, &times, &extra);
    }
}
