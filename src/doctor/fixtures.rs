//! The committed tiny models and their reference tensors (`models/fixtures`).

use std::path::{Path, PathBuf};

use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::weights::TensorFile;

/// The fixtures folder: `sd15-tiny/` (diffusers layout, `refs/*.safetensors`) and
/// `dalle-tiny/` (flax and min-dalle layouts, `refs.safetensors`, `refs.json`).
#[derive(Debug, Clone)]
pub struct Fixtures {
    root: PathBuf,
}

impl Fixtures {
    /// `root` must hold `sd15-tiny/` and `dalle-tiny/`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["sd15-tiny/refs", "dalle-tiny/flax"] {
            if !root.join(sub).is_dir() {
                return Err(Error::io(
                    root.join(sub),
                    "not found: the tiny fixture models of a kiln checkout (models/fixtures) are needed; pass their folder with --fixtures",
                ));
            }
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sd15(&self) -> PathBuf {
        self.root.join("sd15-tiny")
    }

    /// A reference tensor of `sd15-tiny/refs/<file>`.
    pub fn sd15_ref(&self, file: &str, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        TensorFile::open(&self.sd15().join("refs").join(file))?.read_f32(key)
    }

    pub fn dalle(&self) -> PathBuf {
        self.root.join("dalle-tiny")
    }

    pub fn dalle_flax(&self) -> PathBuf {
        self.dalle().join("flax")
    }

    pub fn dalle_min_dalle(&self) -> PathBuf {
        self.dalle().join("mindalle/dalle_bart_tiny")
    }

    fn dalle_refs(&self) -> Result<TensorFile> {
        TensorFile::open(&self.dalle().join("refs.safetensors"))
    }

    pub fn dalle_f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.dalle_refs()?.read_f32(key)
    }

    fn dalle_data(&self, key: &str) -> Result<burn::tensor::TensorData> {
        self.dalle_refs()?.read_data(key)
    }

    pub fn dalle_f64(&self, key: &str) -> Result<Vec<f64>> {
        self.dalle_data(key)?
            .convert_dtype(DType::F64)
            .to_vec::<f64>()
            .map_err(|e| self.dalle_tensor_err(key, e))
    }

    /// Integer references (token ids as i64, pixels as u8) widened to u32.
    pub fn dalle_u32(&self, key: &str) -> Result<Vec<u32>> {
        let data = self.dalle_data(key)?;
        match data.dtype {
            DType::I64 => Ok(data
                .to_vec::<i64>()
                .map_err(|e| self.dalle_tensor_err(key, e))?
                .into_iter()
                .map(|x| x as u32)
                .collect()),
            DType::U8 => Ok(data
                .to_vec::<u8>()
                .map_err(|e| self.dalle_tensor_err(key, e))?
                .into_iter()
                .map(u32::from)
                .collect()),
            other => Err(self.dalle_tensor_err(key, format!("unexpected dtype {other:?}"))),
        }
    }

    /// 8-bit pixel references.
    pub fn dalle_u8(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.dalle_u32(key)?.into_iter().map(|v| v as u8).collect())
    }

    pub fn dalle_json(&self) -> Result<serde_json::Value> {
        let path = self.dalle().join("refs.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::io(&path, e))
    }

    fn dalle_tensor_err(&self, key: &str, e: impl std::fmt::Debug) -> Error {
        Error::Tensor {
            path: self.dalle().join("refs.safetensors"),
            key: key.into(),
            message: format!("{e:?}"),
        }
    }
}
