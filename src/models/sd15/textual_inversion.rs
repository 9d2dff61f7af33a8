//! Textual-inversion embeddings: files → vectors for the text encoder's token-embedding space.
//!
//! Formats (A1111's `create_embedding_from_data` order, `modules/textual_inversion/`):
//! A1111 pickles `{"string_to_param": {"*": [n, D]}, ...}` (`.pt`, `.bin`), any file with a
//! single tensor: A1111's `{"emb_params": [n, D]}` safetensors and diffusers'
//! `learned_embeds.{safetensors,bin}` `{"<token>": [D] or [n, D]}`. SDXL files (`clip_g` +
//! `clip_l`) and other widths (SD 2.x's 1024) are refused with the reason. The word that calls
//! an embedding is its file stem.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::models::config::MAX_CHANNELS;
use crate::weights::TensorFile;

/// The most vectors one embedding may have: it must fit one 75-token chunk.
pub const MAX_VECTORS: usize = super::prompt::CHUNK_LEN;

/// One embedding: `count` vectors of `dim` values.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub name: String,
    pub path: PathBuf,
    pub dim: usize,
    vectors: Vec<f32>,
}

/// What the list endpoint shows of an embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    pub name: String,
    pub vectors: usize,
    pub path: PathBuf,
}

const EXTENSIONS: [&str; 3] = ["safetensors", "pt", "bin"];

impl Embedding {
    /// Reads `path` for a text encoder of width `hidden_size` (768 for SD 1.x).
    pub fn load(path: &Path, hidden_size: usize) -> Result<Self> {
        Self::read_for(path, Some(hidden_size))
    }

    /// Reads `path` whatever its width (for listings: `dim` says which models can use it).
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_for(path, None)
    }

    fn read_for(path: &Path, hidden_size: Option<usize>) -> Result<Self> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Error::io(path, "an embedding's file name must be valid UTF-8"))?
            .to_string();
        let file = TensorFile::open(path).map_err(|e| match e {
            // Pickles are parsed, never run, so a pickled module (A1111 files from torch ≤ 1.11
            // kept `string_to_param` as an `nn.ParameterDict`) cannot be read.
            Error::WeightFile { path, message } if !is_safetensors(&path) => Error::WeightFile {
                path,
                message: format!(
                    "{message} (an old A1111 .pt whose `string_to_param` is a torch module? \
                     re-save it as .safetensors)"
                ),
            },
            e => e,
        })?;
        let keys: Vec<&str> = file.keys().collect();
        let bad = |message: String| Error::WeightFile {
            path: path.into(),
            message,
        };
        let params: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| k.starts_with("string_to_param."))
            .collect();
        let key = if !params.is_empty() {
            if params.len() != 1 {
                return Err(bad(format!(
                    "the embedding file has {} terms in `string_to_param` ({}); one is supported",
                    params.len(),
                    params.join(", ")
                )));
            }
            params[0]
        } else if keys.contains(&"clip_g") && keys.contains(&"clip_l") {
            return Err(bad(
                "an SDXL embedding (`clip_g` + `clip_l`); this model is SD 1.x".into(),
            ));
        } else if let [only] = keys.as_slice() {
            only
        } else {
            return Err(bad(format!(
                "not a textual-inversion embedding: expected `string_to_param` (A1111) or a single \
                 tensor (A1111 `emb_params`, diffusers `learned_embeds`), found {}",
                keys.join(", ")
            )));
        };
        let tensor_err = |message: String| Error::Tensor {
            path: path.into(),
            key: key.into(),
            message,
        };
        // The shape is checked before the data is read: the file's header sizes the read.
        let shape = file
            .tensors
            .get(key)
            .map(|t| t.shape.to_vec())
            .unwrap_or_default();
        let (count, dim) = match shape.as_slice() {
            [d] if *d > 0 => (1, *d),
            [n, d] if *d > 0 => (*n, *d),
            s => return Err(tensor_err(format!("shape {s:?}; expected [D] or [n, D]"))),
        };
        if let Some(hidden_size) = hidden_size.filter(|&h| h != dim) {
            let hint = match dim {
                1024 => " (an SD 2.x embedding?)",
                1280 => " (an SDXL `clip_g` embedding?)",
                _ => "",
            };
            return Err(tensor_err(format!(
                "vectors are {dim}-d, this model's text encoder is {hidden_size}-d{hint}"
            )));
        }
        if dim > MAX_CHANNELS {
            return Err(tensor_err(format!(
                "vectors are {dim}-d; at most {MAX_CHANNELS} are read"
            )));
        }
        if !(1..=MAX_VECTORS).contains(&count) {
            return Err(tensor_err(format!(
                "{count} vectors; an embedding must have 1 to {MAX_VECTORS}"
            )));
        }
        let (_, vectors) = file.read_f32(key)?;
        if vectors.len() != count * dim {
            return Err(tensor_err(format!(
                "{} values for shape {shape:?}",
                vectors.len()
            )));
        }
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err(tensor_err("holds NaN or infinite values".into()));
        }
        Ok(Self {
            name,
            path: path.into(),
            dim,
            vectors,
        })
    }

    /// How many tokens the embedding stands for.
    pub fn count(&self) -> usize {
        self.vectors.len() / self.dim
    }

    /// `[count, dim]` row-major.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }
}

/// A set of embeddings with distinct names, sorted by name.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    items: Vec<Embedding>,
}

impl Embeddings {
    /// Every embedding file under `dir` (sub-folders included; other files are skipped). A file
    /// that cannot be used is returned with its error and the rest load; only an unreadable
    /// `dir` is an error.
    pub fn load_dir(dir: &Path, hidden_size: usize) -> Result<(Self, Vec<(PathBuf, Error)>)> {
        let files = Self::files(dir)?;
        let mut items: Vec<Embedding> = Vec::new();
        let mut failed = Vec::new();
        for path in files {
            match Embedding::load(&path, hidden_size) {
                Ok(e) => match items.iter().find(|o| o.name == e.name) {
                    Some(o) => {
                        let msg = format!("the name `{}` is taken by {}", e.name, o.path.display());
                        failed.push((path.clone(), Error::io(&path, msg)));
                    }
                    None => items.push(e),
                },
                Err(err) => failed.push((path, err)),
            }
        }
        for (path, err) in &failed {
            tracing::warn!(path = %path.display(), "embedding skipped: {err}");
        }
        tracing::info!(dir = %dir.display(), loaded = items.len(), skipped = failed.len(), "embeddings");
        Ok((Self::from_list(items)?, failed))
    }

    /// The embedding files under `dir` (by extension, sub-folders included), sorted.
    pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        Ok(files)
    }

    /// A set from loaded embeddings; two with the same name are an error.
    pub fn from_list(mut items: Vec<Embedding>) -> Result<Self> {
        items.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = items.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::io(
                &w[1].path,
                format!(
                    "the embedding name `{}` is taken by {}",
                    w[1].name,
                    w[0].path.display()
                ),
            ));
        }
        Ok(Self { items })
    }

    pub fn list(&self) -> Vec<EmbeddingInfo> {
        self.items
            .iter()
            .map(|e| EmbeddingInfo {
                name: e.name.clone(),
                vectors: e.count(),
                path: e.path.clone(),
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Embedding> {
        self.items.iter().find(|e| e.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Embedding> {
        self.items.iter()
    }

    /// The embedding at `index` in name order (what prompt chunks refer to).
    pub fn at(&self, index: usize) -> Option<&Embedding> {
        self.items.get(index)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
            continue;
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let empty = std::fs::metadata(&path).is_ok_and(|m| m.len() == 0);
        if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) && !empty {
            out.push(path);
        }
    }
    Ok(())
}
