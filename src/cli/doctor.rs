//! `kiln doctor`: verifies a device by running the tiny-model parity checks against the
//! committed reference tensors (see [`kiln::doctor`]) and printing what each measured.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::DType;
use clap::Args;
use kiln::backend::{DeviceSpec, dispatch};
use kiln::doctor::{Check, Doctor, Family, Fixtures, Report};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The device to check: cpu, wgpu[:N] or cuda[:N] (among the backends this binary has).
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// The folder of the tiny fixture models and their references (a checkout's models/fixtures).
    #[arg(long, env = "KILN_FIXTURES", default_value = "models/fixtures")]
    pub fixtures: PathBuf,
    /// Comma list of the dtypes to compute in: f32 (the CPU tests' tolerances) and f16.
    #[arg(long, default_value = "f32,f16")]
    pub precision: String,
    /// Comma list of the model families to check: sd15, dalle.
    #[arg(long, default_value = "sd15,dalle")]
    pub family: String,
    /// Also write the report (every check, the device's memory) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn list<T>(arg: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
    arg.split(',')
        .map(|s| parse(s.trim()).with_context(|| format!("--{what}: unknown `{s}`")))
        .collect()
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let device: DeviceSpec = args
        .device
        .parse()
        .with_context(|| format!("--device {}", args.device))?;
    let dtypes = list(&args.precision, "precision", |s| match s {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        _ => None,
    })?;
    let families = list(&args.family, "family", |s| match s {
        "sd15" => Some(Family::Sd15),
        "dalle" | "dalle-mini" => Some(Family::Dalle),
        _ => None,
    })?;
    let fixtures = Fixtures::new(&args.fixtures)?;
    let t0 = Instant::now();
    print_header(device);
    // One family and dtype at a time, each printed as it ends: a run stopped by a time limit
    // (a first run on a new GPU compiles and autotunes every kernel) still shows what it did.
    let mut report = Report {
        checks: Vec::new(),
        device_memory_reserved: None,
    };
    let mut errors = Vec::new();
    for &dtype in &dtypes {
        for &family in &families {
            let fixtures = fixtures.clone();
            match dispatch(
                device,
                Doctor {
                    fixtures,
                    family,
                    dtype,
                },
            )? {
                Ok(group) => {
                    group.checks.iter().for_each(print_row);
                    report.checks.extend(group.checks);
                    report.device_memory_reserved = group.device_memory_reserved;
                }
                Err(e) => {
                    println!("{family:?} {dtype:?}: ERROR {e}");
                    errors.push(format!("{family:?} {dtype:?}: {e}"));
                }
            }
            if let Some(path) = &args.json {
                write_json(path, device, t0.elapsed().as_secs_f64(), &report, &errors)?;
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    print_footer(&report, seconds);
    let failed = report.checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 || !errors.is_empty() {
        bail!(
            "{failed} of {} checks failed on {device}{}",
            report.checks.len(),
            errors.iter().map(|e| format!("; {e}")).collect::<String>()
        );
    }
    Ok(())
}

fn write_json(
    path: &std::path::Path,
    device: DeviceSpec,
    seconds: f64,
    report: &Report,
    errors: &[String],
) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "device": device.to_string(),
        "seconds": seconds,
        "passed": errors.is_empty() && report.checks.iter().all(|c| c.passed()),
        "errors": errors,
        "report": report,
    });
    std::fs::write(path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_header(device: DeviceSpec) {
    println!(
        "kiln doctor on {device}: the tiny models against the diffusers, transformers and min-dalle references"
    );
    println!(
        "{:<6} {:<5} {:<42} {:<18} {:>10} {:>9} {:>8}  RESULT",
        "FAMILY", "DTYPE", "CHECK", "MEASURE", "VALUE", "TOL", "SECONDS"
    );
}

fn print_row(c: &Check) {
    let result = if c.passed() { "ok" } else { "FAILED" };
    let note = c
        .note
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    println!(
        "{:<6} {:<5} {:<42} {:<18} {:>10.3e} {:>9.1e} {:>8.2}  {result}{note}",
        c.family,
        c.precision,
        c.name,
        c.measure.as_str(),
        c.value,
        c.tol,
        c.seconds
    );
}

fn print_footer(report: &Report, seconds: f64) {
    let passed = report.checks.iter().filter(|c| c.passed()).count();
    let memory = report
        .device_memory_reserved
        .map(|b| {
            format!(
                "; device memory reserved {:.1} MiB",
                b as f64 / (1 << 20) as f64
            )
        })
        .unwrap_or_default();
    println!(
        "{passed} of {} checks passed in {seconds:.1} s{memory}",
        report.checks.len()
    );
}
