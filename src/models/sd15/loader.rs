//! Finding and loading SD 1.5 weights: a diffusers folder, or a single CompVis/ldm file
//! (`.safetensors` / `.ckpt`), in fp32, fp16 or bf16.

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use tracing::{info, warn};

use super::autoencoder_tiny::AutoencoderTiny;
use super::clip::ClipTextModel;
use super::config::{ClipConfig, UNetConfig, VaeConfig, components_agree};
use super::tokenizer::ClipTokenizer;
use super::unet_2d::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use super::weights::{self, WeightSources};
use crate::error::{Error, Result};
use crate::schedulers::SchedulerConfig;
use crate::weights::{KeyTarget, LoadReport, TensorFile, load_into_as, require_complete};

/// Where the weights of a model are.
#[derive(Debug, Clone)]
pub enum Sd15Layout {
    /// `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/` under one folder.
    Diffusers { root: PathBuf },
    /// One ldm checkpoint; `config_dir` is a diffusers folder whose configs describe it (as
    /// diffusers' `from_single_file(config=…)`), else SD 1.5's.
    SingleFile {
        file: PathBuf,
        config_dir: Option<PathBuf>,
    },
}

const WEIGHT_EXTS: [&str; 5] = ["safetensors", "ckpt", "bin", "pt", "pth"];

impl Sd15Layout {
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_file() {
            let config_dir = path
                .parent()
                .filter(|d| d.join("unet").join("config.json").is_file())
                .map(Path::to_path_buf);
            return Ok(Sd15Layout::SingleFile {
                file: path.to_path_buf(),
                config_dir,
            });
        }
        if !path.is_dir() {
            return Err(Error::io(path, "no such file or folder"));
        }
        if path.join("unet").is_dir() {
            return Ok(Sd15Layout::Diffusers {
                root: path.to_path_buf(),
            });
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| WEIGHT_EXTS.contains(&e))
            })
            .collect();
        files.sort();
        match files.len() {
            1 => Ok(Sd15Layout::SingleFile {
                file: files.remove(0),
                config_dir: None,
            }),
            0 => Err(Error::UnknownModel {
                path: path.into(),
                message: "no `unet/` folder (diffusers layout) and no .safetensors/.ckpt file"
                    .into(),
            }),
            _ => Err(Error::UnknownModel {
                path: path.into(),
                message: format!(
                    "several checkpoint files; pass one of them: {}",
                    list(&files)
                ),
            }),
        }
    }
}

fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first existing weight file of a diffusers component folder, preferring safetensors and
/// full precision (`model.safetensors`, `model.fp16.safetensors`, `model.bin`, …).
pub(super) fn component_file(dir: &Path, stems: &[&str]) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for ext in ["safetensors", "bin"] {
        for stem in stems {
            for variant in ["", ".fp16", ".bf16"] {
                let p = dir.join(format!("{stem}{variant}.{ext}"));
                if p.is_file() {
                    return Ok(p);
                }
                tried.push(p);
            }
        }
    }
    Err(Error::io(
        dir,
        format!(
            "no weight file; looked for {}",
            list(&tried[..3.min(tried.len())])
        ),
    ))
}

pub struct Components<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel<B>,
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    /// TAESD, when installed with [`StableDiffusion::set_taesd`](super::StableDiffusion::set_taesd).
    pub taesd: Option<AutoencoderTiny<B>>,
    pub unet_config: UNetConfig,
    pub vae_config: VaeConfig,
    pub clip_config: ClipConfig,
    pub scheduler_config: SchedulerConfig,
    pub report: LoadReport,
    pub sources: WeightSources,
}

/// The config at `path` when the file exists, `T`'s defaults (SD 1.5's) otherwise.
pub(super) fn config_or_default<T: Default>(
    path: &Path,
    load: fn(&Path) -> Result<T>,
) -> Result<T> {
    if path.is_file() {
        load(path)
    } else {
        Ok(T::default())
    }
}

/// The configs and tokenizer of a model: from the diffusers folder `dir` where it has them,
/// SD 1.5's otherwise.
struct Configs {
    clip: ClipConfig,
    unet: UNetConfig,
    vae: VaeConfig,
    scheduler: SchedulerConfig,
    tokenizer: ClipTokenizer,
}

impl Configs {
    fn read(dir: Option<&Path>) -> Result<Self> {
        let path = |rel: &str| dir.map(|d| d.join(rel)).unwrap_or_default();
        let cfg = Self {
            clip: config_or_default(&path("text_encoder/config.json"), ClipConfig::load)?,
            unet: config_or_default(&path("unet/config.json"), UNetConfig::load)?,
            vae: config_or_default(&path("vae/config.json"), VaeConfig::load)?,
            scheduler: config_or_default(
                &path("scheduler/scheduler_config.json"),
                SchedulerConfig::load,
            )?,
            tokenizer: match dir.map(|d| d.join("tokenizer")).filter(|t| t.is_dir()) {
                Some(t) => ClipTokenizer::from_dir(&t)?,
                None => ClipTokenizer::builtin()?,
            },
        };
        components_agree(&cfg.clip, &cfg.unet, &cfg.vae, &path("unet/config.json"))?;
        Ok(cfg)
    }
}

/// A weight file and how its keys map onto one component's parameters.
struct Source<'a> {
    path: &'a Path,
    file: &'a TensorFile,
    map: &'a dyn Fn(&str) -> KeyTarget,
}

fn finish<M>(
    loaded: Result<(M, LoadReport)>,
    file: &Path,
    what: &str,
    report: &mut LoadReport,
) -> Result<M> {
    let (module, r) = loaded?;
    require_complete(&r, file)?;
    if !r.unused.is_empty() {
        warn!(file = %file.display(), "{what}: {} unused tensor(s), e.g. {}", r.unused.len(), r.unused.iter().take(3).cloned().collect::<Vec<_>>().join(", "));
    }
    info!(file = %file.display(), applied = r.applied, ignored = r.ignored.len(), unused = r.unused.len(), "loaded {what}");
    report.merge(r);
    Ok(module)
}

/// `map`, except that without the VAE encoder its keys (by file name or by the parameter they
/// feed) are ignored: they are expected in the file even when the encoder is not built.
fn vae_without_encoder(
    map: impl Fn(&str) -> KeyTarget,
    with_encoder: bool,
) -> impl Fn(&str) -> KeyTarget {
    let encoder = |k: &str| k.starts_with("encoder.") || k.starts_with("quant_conv.");
    move |k: &str| match map(k) {
        _ if !with_encoder && encoder(k) => KeyTarget::Ignore,
        KeyTarget::Param(p) if !with_encoder && encoder(&p) => KeyTarget::Ignore,
        t => t,
    }
}

/// Builds the three modules from their sources, UNet and text encoder as `dtype`, the VAE too
/// unless its config asks for f32 (`force_upcast`).
fn build<B: Backend>(
    cfg: Configs,
    [text, unet, vae]: [Source<'_>; 3],
    with_encoder: bool,
    device: &B::Device,
    dtype: DType,
    mut report: LoadReport,
    sources: WeightSources,
) -> Result<Components<B>> {
    let vae_dtype = if cfg.vae.force_upcast {
        DType::F32
    } else {
        dtype
    };
    let text_encoder = finish(
        load_into_as(
            ClipTextModel::new(&cfg.clip, device),
            text.file,
            text.map,
            dtype,
        ),
        text.path,
        "text encoder",
        &mut report,
    )?;
    let unet_module = finish(
        load_into_as(
            UNet2DConditionModel::new(&cfg.unet, device),
            unet.file,
            unet.map,
            dtype,
        ),
        unet.path,
        "unet",
        &mut report,
    )?;
    let vae_module = finish(
        load_into_as(
            AutoencoderKL::new(&cfg.vae, with_encoder, device),
            vae.file,
            vae.map,
            vae_dtype,
        ),
        vae.path,
        "vae",
        &mut report,
    )?;
    Ok(Components {
        tokenizer: cfg.tokenizer,
        text_encoder,
        unet: unet_module,
        vae: vae_module,
        taesd: None,
        unet_config: cfg.unet,
        vae_config: cfg.vae,
        clip_config: cfg.clip,
        scheduler_config: cfg.scheduler,
        report,
        sources,
    })
}

/// Loads tokenizer, text encoder, UNet and VAE. `with_encoder` keeps the VAE encoder (img2img).
/// UNet and text encoder are stored as `dtype`; the VAE too unless its config asks for f32
/// (`force_upcast`).
pub fn load<B: Backend>(
    layout: &Sd15Layout,
    with_encoder: bool,
    device: &B::Device,
    dtype: DType,
) -> Result<Components<B>> {
    match layout {
        Sd15Layout::Diffusers { root } => {
            let cfg = Configs::read(Some(root))?;
            let text = component_file(&root.join("text_encoder"), &["model", "pytorch_model"])?;
            let unet = component_file(&root.join("unet"), &["diffusion_pytorch_model"])?;
            let vae = component_file(&root.join("vae"), &["diffusion_pytorch_model"])?;
            let (tf, uf, vf) = (
                TensorFile::open(&text)?,
                TensorFile::open(&unet)?,
                TensorFile::open(&vae)?,
            );
            let vae_map = vae_without_encoder(weights::vae_key, with_encoder);
            let origin = WeightSources {
                text_encoder: text.clone(),
                unet: unet.clone(),
                ldm: false,
            };
            // The key maps borrow their configs; `build` takes the originals.
            let unet_cfg = cfg.unet.clone();
            let unet_map = origin.unet_map(&unet_cfg);
            let sources = [
                Source {
                    path: &text,
                    file: &tf,
                    map: &origin.text_encoder_map(),
                },
                Source {
                    path: &unet,
                    file: &uf,
                    map: &unet_map,
                },
                Source {
                    path: &vae,
                    file: &vf,
                    map: &vae_map,
                },
            ];
            build(
                cfg,
                sources,
                with_encoder,
                device,
                dtype,
                LoadReport::default(),
                origin,
            )
        }
        Sd15Layout::SingleFile {
            file: f,
            config_dir,
        } => {
            let file = TensorFile::open(f)?;
            let dir = config_dir.as_deref();
            let mut cfg = Configs::read(dir)?;
            if dir.is_none() {
                // Inpainting checkpoints have a 9-channel conv_in; read it off the file.
                let key = "model.diffusion_model.input_blocks.0.0.weight";
                if let Some(s) = file.tensors.get(key) {
                    cfg.unet.in_channels = match s.shape.as_slice() {
                        [_, c, _, _] => *c,
                        other => {
                            return Err(Error::Tensor {
                                path: f.clone(),
                                key: key.into(),
                                message: format!("shape {other:?}; the UNet's conv_in is 4-d"),
                            });
                        }
                    };
                }
            }
            // The key maps borrow their configs; `build` takes the originals.
            let (unet_cfg, vae_cfg) = (cfg.unet.clone(), cfg.vae.clone());
            let origin = WeightSources {
                text_encoder: f.clone(),
                unet: f.clone(),
                ldm: true,
            };
            let unet_map = origin.unet_map(&unet_cfg);
            let vae_full = weights::ldm_vae_key(&vae_cfg);
            // Keys no component claims (and that are not known extras) are unused.
            let mut report = LoadReport::default();
            for key in file.keys() {
                let claimed = [
                    (origin.text_encoder_map())(key),
                    unet_map(key),
                    vae_full(key),
                ]
                .iter()
                .any(|t| !matches!(t, KeyTarget::Other));
                if !claimed {
                    report.unused.push(key.to_string());
                }
            }
            if !report.unused.is_empty() {
                warn!(file = %f.display(), "{} unused tensor(s), e.g. {}", report.unused.len(), report.unused.iter().take(3).cloned().collect::<Vec<_>>().join(", "));
            }
            let vae_map = vae_without_encoder(&vae_full, with_encoder);
            let sources = [
                Source {
                    path: f,
                    file: &file,
                    map: &origin.text_encoder_map(),
                },
                Source {
                    path: f,
                    file: &file,
                    map: &unet_map,
                },
                Source {
                    path: f,
                    file: &file,
                    map: &vae_map,
                },
            ];
            build(cfg, sources, with_encoder, device, dtype, report, origin)
        }
    }
}
