//! What the timing examples share: their arguments, the device and precision they run on, the
//! timing loop and the device-memory part of their JSON line.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use kiln::backend::{BackendTask, DeviceSpec, device_memory, dispatch};
use kiln::precision::Precision;

/// `<path> <component> [timed] [warmup]`, plus `BENCH_DEVICE` and `BENCH_PRECISION`.
pub struct Args {
    pub path: PathBuf,
    pub what: String,
    pub timed: usize,
    pub warmup: usize,
    pub spec: DeviceSpec,
    pub precision: Precision,
}

impl Args {
    pub fn parse(usage: &str, default_what: &str, default_timed: usize) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            path: PathBuf::from(args.get(1).expect(usage)),
            what: args.get(2).cloned().unwrap_or_else(|| default_what.into()),
            timed: args
                .get(3)
                .and_then(|s| s.parse().ok())
                .unwrap_or(default_timed),
            warmup: args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1),
            spec: env("BENCH_DEVICE", "cpu")
                .parse()
                .unwrap_or_else(|e| panic!("BENCH_DEVICE: {e}")),
            precision: env("BENCH_PRECISION", "auto")
                .parse()
                .unwrap_or_else(|e| panic!("BENCH_PRECISION: {e}")),
        }
    }
}

/// Runs `task` on `spec`'s backend; a backend this build lacks exits with status 2 and says
/// which cargo feature to add.
pub fn run_on<T: BackendTask<Output = ()>>(name: &str, spec: DeviceSpec, task: T) {
    kiln::tune_allocator();
    if let Err(e) = dispatch(spec, task) {
        eprintln!("{name}: {e}");
        std::process::exit(2);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

/// Seconds of each of `timed` calls of `f`, after `warmup` untimed ones. The callers end `f`
/// with a read to the host, which on a GPU waits for the work.
pub fn time_runs(timed: usize, warmup: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..timed)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// Prints the one JSON line `benches/compare.py` reads: the component, load + warm-up seconds
/// (everything since `t0` but the timed runs), the timed runs, their median, the `fields` the
/// caller adds (each `,"key":value`) and, on a GPU backend, `device_memory`.
pub fn print_line<B: Backend>(
    what: &str,
    device: &B::Device,
    t0: Instant,
    times: &[f64],
    fields: &str,
) {
    let memory = device_memory::<B>(device)
        .map(|m| {
            format!(
                ",\"device_memory\":{{\"bytes_in_use\":{},\"bytes_reserved\":{}}}",
                m.bytes_in_use, m.bytes_reserved
            )
        })
        .unwrap_or_default();
    let load_s = t0.elapsed().as_secs_f64() - times.iter().sum::<f64>();
    let list: Vec<String> = times.iter().map(|t| format!("{t:.4}")).collect();
    println!(
        "{{\"component\":\"{what}\",\"impl\":\"kiln\",\"load_plus_warmup_s\":{load_s:.3},\"times_s\":[{}],\"median_s\":{:.4}{fields}{memory}}}",
        list.join(","),
        median(times)
    );
}
