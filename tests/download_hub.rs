//! `kiln::download` against a mock Hub on 127.0.0.1: layout the loaders read, resume after a cut
//! connection and across runs, checksum mismatch, tokens, unknown revisions.

mod download_common;

use download_common::*;
use kiln::download::{
    DownloadError, SOURCE_FILE, SourceManifest, download_model, installed_models,
    is_incomplete_download, recipe,
};

type B = burn::backend::Flex;

const UNET16: &str = "unet/diffusion_pytorch_model.fp16.safetensors";

fn sd15_hub() -> (MockHub, kiln::download::DownloadRecipe) {
    let hub = MockHub::start();
    let spec = recipe("sd15", true).unwrap();
    hub.serve_spec(&spec, sd15_fixture_content);
    (hub, spec)
}

#[test]
fn sd15_download_has_the_diffusers_layout_and_loads() {
    let (hub, spec) = sd15_hub();
    let tmp = tempfile::tempdir().unwrap();
    let report = download_model(&spec, tmp.path(), &hub.config()).unwrap();
    assert_eq!(report.fetched.len(), 15, "{report:?}");
    let dir = tmp.path().join("sd15");
    for (_, f) in spec.files() {
        assert_eq!(
            read(&dir.join(&f.local)),
            sd15_fixture_content("", &f.remote),
            "{}",
            f.local
        );
    }
    // LFS files went through the 302 to the CDN, small ones straight from resolve
    let log = hub.log();
    assert!(log.iter().any(|l| l.starts_with(&format!(
        "HEAD /stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/{}/{UNET16}",
        spec.sources[0].revision
    ))));
    assert!(log.iter().any(|l| l.starts_with("GET /cdn/")), "{log:?}");

    let m = SourceManifest::read(&dir)
        .unwrap()
        .expect("kiln-source.json");
    assert!(m.complete && m.is_intact(&dir));
    assert_eq!(m.precision, "fp16");
    let unet = m.entry(UNET16).unwrap();
    assert_eq!(unet.sha256, sha256_hex(&sd15_fixture_content("", UNET16)));
    assert_eq!(unet.commit.as_deref(), Some(COMMIT));
    assert!(!is_incomplete_download(&dir));

    let sd = kiln::models::sd15::StableDiffusion::<B>::load(
        &dir,
        false,
        &burn::backend::flex::FlexDevice,
    );
    assert!(
        sd.is_ok(),
        "downloaded folder does not load: {:?}",
        sd.err()
    );
    type Checker = kiln::models::sd15::SafetyChecker<B>;
    assert!(Checker::is_installed(&dir));
    let checker = Checker::load(&dir, &burn::backend::flex::FlexDevice);
    assert!(checker.is_ok(), "safety checker: {:?}", checker.err());

    // a second run touches neither the network nor the files
    let before = hub.log().len();
    let again = download_model(&spec, tmp.path(), &hub.config()).unwrap();
    assert!(again.fetched.is_empty());
    assert_eq!(again.present.len(), 15);
    assert_eq!(hub.log().len(), before);

    let listed = installed_models(tmp.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].family, "sd15");
    assert_eq!(
        listed[0].precision, "fp32",
        "the tiny fixture's tensors are fp32 whatever the file name"
    );
    assert!(
        listed[0]
            .source
            .starts_with("stable-diffusion-v1-5/stable-diffusion-v1-5@0123456789ab"),
        "{}",
        listed[0].source
    );
    assert!(!listed[0].incomplete);
}

#[test]
fn fp32_variant_fetches_the_full_precision_files() {
    let hub = MockHub::start();
    let spec = recipe("sd15", false).unwrap();
    hub.serve_spec(&spec, sd15_fixture_content);
    let tmp = tempfile::tempdir().unwrap();
    download_model(&spec, tmp.path(), &hub.config()).unwrap();
    let dir = tmp.path().join("sd15");
    assert!(
        dir.join("unet/diffusion_pytorch_model.safetensors")
            .is_file()
    );
    assert!(!dir.join(UNET16).exists());
    assert_eq!(
        SourceManifest::read(&dir).unwrap().unwrap().precision,
        "fp32"
    );
}

#[test]
fn dalle_download_has_the_layout_the_dalle_loader_reads() {
    for id in ["dalle-mini", "dalle-mega"] {
        let hub = MockHub::start();
        let spec = recipe(id, true).unwrap();
        hub.serve_spec(&spec, dalle_fixture_content);
        let tmp = tempfile::tempdir().unwrap();
        download_model(&spec, tmp.path(), &hub.config()).unwrap();
        let dir = tmp.path().join(id);
        for f in [
            "config.json",
            "flax_model.msgpack",
            "vocab.json",
            "merges.txt",
            "enwiki-words-frequency.txt",
            "vqgan/config.json",
            "vqgan/flax_model.msgpack",
        ] {
            assert!(dir.join(f).is_file(), "{id}: {f}");
        }
        // mega's word list comes from dalle-mini's repository
        let m = SourceManifest::read(&dir).unwrap().unwrap();
        assert_eq!(
            m.entry("enwiki-words-frequency.txt").unwrap().repo,
            "dalle-mini/dalle-mini"
        );
        assert_eq!(
            m.entry("vqgan/flax_model.msgpack").unwrap().repo,
            "dalle-mini/vqgan_imagenet_f16_16384"
        );
        let model =
            kiln::models::dalle_mini::DalleMini::<B>::load(&dir, &burn::backend::flex::FlexDevice);
        assert!(
            model.is_ok(),
            "{id}: downloaded folder does not load: {:?}",
            model.err()
        );
        let listed = installed_models(tmp.path()).unwrap();
        assert_eq!(listed[0].family, id);
        // the tiny fixture pairs an fp32 DalleBart with an fp16 VQGAN
        assert_eq!(listed[0].precision, "fp32+fp16");
    }
}

#[test]
fn resumes_after_a_cut_connection() {
    let (hub, spec) = sd15_hub();
    hub.cut_once(UNET16);
    let tmp = tempfile::tempdir().unwrap();
    download_model(&spec, tmp.path(), &hub.config()).unwrap();
    let full = sd15_fixture_content("", UNET16);
    assert_eq!(read(&tmp.path().join("sd15").join(UNET16)), full);
    // the second GET asked for the rest only
    let gets: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET /cdn/") && l.contains(UNET16))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[1].rsplit(' ').next().unwrap(),
        format!("bytes={}-", full.len() / 2)
    );
}

#[test]
fn resumes_a_part_file_left_by_an_earlier_run() {
    let (hub, spec) = sd15_hub();
    let tmp = tempfile::tempdir().unwrap();
    let full = sd15_fixture_content("", UNET16);
    let sha = sha256_hex(&full);
    let part = tmp
        .path()
        .join(format!("sd15/{UNET16}.{}.part", &sha[..16]));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &full[..1000]).unwrap();
    // a part file of another version of the file is stale and goes away
    let stale = tmp
        .path()
        .join(format!("sd15/{UNET16}.ffffffffffffffff.part"));
    std::fs::write(&stale, b"old").unwrap();

    download_model(&spec, tmp.path(), &hub.config()).unwrap();
    assert_eq!(read(&tmp.path().join("sd15").join(UNET16)), full);
    assert!(!part.exists() && !stale.exists());
    let gets: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET /cdn/") && l.contains(UNET16))
        .collect();
    assert_eq!(
        gets,
        vec![format!(
            "GET /cdn/stable-diffusion-v1-5/stable-diffusion-v1-5/{UNET16} bytes=1000-"
        )]
    );
}

#[test]
fn checksum_mismatch_is_an_error_and_leaves_no_complete_looking_file() {
    let (hub, spec) = sd15_hub();
    hub.corrupt(UNET16);
    let tmp = tempfile::tempdir().unwrap();
    let err = download_model(&spec, tmp.path(), &hub.config()).unwrap_err();
    assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("checksum mismatch") && msg.contains("run the command again"),
        "{msg}"
    );
    let dir = tmp.path().join("sd15");
    assert!(!dir.join(UNET16).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("unet"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.iter().all(|n| n == "config.json"),
        "{leftovers:?}"
    );
    let m = SourceManifest::read(&dir).unwrap().unwrap();
    assert!(!m.complete && m.entry(UNET16).is_none());
    assert!(is_incomplete_download(&dir));
    // the files verified before the failure are kept and not fetched again
    let recorded = m.files.len();
    assert!(recorded > 0);
    let before = hub.log().len();
    let _ = download_model(&spec, tmp.path(), &hub.config()).unwrap_err();
    let heads = hub.log()[before..]
        .iter()
        .filter(|l| l.starts_with("HEAD"))
        .count();
    assert_eq!(heads, 1, "only the failed file is asked for again");
    assert!(dir.join(SOURCE_FILE).is_file());
}

#[test]
fn token_goes_to_the_hub_and_its_absence_is_explained() {
    let (hub, spec) = sd15_hub();
    hub.require_token("hf_secret");
    let tmp = tempfile::tempdir().unwrap();
    let err = download_model(&spec, tmp.path(), &hub.config()).unwrap_err();
    assert!(
        matches!(err, DownloadError::Http { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let mut cfg = hub.config();
    cfg.token = Some("hf_secret".into());
    download_model(&spec, tmp.path(), &cfg).unwrap();
}

#[test]
fn unknown_revision_is_a_clear_not_found() {
    let (hub, spec) = sd15_hub();
    let tmp = tempfile::tempdir().unwrap();
    let err =
        download_model(&spec.with_revision("deadbeef"), tmp.path(), &hub.config()).unwrap_err();
    assert!(
        matches!(err, DownloadError::Http { status: 404, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("/resolve/deadbeef/") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn add_ons_land_where_sd_models_read_them_and_are_not_listed_as_models() {
    let hub = MockHub::start();
    let tmp = tempfile::tempdir().unwrap();
    for id in ["lcm-lora-sdv1-5", "taesd"] {
        let spec = recipe(id, true).unwrap();
        hub.serve_spec(&spec, |_, remote| format!("{id}:{remote}").into_bytes());
        download_model(&spec, tmp.path(), &hub.config()).unwrap();
    }
    let lora = tmp.path().join("loras/lcm-lora-sdv1-5");
    assert_eq!(
        read(&lora.join("pytorch_lora_weights.safetensors")),
        b"lcm-lora-sdv1-5:pytorch_lora_weights.safetensors"
    );
    let m = SourceManifest::read(&lora)
        .unwrap()
        .expect("kiln-source.json");
    assert_eq!(m.kind.as_str(), "lora");
    assert!(m.complete && m.is_intact(&lora));
    let taesd = tmp.path().join("taesd");
    assert!(taesd.join("config.json").is_file());
    assert_eq!(
        SourceManifest::read(&taesd).unwrap().unwrap().kind.as_str(),
        "taesd"
    );
    // the LoRA library finds the download by its id; `kiln models` lists neither add-on
    let addons = kiln::engine::AddOns::under(tmp.path());
    let found = addons.loras.resolve("lcm-lora-sdv1-5", false).unwrap();
    assert_eq!(found, lora.join("pytorch_lora_weights.safetensors"));
    assert!(installed_models(tmp.path()).unwrap().is_empty());
    // the recorded manifest reads back (the add-on kinds round-trip through serde)
    let text = std::fs::read_to_string(lora.join(SOURCE_FILE)).unwrap();
    assert!(text.contains("\"family\": \"lora\""), "{text}");
}
