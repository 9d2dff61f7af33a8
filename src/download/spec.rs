//! Which files kiln fetches for each model id, from which Hub repository and revision, and where
//! they land under `models/<id>/` (the layout the loaders read).
//!
//! Revisions (found offline, in public code; not checked against the live Hub from here):
//! - SD 1.5 is pinned to the commit that `main` of `stable-diffusion-v1-5/stable-diffusion-v1-5`
//!   pointed to in an Aug 2025 `huggingface_hub` cache scan (the repository kept the history of
//!   the original `runwayml/stable-diffusion-v1-5`, whose cache snapshots carry the same hash).
//!   That scan and other projects' pins show the configs, the tokenizer files, the three
//!   `*.fp16.safetensors` and `vae/diffusion_pytorch_model.safetensors` at it; the fp32
//!   `text_encoder/model.safetensors` and `unet/diffusion_pytorch_model.safetensors` were not
//!   seen listed there, nor were the safety checker's files (`safety_checker/config.json`,
//!   `safety_checker/model{.fp16}.safetensors`, `feature_extractor/preprocessor_config.json`),
//!   which the repository's `main` has.
//! - The VQGAN is pinned to the commit dalle-mini's own inference code loads.
//! - `dalle-mini/dalle-mini` and `dalle-mini/dalle-mega` follow `main`: no public pin of a commit
//!   of these model repositories was found (dalle-mini's code loads them from W&B artifacts with
//!   `DALLE_COMMIT_ID = None`; the only hash seen, `5570ace…`, is a model-card-only commit of
//!   dalle-mini/dalle-mini with no evidence that the weights exist there).
//!
//! The commit actually served (`X-Repo-Commit`) is recorded in `kiln-source.json`, and
//! `kiln download --revision` overrides the main repository's revision.

use serde::{Deserialize, Serialize};

use super::error::{DownloadError, Result};
use crate::models::ModelKind;
use crate::models::family::{LORAS_DIR, TAESD_DIR};

pub const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// `refs/main` in darkshapes/nnll tests/test_model_identity_precision.py (cache scan, Aug 2025).
pub const SD15_REVISION: &str = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14";
pub const DALLE_MINI_REPO: &str = "dalle-mini/dalle-mini";
pub const DALLE_MEGA_REPO: &str = "dalle-mini/dalle-mega";
pub const VQGAN_REPO: &str = "dalle-mini/vqgan_imagenet_f16_16384";
/// No public pin of a commit of the DalleBart repositories: follow `main` (see the module docs).
pub const DALLE_REVISION: &str = "main";
/// `VQGAN_COMMIT_ID` in borisdayma/dalle-mini tools/inference/inference_pipeline.ipynb (also HELM).
pub const VQGAN_REVISION: &str = "e93a26e7707683d349bf5d5c41c5b0ef69b677a9";
/// TAESD, SD 1.x's tiny autoencoder (diffusers `AutoencoderTiny` folder). No public pin of a
/// commit was found: `main`, and the commit served is recorded.
pub const TAESD_REPO: &str = "madebyollin/taesd";
/// LCM-LoRA for SD 1.5 (kohya-style keys). No public pin found either: `main`, recorded.
pub const LCM_LORA_REPO: &str = "latent-consistency/lcm-lora-sdv1-5";

/// What a download holds: a model, or an add-on an SD 1.5 model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Contents {
    Model(ModelKind),
    AddOn(AddOn),
}

/// Downloads that are not models of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddOn {
    /// The tiny autoencoder (`models/taesd/`): streamed previews and `vae: taesd`.
    Taesd,
    /// A LoRA file (`models/loras/<id>/`).
    Lora,
}

impl Contents {
    pub fn as_str(self) -> &'static str {
        match self {
            Contents::Model(k) => k.as_str(),
            Contents::AddOn(AddOn::Taesd) => "taesd",
            Contents::AddOn(AddOn::Lora) => "lora",
        }
    }
}

/// The add-on downloads, by id: (id, what it is, repository, files).
const ADD_ONS: [(&str, AddOn, &str, &[&str]); 2] = [
    (
        TAESD_DIR,
        AddOn::Taesd,
        TAESD_REPO,
        &["config.json", "diffusion_pytorch_model.safetensors"],
    ),
    (
        "lcm-lora-sdv1-5",
        AddOn::Lora,
        LCM_LORA_REPO,
        &["pytorch_lora_weights.safetensors"],
    ),
];

/// One file of a repository and its path inside the model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    pub remote: String,
    pub local: String,
}

/// Files taken from one Hub repository at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    pub repo: String,
    pub revision: String,
    pub files: Vec<RepoFile>,
}

/// Everything `kiln download <id>` fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadRecipe {
    pub id: String,
    pub kind: Contents,
    /// The folder under the models directory: the id, or `loras/<id>` for a LoRA.
    pub dir: String,
    /// `fp16`/`fp32` for SD 1.5 (which files are chosen); `published` for DALL·E (one variant).
    pub precision: String,
    pub sources: Vec<RepoSpec>,
    /// Rough total for messages only (the Hub's headers are what is checked).
    pub approx_bytes: Option<u64>,
}

impl DownloadRecipe {
    /// Every (repository, file) pair, in download order.
    pub fn files(&self) -> impl Iterator<Item = (&RepoSpec, &RepoFile)> {
        self.sources
            .iter()
            .flat_map(|s| s.files.iter().map(move |f| (s, f)))
    }

    /// Replaces the revision of the main (first) repository.
    pub fn with_revision(mut self, revision: &str) -> Self {
        if let Some(s) = self.sources.first_mut() {
            s.revision = revision.to_string();
        }
        self
    }
}

fn same(names: &[&str]) -> Vec<RepoFile> {
    names
        .iter()
        .map(|n| RepoFile {
            remote: n.to_string(),
            local: n.to_string(),
        })
        .collect()
}

fn repo(repo: &str, revision: &str, files: Vec<RepoFile>) -> RepoSpec {
    RepoSpec {
        repo: repo.into(),
        revision: revision.into(),
        files,
    }
}

/// SD 1.5 diffusers folder: configs, tokenizer, the three weight files and the safety checker
/// (`safety_checker/` + `feature_extractor/`). The loaders prefer `model.safetensors` but also
/// find `model.fp16.safetensors`, so the fp16 files keep their names.
fn sd15(fp16: bool) -> DownloadRecipe {
    let v = if fp16 { ".fp16" } else { "" };
    let text = format!("text_encoder/model{v}.safetensors");
    let safety = format!("safety_checker/model{v}.safetensors");
    let unet = format!("unet/diffusion_pytorch_model{v}.safetensors");
    let vae = format!("vae/diffusion_pytorch_model{v}.safetensors");
    let mut files = same(&[
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "safety_checker/config.json",
        "feature_extractor/preprocessor_config.json",
    ]);
    files.extend(same(&[&text, &unet, &vae, &safety]));
    DownloadRecipe {
        id: ModelKind::Sd15.as_str().into(),
        kind: Contents::Model(ModelKind::Sd15),
        dir: ModelKind::Sd15.as_str().into(),
        precision: if fp16 { "fp16" } else { "fp32" }.into(),
        sources: vec![repo(SD15_REPO, SD15_REVISION, files)],
        // ≈ 246 MB + 1.72 GB + 167 MB + 608 MB (safety checker) in fp16, twice that in fp32
        approx_bytes: Some(if fp16 { 2_741_000_000 } else { 5_481_000_000 }),
    }
}

/// DalleBart flax folder + the word list of the hashtag splitter + the VQGAN in `vqgan/` (the
/// first place the DALL·E loader looks). dalle-mega's repository has no word list of its own
/// (transformers' port reads dalle-mini's), so it comes from dalle-mini.
fn dalle(kind: ModelKind, main_repo: &str) -> DownloadRecipe {
    let mut sources = vec![repo(
        main_repo,
        DALLE_REVISION,
        same(&[
            "config.json",
            "flax_model.msgpack",
            "vocab.json",
            "merges.txt",
        ]),
    )];
    let words = same(&["enwiki-words-frequency.txt"]);
    match kind {
        ModelKind::DalleMini => sources[0].files.extend(words),
        _ => sources.push(repo(DALLE_MINI_REPO, DALLE_REVISION, words)),
    }
    let vq = ["config.json", "flax_model.msgpack"]
        .iter()
        .map(|n| RepoFile {
            remote: n.to_string(),
            local: format!("vqgan/{n}"),
        })
        .collect();
    sources.push(repo(VQGAN_REPO, VQGAN_REVISION, vq));
    DownloadRecipe {
        id: kind.as_str().into(),
        kind: Contents::Model(kind),
        dir: kind.as_str().into(),
        precision: "published".into(),
        sources,
        approx_bytes: None,
    }
}

/// An add-on download: the repository's files as they are, at `main`.
fn add_on(id: &str, what: AddOn, repo_id: &str, files: &[&str]) -> DownloadRecipe {
    DownloadRecipe {
        id: id.into(),
        kind: Contents::AddOn(what),
        // `models/loras/<id>/`: the folder form the LoRA library reads (one `.safetensors`,
        // named after the folder).
        dir: match what {
            AddOn::Lora => format!("{LORAS_DIR}/{id}"),
            AddOn::Taesd => TAESD_DIR.into(),
        },
        precision: "published".into(),
        sources: vec![repo(repo_id, "main", same(files))],
        approx_bytes: None,
    }
}

/// Every id `kiln download` takes: the models, then the add-ons.
pub fn known_ids() -> Vec<&'static str> {
    let models = ModelKind::ALL.iter().map(|k| k.as_str());
    models.chain(ADD_ONS.iter().map(|a| a.0)).collect()
}

/// The recipe of a model id (a [`ModelKind`]) or an add-on id; `fp16` picks SD 1.5's
/// half-precision files (the others have one variant).
pub fn recipe(id: &str, fp16: bool) -> Result<DownloadRecipe> {
    if let Some(&(id, what, repo_id, files)) = ADD_ONS.iter().find(|a| a.0 == id) {
        return Ok(add_on(id, what, repo_id, files));
    }
    let kind: ModelKind = id
        .parse()
        .map_err(|_| DownloadError::UnknownModel(id.to_string()))?;
    Ok(match kind {
        ModelKind::Sd15 => sd15(fp16),
        ModelKind::DalleMini => dalle(kind, DALLE_MINI_REPO),
        ModelKind::DalleMega => dalle(kind, DALLE_MEGA_REPO),
    })
}

/// `all` → every model id (not the add-ons); otherwise the ids given, checked and without repeats.
pub fn expand_ids(ids: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        let list: Vec<&str> = if id == "all" {
            ModelKind::ALL.iter().map(|k| k.as_str()).collect()
        } else {
            vec![id.as_str()]
        };
        for one in list {
            if !known_ids().contains(&one) {
                return Err(DownloadError::UnknownModel(one.to_string()));
            }
            if !out.iter().any(|o| o == one) {
                out.push(one.to_string());
            }
        }
    }
    Ok(out)
}
