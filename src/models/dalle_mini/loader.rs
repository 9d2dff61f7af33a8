//! Finding the files of a DALL·E Mini/Mega folder, reading its configs and loading the three
//! modules (the data-free key-coverage check used against the full-size manifests is
//! `coverage.rs`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;

use super::config::{DalleBartConfig, VqganConfig};
use super::flax_file;
use super::text_normalizer::HashtagSplitter;
use super::tokenizer::DalleTokenizer;
use super::weights;
use super::{BartDecoder, BartEncoder, DalleMini, TextNormalizer, Vqgan};
use crate::error::{Error, Result};
use crate::nn::WeightLayout;
use crate::weights::{KeyTarget, LoadReport, TensorFile, load_into_with, require_complete};

/// Which published weight layout a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// dalle-mini's `flax_model.msgpack`.
    Flax,
    /// min-dalle's `encoder.pt` + `decoder.pt`.
    MinDalle,
}

const FLAX_FILE: &str = "flax_model.msgpack";
const WORD_LIST: &str = "enwiki-words-frequency.txt";

/// The layout of a DalleBart folder, or `None` if `path` is not one.
pub fn detect(path: &Path) -> Option<Layout> {
    if path.join(FLAX_FILE).is_file() && path.join("config.json").is_file() {
        return Some(Layout::Flax);
    }
    min_dalle_files(path).map(|_| Layout::MinDalle)
}

/// `encoder.pt` / `decoder.pt`, or the `.safetensors` copies the reference tools write.
fn min_dalle_files(path: &Path) -> Option<(PathBuf, PathBuf)> {
    ["pt", "safetensors"].iter().find_map(|ext| {
        let (e, d) = (
            path.join(format!("encoder.{ext}")),
            path.join(format!("decoder.{ext}")),
        );
        (e.is_file() && d.is_file()).then_some((e, d))
    })
}

/// The VQGAN weight file: in `given`, or next to / inside the DalleBart folder.
fn find_vqgan(path: &Path, given: Option<&Path>) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = match given {
        Some(p) if p.is_file() => return Ok(p.to_path_buf()),
        Some(p) => vec![p.to_path_buf()],
        None => {
            let parent = path.parent().unwrap_or(path);
            vec![
                path.join("vqgan"),
                parent.join("vqgan"),
                parent.join("vqgan_imagenet_f16_16384"),
                path.to_path_buf(),
            ]
        }
    };
    for dir in &dirs {
        for name in [
            FLAX_FILE,
            "detoker.pt",
            "detoker.safetensors",
            "last.ckpt",
            "model.ckpt",
        ] {
            let f = dir.join(name);
            // the DalleBart folder's own flax file is not a VQGAN
            if f.is_file() && !(dir == path && name == FLAX_FILE) {
                return Ok(f);
            }
        }
    }
    let looked = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::UnknownModel {
        path: path.into(),
        message: format!(
            "no VQGAN found (flax_model.msgpack, detoker.pt or a taming .ckpt in: {looked})"
        ),
    })
}

/// Shapes decide the config of a min-dalle folder without `config.json` (heads of 64 dims).
fn infer_config(enc: &TensorFile, dec: &TensorFile) -> Result<DalleBartConfig> {
    // The first `rank` dims of a tensor, each at least 1.
    let dims = |f: &TensorFile, key: &str, rank: usize| -> Result<Vec<usize>> {
        let err = |message: &str| Error::Tensor {
            path: f.path.clone(),
            key: key.into(),
            message: format!("{message} (needed to infer the config; add a config.json)"),
        };
        let shape = f
            .tensors
            .get(key)
            .ok_or_else(|| err("not in the file"))?
            .shape
            .to_vec();
        if shape.len() < rank || shape.contains(&0) {
            return Err(err(&format!("shape {shape:?}")));
        }
        Ok(shape)
    };
    let layers = |f: &TensorFile| {
        f.keys()
            .filter_map(|k| {
                k.strip_prefix("layers.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1)
    };
    let text = dims(enc, "embed_tokens.weight", 2)?;
    let image = dims(dec, "embed_tokens.weight", 1)?;
    let ffn = dims(enc, "layers.0.glu.fc0.weight", 1)?;
    let (d, heads) = (text[1], (text[1] / 64).max(1));
    let json = serde_json::json!({
        "d_model": d, "encoder_layers": layers(enc), "decoder_layers": layers(dec),
        "encoder_attention_heads": heads, "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn[0], "decoder_ffn_dim": ffn[0],
        "encoder_vocab_size": text[0], "image_vocab_size": image[0] - 1,
        "max_text_length": dims(enc, "embed_positions.weight", 1)?[0],
        "image_length": dims(dec, "embed_positions.weight", 1)?[0],
        // dalle-mini's start token is the codebook size, 16384, also for mega's padded rows
        "decoder_start_token_id": (image[0] - 1).min(16384),
    });
    let cfg: DalleBartConfig = serde_json::from_value(json).map_err(|e| Error::Config {
        path: enc.path.clone(),
        message: e.to_string(),
    })?;
    cfg.validate().map_err(|message| Error::Config {
        path: enc.path.clone(),
        message,
    })?;
    tracing::info!(
        d_model = d,
        heads,
        "no config.json: DalleBart config inferred from tensor shapes"
    );
    Ok(cfg)
}

/// How a part's parameters are stored.
#[derive(Clone, Copy)]
enum Store {
    /// All as this dtype.
    All(DType),
    /// As this dtype, except the projection weights an f16 file has in f16 where the backend
    /// reads them so ([`keep_f16`]): the decoder, whose steps stream every weight.
    KeepF16(DType),
}

/// Whether the loader keeps parameter `path` (as stored, `file` dtype) in f16 where the model
/// computes in f32: the BART projection weights where their `Linear` reads f16 as it is (the
/// CPU backend's GEMV and GEMM, see `nn::WeightLayout::OutIn`). Everything else (norms,
/// embeddings, other backends) is widened at load.
fn keep_f16<B: Backend>(path: &str, file: DType) -> bool {
    const PROJECTIONS: [&str; 8] = [
        "k_proj", "v_proj", "q_proj", "out_proj", "fc0", "fc1", "fc2", "lm_head",
    ];
    let mut seg = path.rsplit('.');
    file == DType::F16
        && WeightLayout::OutIn.reads_f16::<B>()
        && seg.next() == Some("weight")
        && seg.next().is_some_and(|s| PROJECTIONS.contains(&s))
}

fn load_part<B: Backend, M: Module<B>>(
    module: M,
    file: &TensorFile,
    map: &dyn Fn(&str) -> KeyTarget,
    store: Store,
) -> Result<(M, LoadReport)> {
    let dtype = move |path: &str, file_dtype: DType| match store {
        Store::KeepF16(DType::F32) if keep_f16::<B>(path, file_dtype) => DType::F16,
        Store::All(d) | Store::KeepF16(d) => d,
    };
    let (module, report) = load_into_with(module, file, map, &dtype)?;
    require_complete(&report, &file.path)?;
    if !report.unused.is_empty() {
        tracing::warn!(file = %file.path.display(), unused = ?report.unused, "tensors the model does not use");
    }
    Ok((module, report))
}

/// BART (encoder, decoder) is stored as `dtype`; the VQGAN always in f32, as the SD VAE.
pub(super) fn load<B: Backend>(
    path: &Path,
    vqgan: Option<&Path>,
    device: &B::Device,
    dtype: DType,
) -> Result<DalleMini<B>> {
    let layout = detect(path).ok_or_else(|| Error::UnknownModel {
        path: path.into(),
        message: "not a DALL·E Mini/Mega folder (expected flax_model.msgpack + config.json, or encoder.pt + decoder.pt)".into(),
    })?;
    let config_path = path.join("config.json");
    let mut report = LoadReport::default();
    let (config, encoder, decoder) = match layout {
        Layout::Flax => {
            let config = DalleBartConfig::from_file(&config_path)?;
            let file = flax_file::flax_bart_file(
                &path.join(FLAX_FILE),
                config.encoder_layers,
                config.decoder_layers,
            )?;
            let (encoder, r) = load_part(
                BartEncoder::new(&config, device),
                &file,
                &weights::flax_bart_target("encoder"),
                Store::All(dtype),
            )?;
            report.merge(r);
            let (decoder, r) = load_part(
                BartDecoder::new(&config, device),
                &file,
                &weights::flax_bart_target("decoder"),
                Store::KeepF16(dtype),
            )?;
            report.merge(r);
            (config, encoder, decoder)
        }
        Layout::MinDalle => {
            let (enc_path, dec_path) = min_dalle_files(path).expect("detected");
            let (enc_file, dec_file) = (TensorFile::open(&enc_path)?, TensorFile::open(&dec_path)?);
            let config = if config_path.is_file() {
                DalleBartConfig::from_file(&config_path)?
            } else {
                infer_config(&enc_file, &dec_file)?
            };
            let (encoder, r) = load_part(
                BartEncoder::new(&config, device),
                &enc_file,
                &weights::bart_pt_target,
                Store::All(dtype),
            )?;
            report.merge(r);
            let (decoder, r) = load_part(
                BartDecoder::new(&config, device),
                &dec_file,
                &weights::bart_pt_target,
                Store::KeepF16(dtype),
            )?;
            report.merge(r);
            (config, encoder, decoder)
        }
    };
    let vq_path = find_vqgan(path, vqgan)?;
    let vq_cfg_path = vq_path.with_file_name("config.json");
    let vqgan_config = if vq_cfg_path.is_file() {
        VqganConfig::from_file(&vq_cfg_path)?
    } else {
        VqganConfig::default()
    };
    let file = if vq_path.extension().is_some_and(|e| e == "msgpack") {
        flax_file::flax_vqgan_file(&vq_path)?
    } else {
        TensorFile::open(&vq_path)?
    };
    let map: &dyn Fn(&str) -> KeyTarget = if vq_path.extension().is_some_and(|e| e == "msgpack") {
        &weights::flax_vqgan_key
    } else {
        &weights::vqgan_pt_target
    };
    let (vqgan, r) = load_part(
        Vqgan::new(&vqgan_config, device),
        &file,
        map,
        Store::All(DType::F32),
    )?;
    report.merge(r);
    let grid = vqgan_config.grid();
    if grid * grid != config.image_length {
        return Err(Error::Config {
            path: vq_cfg_path,
            message: format!(
                "the VQGAN decodes {grid}×{grid} tokens, the DalleBart makes {}",
                config.image_length
            ),
        });
    }
    let tokenizer = DalleTokenizer::from_dir(path, config.max_text_length)?;
    // dalle-mini's repos carry the word list its hashtag splitter reads (not shipped with kiln)
    let words = path.join(WORD_LIST);
    let hashtags = match words.is_file() {
        true => Some(HashtagSplitter::from_word_list(
            &std::fs::read_to_string(&words).map_err(|e| Error::io(&words, e))?,
        )),
        false => None,
    };
    tracing::info!(layout = ?layout, d_model = config.d_model, layers = config.decoder_layers, applied = report.applied, "DALL·E model loaded");
    Ok(DalleMini {
        config,
        vqgan_config,
        layout,
        encoder,
        decoder,
        vqgan,
        tokenizer,
        normalizer: TextNormalizer::new(hashtags),
        report,
        device: device.clone(),
    })
}
