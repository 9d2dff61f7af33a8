//! Offline mode, an unreachable Hub, `ensure_model` (first-run download of `kiln serve`), and the
//! `kiln download` / `kiln models` commands driven through `HF_ENDPOINT` / `HF_HUB_OFFLINE`.

mod download_common;

use std::process::Command;

use download_common::*;
use kiln::download::{
    DownloadError, EnsureOutcome, HubConfig, download_model, ensure_model, expand_ids,
    installed_models, recipe,
};

fn unreachable_endpoint() -> String {
    // a port that was just free: connection refused
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn quiet(cfg: HubConfig) -> HubConfig {
    HubConfig {
        progress: false,
        retry_delay: std::time::Duration::from_millis(10),
        ..cfg
    }
}

#[test]
fn offline_without_the_files_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = recipe("sd15", true).unwrap();
    let cfg = quiet(
        HubConfig::default()
            .with_endpoint(unreachable_endpoint())
            .with_offline(true),
    );
    let err = download_model(&spec, tmp.path(), &cfg).unwrap_err();
    assert!(matches!(err, DownloadError::Offline { .. }), "{err}");
    let msg = err.to_string();
    for part in [
        "offline mode",
        "HF_HUB_OFFLINE",
        "kiln download sd15",
        "model_index.json",
    ] {
        assert!(msg.contains(part), "missing `{part}` in: {msg}");
    }
    // nothing was created
    assert!(!tmp.path().join("sd15").exists());
    match ensure_model("sd15", tmp.path(), &cfg).unwrap() {
        EnsureOutcome::Unavailable { reason } => assert!(reason.contains("offline"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn offline_with_the_files_succeeds_without_network() {
    let hub = MockHub::start();
    let spec = recipe("sd15", true).unwrap();
    hub.serve_spec(&spec, sd15_fixture_content);
    let tmp = tempfile::tempdir().unwrap();
    download_model(&spec, tmp.path(), &hub.config()).unwrap();
    let before = hub.log().len();
    let offline = hub.config().with_offline(true);
    let report = download_model(&spec, tmp.path(), &offline).unwrap();
    assert_eq!(report.present.len(), 15);
    assert_eq!(
        ensure_model("sd15", tmp.path(), &offline).unwrap(),
        EnsureOutcome::Present(tmp.path().join("sd15"))
    );
    assert_eq!(
        hub.log().len(),
        before,
        "offline mode must not touch the network"
    );
}

#[test]
fn unreachable_hub_is_a_clear_message_and_ensure_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = unreachable_endpoint();
    let cfg = quiet(HubConfig::default().with_endpoint(endpoint.clone()));
    let spec = recipe("sd15", true).unwrap();
    let err = download_model(&spec, tmp.path(), &cfg).unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach the Hugging Face Hub")
            && msg.contains(&endpoint)
            && msg.contains("HF_ENDPOINT"),
        "{msg}"
    );
    match ensure_model("sd15", tmp.path(), &cfg).unwrap() {
        EnsureOutcome::Unavailable { reason } => {
            assert!(reason.contains("cannot reach"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // an interrupted first run is not mistaken for an installed model
    assert!(kiln::download::is_incomplete_download(
        &tmp.path().join("sd15")
    ));
}

#[test]
fn ensure_model_downloads_once_then_finds_it() {
    let hub = MockHub::start();
    hub.serve_spec(&recipe("sd15", true).unwrap(), sd15_fixture_content);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd15");
    assert_eq!(
        ensure_model("sd15", tmp.path(), &hub.config()).unwrap(),
        EnsureOutcome::Downloaded(dir.clone())
    );
    let before = hub.log().len();
    assert_eq!(
        ensure_model("sd15", tmp.path(), &hub.config()).unwrap(),
        EnsureOutcome::Present(dir)
    );
    assert_eq!(hub.log().len(), before);
}

#[test]
fn ensure_model_leaves_a_hand_made_folder_alone() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd15");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("v1-5-pruned-emaonly.safetensors"), b"not really").unwrap();
    assert_eq!(
        ensure_model("sd15", tmp.path(), &hub.config()).unwrap(),
        EnsureOutcome::Present(dir.clone())
    );
    // `kiln download` refuses to mix its files into it
    let err =
        download_model(&recipe("sd15", true).unwrap(), tmp.path(), &hub.config()).unwrap_err();
    assert!(matches!(err, DownloadError::NotOurs { .. }), "{err}");
    assert_eq!(
        read(&dir.join("v1-5-pruned-emaonly.safetensors")),
        b"not really"
    );
    assert!(!dir.join(kiln::download::SOURCE_FILE).exists());
    assert!(hub.log().is_empty());
}

#[test]
fn model_ids_and_errors() {
    assert_eq!(
        expand_ids(&["all".into()]).unwrap(),
        vec!["sd15", "dalle-mini", "dalle-mega"]
    );
    assert_eq!(expand_ids(&["sd15".into(), "all".into()]).unwrap().len(), 3);
    let err = expand_ids(&["sdxl".into()]).unwrap_err();
    assert!(err.to_string().contains("unknown model `sdxl`"), "{err}");
    let cfg = HubConfig::default().with_endpoint("https://user:pw@mirror.example/hub/");
    assert_eq!(cfg.display_endpoint(), "https://mirror.example/hub");
    assert_eq!(
        cfg.resolve_url("a/b", "main", "x/y.json"),
        "https://user:pw@mirror.example/hub/a/b/resolve/main/x/y.json"
    );
}

#[test]
fn models_listing_skips_fixtures_and_flags_incomplete_downloads() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("fixtures/sd15-tiny/unet")).unwrap();
    // a DALL·E folder copied by hand
    let mini = tmp.path().join("my-dalle");
    std::fs::create_dir_all(&mini).unwrap();
    for f in [
        "config.json",
        "flax_model.msgpack",
        "vocab.json",
        "merges.txt",
    ] {
        std::fs::copy(fixture("dalle-tiny/flax").join(f), mini.join(f)).unwrap();
    }
    // an interrupted download
    let cfg = quiet(HubConfig::default().with_endpoint(unreachable_endpoint()));
    let _ = download_model(&recipe("sd15", true).unwrap(), tmp.path(), &cfg).unwrap_err();

    let listed = installed_models(tmp.path()).unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["my-dalle", "sd15"]);
    assert_eq!(listed[0].family, "dalle-mini");
    assert_eq!(listed[0].source, "local files");
    assert!(listed[0].size_bytes > 1_000_000);
    assert!(listed[1].incomplete);
}

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for v in [
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "KILN_MODELS_DIR",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HOME", "/nonexistent-kiln-test");
    c
}

#[test]
fn cli_download_and_models_through_hf_endpoint() {
    let hub = MockHub::start();
    for fp16 in [true, false] {
        hub.serve_spec(&recipe("sd15", fp16).unwrap(), sd15_fixture_content);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();

    let out = kiln()
        .args(["download", "sd15", "--no-fp16", "--models-dir", dir])
        .env("HF_ENDPOINT", &hub.endpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tmp.path()
            .join("sd15/unet/diffusion_pytorch_model.safetensors")
            .is_file()
    );

    let out = kiln()
        .args(["models", "--json", "--models-dir", dir])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], "sd15");
    assert_eq!(v[0]["family"], "sd15");
    let table = kiln()
        .args(["models", "--models-dir", dir])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("sd15") && table.contains("stable-diffusion-v1-5/stable-diffusion-v1-5@"),
        "{table}"
    );

    // HF_HUB_OFFLINE=1 with nothing installed: a clear error, non-zero exit
    let empty = tempfile::tempdir().unwrap();
    let out = kiln()
        .args([
            "download",
            "dalle-mini",
            "--models-dir",
            empty.path().to_str().unwrap(),
        ])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("offline mode") && err.contains("kiln download dalle-mini"),
        "{err}"
    );

    let out = kiln()
        .args(["download", "sdxl", "--models-dir", dir])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model `sdxl`"));
}
