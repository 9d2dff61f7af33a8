//! DALL·E weight loading: zero missing/unused keys on the tiny models and on the full-size key
//! manifests of every published layout; clear errors for bad files.

#[path = "common/dalle.rs"]
mod dalle;

use std::collections::BTreeMap;
use std::path::Path;

use kiln::models::dalle_mini::coverage::{Coverage, coverage, flax_target_shape, param_shapes};
use kiln::models::dalle_mini::weights::{
    VqganLeaf, bart_pt_target, flax_bart_targets, flax_vqgan_target, vqgan_pt_target,
};
use kiln::models::dalle_mini::{
    BartDecoder, BartEncoder, DalleBartConfig, DalleMini, Vqgan, VqganConfig,
};
use kiln::weights::KeyTarget;

fn manifest(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/manifests")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("json")
}

fn keys(m: &serde_json::Value, file: &str) -> BTreeMap<String, Vec<usize>> {
    let entries = m["files"][file].as_object().expect("file entry");
    entries
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|x| x.as_u64().expect("dim") as usize)
                    .collect(),
            )
        })
        .collect()
}

fn prefixed(prefix: &str, m: BTreeMap<String, Vec<usize>>) -> BTreeMap<String, Vec<usize>> {
    m.into_iter()
        .map(|(k, v)| (format!("{prefix}.{k}"), v))
        .collect()
}

fn assert_clean(what: &str, c: &Coverage) {
    assert!(c.missing.is_empty(), "{what}: missing {:?}", c.missing);
    assert!(c.unused.is_empty(), "{what}: unused {:?}", c.unused);
    assert!(
        c.shape_errors.is_empty(),
        "{what}: shapes {:?}",
        c.shape_errors
    );
}

fn pt(key: &str, shape: &[usize], map: fn(&str) -> KeyTarget) -> Option<Vec<(String, Vec<usize>)>> {
    match map(key) {
        KeyTarget::Param(p) => Some(vec![(p, shape.to_vec())]),
        _ => None,
    }
}

#[test]
fn full_size_manifests_are_covered() {
    let device = dalle::device();
    for size in ["mini", "mega"] {
        // min-dalle: encoder.pt and decoder.pt
        let m = manifest(&format!("dalle-{size}-min-dalle.json"));
        let cfg: DalleBartConfig = serde_json::from_value(m["config"].clone()).expect("config");
        let enc = param_shapes(&BartEncoder::<dalle::B>::new(&cfg, &device));
        let dec = param_shapes(&BartDecoder::<dalle::B>::new(&cfg, &device));
        assert_clean(
            &format!("{size} encoder.pt"),
            &coverage(&enc, &keys(&m, "encoder.pt"), &|k, s| {
                pt(k, s, bart_pt_target)
            }),
        );
        assert_clean(
            &format!("{size} decoder.pt"),
            &coverage(&dec, &keys(&m, "decoder.pt"), &|k, s| {
                pt(k, s, bart_pt_target)
            }),
        );
        // flax: one scanned tree for both halves
        let m = manifest(&format!("dalle-{size}-flax.json"));
        let mut both = prefixed("encoder", enc);
        both.extend(prefixed("decoder", dec));
        let target = |k: &str, s: &[usize]| {
            let ts = flax_bart_targets(k, s.len(), cfg.encoder_layers).unwrap_or_default();
            let out: Vec<_> = ts
                .iter()
                .map(|t| (t.path.clone(), flax_target_shape(t, s)))
                .collect();
            Some(if out.is_empty() {
                vec![(k.to_string(), s.to_vec())]
            } else {
                out
            })
        };
        let c = coverage(&both, &keys(&m, "flax_model.msgpack"), &target);
        assert_clean(&format!("{size} flax_model.msgpack"), &c);
        // 12 tensors per encoder layer, 19 per decoder layer, 11 outside the layers
        assert_eq!(both.len(), cfg.encoder_layers * (12 + 19) + 11);
    }
    let vq = param_shapes(&Vqgan::<dalle::B>::new(&VqganConfig::default(), &device));
    let m = manifest("vqgan-f16-16384-min-dalle.json");
    assert_clean(
        "detoker.pt",
        &coverage(&vq, &keys(&m, "detoker.pt"), &|k, s| {
            pt(k, s, vqgan_pt_target)
        }),
    );
    let m = manifest("vqgan-f16-16384-flax.json");
    let target = |k: &str, s: &[usize]| match flax_vqgan_target(k, s.len()) {
        VqganLeaf::Param(t) => Some(vec![(t.path.clone(), flax_target_shape(&t, s))]),
        VqganLeaf::Ignored => None,
        VqganLeaf::Unknown => Some(vec![(k.to_string(), s.to_vec())]),
    };
    let c = coverage(&vq, &keys(&m, "flax_model.msgpack"), &target);
    assert_clean("vqgan flax_model.msgpack", &c);
    assert!(
        c.ignored
            .iter()
            .all(|k| k.starts_with("encoder.") || k.starts_with("quant_conv.")),
        "{:?}",
        c.ignored
    );
    assert!(!c.ignored.is_empty());
}

#[test]
fn tiny_models_load_without_missing_or_unused_keys() {
    for (name, dir) in dalle::layouts() {
        let m = dalle::load(&dir);
        assert!(
            m.report.is_clean(),
            "{name}: missing {:?} unused {:?}",
            m.report.missing,
            m.report.unused
        );
        assert!(
            m.report.ignored.is_empty(),
            "{name}: ignored {:?}",
            m.report.ignored
        );
        assert_eq!(
            m.report.files.len(),
            3,
            "{name}: encoder, decoder and VQGAN loads"
        );
    }
}

/// On the CPU, an f16 checkpoint's decoder projections stay f16 (the decode-step GEMV reads
/// them; the parity tests show the results are unchanged); the rest is widened to f32.
#[test]
fn f16_decoder_projections_stay_f16_on_the_cpu() {
    use burn::tensor::DType;
    let m = dalle::load(&dalle::min_dalle_dir());
    let d = &m.decoder;
    let l0 = &d.layers[0];
    for (what, dtype) in [
        ("lm_head", d.lm_head.weight.val().dtype()),
        ("self_attn.q_proj", l0.self_attn.q_proj.weight.val().dtype()),
        (
            "encoder_attn.k_proj",
            l0.encoder_attn.k_proj.weight.val().dtype(),
        ),
        ("glu.fc2", l0.glu.fc2.weight.val().dtype()),
    ] {
        assert_eq!(dtype, DType::F16, "decoder {what}");
    }
    for (what, dtype) in [
        ("decoder embed_tokens", d.embed_tokens.weight.val().dtype()),
        ("decoder final_ln", d.final_ln.bias.val().dtype()),
        (
            "encoder q_proj",
            m.encoder.layers[0].self_attn.q_proj.weight.val().dtype(),
        ),
    ] {
        assert_eq!(dtype, DType::F32, "{what}");
    }
}

fn load_err(dir: &Path) -> String {
    match DalleMini::<dalle::B>::load(dir, &dalle::device()) {
        Ok(_) => panic!("{}: loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of a tiny layout (with its VQGAN) that a test may break.
fn copy_layout(src: &Path, name: &str) -> std::path::PathBuf {
    let root = dalle::scratch(name);
    let dir = root.join("model");
    std::fs::create_dir_all(dir.join("vqgan")).expect("mkdir");
    dalle::copy_files(src, &dir);
    let vq = if src.join("vqgan").is_dir() {
        src.join("vqgan")
    } else {
        src.parent().expect("parent").join("vqgan")
    };
    dalle::copy_files(&vq, &dir.join("vqgan"));
    dir
}

#[test]
fn missing_files_are_named() {
    let nowhere = dalle::scratch("missing").join("nothing-here");
    assert!(load_err(&nowhere).contains("nothing-here"));
    let dir = copy_layout(&dalle::min_dalle_dir(), "no-vqgan");
    std::fs::remove_dir_all(dir.join("vqgan")).expect("rm");
    let e = load_err(&dir);
    assert!(e.contains("no VQGAN found") && e.contains("vqgan"), "{e}");
    let dir = copy_layout(&dalle::flax_dir(), "no-vocab");
    std::fs::remove_file(dir.join("vocab.json")).expect("rm");
    let e = load_err(&dir);
    assert!(e.contains("vocab.json"), "{e}");
}

#[test]
fn truncated_msgpack_is_reported_with_file_and_key() {
    for (file, name) in [
        ("flax_model.msgpack", "trunc-bart"),
        ("vqgan/flax_model.msgpack", "trunc-vqgan"),
    ] {
        let dir = copy_layout(&dalle::flax_dir(), name);
        let bytes = std::fs::read(dir.join(file)).expect("read");
        std::fs::write(dir.join(file), &bytes[..bytes.len() * 2 / 3]).expect("write");
        let e = load_err(&dir);
        assert!(
            e.contains(file.rsplit('/').next().unwrap()) && e.contains("truncated"),
            "{e}"
        );
        assert!(e.contains("tensor `"), "names the key being read: {e}");
    }
}

#[test]
fn wrong_shapes_are_reported_with_file_and_key() {
    for (src, name, file) in [
        (dalle::min_dalle_dir(), "shape-pt", "encoder.pt"),
        (dalle::flax_dir(), "shape-flax", "flax_model.msgpack"),
    ] {
        let dir = copy_layout(&src, name);
        let cfg_path = dir.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
        cfg["encoder_ffn_dim"] = 80.into();
        std::fs::write(&cfg_path, cfg.to_string()).expect("write");
        let e = load_err(&dir);
        assert!(
            e.contains(file) && e.contains("glu.fc") && e.contains("shape"),
            "{e}"
        );
    }
    // a VQGAN config that does not match the file
    let dir = copy_layout(&dalle::min_dalle_dir(), "shape-vqgan");
    let cfg_path = dir.join("vqgan/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg["embed_dim"] = 8.into();
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let e = load_err(&dir);
    assert!(
        e.contains("detoker.pt") && e.contains("embedding.weight"),
        "{e}"
    );
}

#[test]
fn unsupported_config_flags_are_refused() {
    let dir = copy_layout(&dalle::flax_dir(), "bad-config");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("cfg")).expect("json");
    cfg["use_cosine_attention"] = true.into();
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("use_cosine_attention"),
        "{e}"
    );
}

#[test]
fn min_dalle_folder_without_config_infers_it() {
    let dir = copy_layout(&dalle::min_dalle_dir(), "no-config");
    std::fs::remove_file(dir.join("config.json")).expect("rm");
    // heads = d / 64 = 1 for the tiny d 64 model: loads (shapes do not depend on heads)
    let m = dalle::load(&dir);
    assert_eq!(
        (
            m.config.d_model,
            m.config.encoder_layers,
            m.config.image_vocab_size
        ),
        (64, 2, 1024)
    );
    assert_eq!(m.config.decoder_start_token_id, 1024);
}
