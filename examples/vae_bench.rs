//! Decode time and peak memory of SD 1.5's full VAE (whole or in tiles) and of TAESD, from a
//! folder with `vae/` and `taesd/` (random weights are fine:
//! `models/make_sd15_vae_fixtures.py --full DIR`).
//!
//! ```text
//! cargo run --release --example vae_bench -- <dir> <vae|taesd> [timed] [warmup]
//! ```
//! `BENCH_IMAGE_SIZE` is `N` or `WxH` pixels (default 512); `BENCH_VAE_TILING` is auto, on or off
//! (default auto, the pipeline's); `BENCH_DEVICE` and `BENCH_PRECISION` as in `sd15_bench`.
//! Prints `sd15_bench`'s JSON line plus `"tiled"`, `"rss_after_load_mb"` and `"peak_rss_mb"`
//! (the process's VmHWM: run one size per process to read that size's peak).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};
use kiln::backend::BackendTask;
use kiln::models::sd15::config::VaeConfig;
use kiln::models::sd15::vae::AutoencoderKL;
use kiln::models::sd15::vae_tiling::{TileSizes, VaeTiling};
use kiln::models::sd15::{AutoencoderTiny, weights};
use kiln::weights::{KeyTarget, TensorFile, load_into_as, require_complete};

mod common;
use common::time_runs;

/// `VmRSS` or `VmHWM` of this process in MB (0 where /proc is missing).
fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn size() -> [usize; 2] {
    let s = std::env::var("BENCH_IMAGE_SIZE").unwrap_or_else(|_| "512".into());
    let parse = |v: &str| v.parse::<usize>().expect("BENCH_IMAGE_SIZE: N or WxH");
    match s.split_once('x') {
        Some((w, h)) => [parse(w), parse(h)],
        None => [parse(&s), parse(&s)],
    }
}

fn load_vae<B: Backend>(
    root: &Path,
    device: &B::Device,
    dtype: DType,
) -> (AutoencoderKL<B>, VaeConfig) {
    let cfg = VaeConfig::load(&root.join("vae/config.json")).unwrap_or_default();
    let dtype = if cfg.force_upcast { DType::F32 } else { dtype };
    let file = root.join("vae/diffusion_pytorch_model.safetensors");
    let f = TensorFile::open(&file).expect("vae weights open");
    let map = |k: &str| {
        if k.starts_with("encoder.") || k.starts_with("quant_conv.") {
            KeyTarget::Ignore
        } else {
            weights::vae_key(k)
        }
    };
    let module = AutoencoderKL::<B>::new(&cfg, false, device);
    let (vae, r) = load_into_as(module, &f, &map, dtype).expect("vae loads");
    require_complete(&r, &file).expect("every parameter loaded");
    (vae, cfg)
}

struct Bench(common::Args);

fn main() {
    let usage = "usage: vae_bench <dir> <vae|taesd> [timed] [warmup]";
    let args = common::Args::parse(usage, "vae", 1);
    common::run_on("vae_bench", args.spec, Bench(args));
}

impl BackendTask for Bench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let common::Args {
            path: root,
            what,
            timed,
            warmup,
            spec,
            precision,
        } = self.0;
        // As the server: f32 on the CPU, f16 on a GPU; the VAE in f32 where its config asks.
        let dtype = precision
            .resolve::<B>(spec, &device)
            .unwrap_or_else(|e| panic!("{e}"));
        let [w, h] = size();
        let tiling: VaeTiling = std::env::var("BENCH_VAE_TILING")
            .unwrap_or_else(|_| "auto".into())
            .parse()
            .unwrap_or_else(|e| panic!("BENCH_VAE_TILING: {e}"));
        let t0 = Instant::now();
        let z = |f: usize| {
            let normal = Distribution::Normal(0.0, 1.0);
            Tensor::<B, 4>::random([1, 4, h / f, w / f], normal, &device)
        };
        let (times, tiled, loaded_mb) = match what.as_str() {
            "vae" => {
                let (vae, cfg) = load_vae::<B>(&root, &device, dtype);
                let loaded = rss_mb("VmRSS");
                let (tiles, f) = (TileSizes::of(&cfg), cfg.scale_factor());
                let tiled = tiling.applies([h / f, w / f], tiles.latent, w * h);
                let z = z(f);
                let times = time_runs(timed, warmup, || {
                    let out = if tiled {
                        vae.tiled_decode(z.clone(), &tiles)
                    } else {
                        vae.decode(z.clone())
                    };
                    let _ = out.into_data();
                });
                (times, tiled, loaded)
            }
            "taesd" => {
                let taesd = AutoencoderTiny::<B>::load(&root.join("taesd"), &device, dtype)
                    .expect("TAESD loads");
                let loaded = rss_mb("VmRSS");
                let z = z(8);
                let times = time_runs(timed, warmup, || {
                    let _ = taesd.decode(z.clone()).into_data();
                });
                (times, false, loaded)
            }
            other => panic!("unknown component {other}; {usage}", usage = "vae or taesd"),
        };
        let extra = format!(
            ",\"device\":\"{spec}\",\"dtype\":\"{dtype:?}\",\"width\":{w},\"height\":{h},\"tiling\":\"{tiling:?}\",\"tiled\":{tiled},\"rss_after_load_mb\":{loaded_mb:.0},\"peak_rss_mb\":{:.0}",
            rss_mb("VmHWM")
        );
        common::print_line::<B>(&what, &device, t0, &times, &extra);
    }
}
