#![cfg(feature = "cpu")]
//! The timing binaries `benches/compare.py` drives (examples/sd15_bench.rs, dalle_bench.rs) run
//! on the tiny fixture models and print the JSON line the harness reads, and a device this build
//! lacks is a clear error. `cargo test` builds the examples next to the test binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is not built; run the whole `cargo test --release` (it builds the examples)",
        bin.display()
    );
    bin
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(example(name));
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("BENCH_IMAGE_SIZE", "64")
        .env("BENCH_IMAGE_STEPS", "2")
        .env_remove("BENCH_DEVICE")
        .env_remove("BENCH_PRECISION");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("example runs")
}

/// The last JSON line of a successful run.
fn json(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout:?}; stderr {stderr}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn check_line(v: &Value, component: &str, timed: usize) {
    assert_eq!(v["component"], component, "{v}");
    assert_eq!(v["impl"], "kiln", "{v}");
    assert_eq!(v["device"], "cpu", "{v}");
    assert_eq!(v["dtype"], "F32", "{v}");
    let times = v["times_s"].as_array().expect("times_s");
    assert_eq!(times.len(), timed, "{v}");
    assert!(
        times.iter().all(|t| t.as_f64().is_some_and(|t| t >= 0.0)),
        "{v}"
    );
    assert!(v["median_s"].as_f64().is_some_and(|m| m >= 0.0), "{v}");
    // The CPU's memory is the process's RSS, which the harness measures itself.
    assert!(v.get("device_memory").is_none(), "{v}");
}

#[test]
fn sd15_bench_components_print_their_json_line() {
    let model = fixture("models/fixtures/sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    for c in ["clip", "unet", "vae", "image"] {
        let v = json(&run("sd15_bench", &[model, c, "2", "0"], &[]));
        check_line(&v, c, 2);
        if c == "image" {
            assert_eq!(v["steps"], 2, "{v}");
            assert_eq!(v["size"], 64, "{v}");
        }
    }
}

#[test]
fn dalle_bench_components_print_their_json_line() {
    let bart = fixture("models/fixtures/dalle-tiny/mindalle/dalle_bart_tiny");
    let bart = bart.to_str().expect("utf-8 path");
    for c in ["step", "image"] {
        let v = json(&run("dalle_bench", &[bart, c, "2", "1"], &[]));
        check_line(&v, c, 2);
    }
}

#[test]
fn a_device_the_build_lacks_is_a_clear_error() {
    let model = fixture("models/fixtures/sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    let missing = if cfg!(feature = "cuda") {
        None
    } else {
        Some("cuda")
    };
    let Some(device) = missing.or(if cfg!(feature = "wgpu-base") {
        None
    } else {
        Some("wgpu")
    }) else {
        return; // every backend is compiled in
    };
    let out = run(
        "sd15_bench",
        &[model, "clip", "1", "0"],
        &[("BENCH_DEVICE", device)],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("`{device}` cargo feature")),
        "{stderr}"
    );
}
