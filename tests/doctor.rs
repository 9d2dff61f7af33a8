//! `kiln doctor` end to end: every check passes on the CPU against the committed references,
//! a reference that no longer matches fails the run (naming the check), and a missing
//! fixtures folder is a clear error.

mod common;

use std::path::Path;
use std::process::Command;

fn doctor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("doctor")
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("KILN_DEVICE")
        .output()
        .expect("kiln runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_check_passes_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("doctor.json");
    let fixtures = common::fixture("");
    let out = doctor(&[
        "--device",
        "cpu",
        "--fixtures",
        fixtures.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("24 of 24 checks passed"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["passed"], true);
    let checks = report["report"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 24);
    for (family, precision) in [
        ("sd15", "f32"),
        ("sd15", "f16"),
        ("dalle", "f32"),
        ("dalle", "f16"),
    ] {
        assert!(
            checks
                .iter()
                .any(|c| c["family"] == family && c["precision"] == precision),
            "no {family} {precision} check"
        );
    }
    // The f16 runs measure f16 rounding: not zero, within 1e-2 of the scale.
    for c in checks.iter().filter(|c| c["precision"] == "f16") {
        let v = c["value"].as_f64().unwrap();
        assert!(v > 0.0 && v <= 1e-2, "{c}");
    }
}

/// Copies the fixtures, with the VAE reference's decoded image shifted by 1e-3.
fn fixtures_with_a_wrong_reference(to: &Path) {
    let from = common::fixture("");
    common::copy_tree(&from, to, &|_| true);
    for sub in ["sd15-tiny/refs", "dalle-tiny"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
    }
    for f in ["text_encoder", "unet", "pipeline_ddim4"] {
        let name = format!("sd15-tiny/refs/{f}.safetensors");
        std::fs::copy(from.join(&name), to.join(&name)).unwrap();
    }
    let vae =
        kiln::weights::TensorFile::open(&from.join("sd15-tiny/refs/vae.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vae
        .keys()
        .map(|k| {
            let (shape, mut v) = vae.read_f32(k).unwrap();
            if k == "decode_out" {
                v.iter_mut().for_each(|x| *x += 1e-3);
            }
            (
                k.to_string(),
                shape,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = tensors.iter().map(|(k, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .unwrap();
        (k.as_str(), view)
    });
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(to.join("sd15-tiny/refs/vae.safetensors"), bytes).unwrap();
}

#[test]
fn a_mismatch_fails_the_run_and_names_the_check() {
    let dir = tempfile::tempdir().unwrap();
    fixtures_with_a_wrong_reference(dir.path());
    let out = doctor(&[
        "--fixtures",
        dir.path().to_str().unwrap(),
        "--family",
        "sd15",
        "--precision",
        "f32",
    ]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("vae decode"))
        .unwrap_or_default();
    assert!(line.ends_with("FAILED"), "{stdout}");
    assert!(
        text(&out.stderr).contains("1 of 10 checks failed on cpu"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_fixtures_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = doctor(&["--fixtures", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("sd15-tiny/refs") && err.contains("--fixtures"),
        "{err}"
    );
    let out = doctor(&["--precision", "f64"]);
    assert!(
        text(&out.stderr).contains("--precision: unknown `f64`"),
        "{}",
        text(&out.stderr)
    );
    let out = doctor(&["--device", "cuda"]);
    assert!(!out.status.success());
}
