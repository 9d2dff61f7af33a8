//! Reader for flax's msgpack checkpoints (`flax.serialization.msgpack_serialize`): nested maps of
//! string keys whose leaves are arrays packed as msgpack ext type 1 holding
//! `(shape, dtype name, raw C-order bytes)`.
//!
//! The file is memory-mapped and only its structure is parsed: every array is recorded as a byte
//! range, read when a parameter asks for it (a mega checkpoint is 5 GB).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::DType;
use rmp::Marker;
use rmp::decode;

use crate::error::{Error, Result};

/// flax `_MsgpackExtType.ndarray`.
const EXT_NDARRAY: i8 = 1;

/// Deepest nesting of maps read (flax trees are 5 to 8 deep): bounds the parser's recursion.
const MAX_DEPTH: usize = 64;

/// Highest array rank read (flax kernels are at most 5-d, scanned convs included).
const MAX_RANK: u32 = 16;

/// One array leaf: where its bytes are in the file.
#[derive(Debug, Clone)]
pub struct ArrayRef {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub offset: usize,
    pub len: usize,
}

impl ArrayRef {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed msgpack checkpoint: leaves by dotted key path (`model.encoder.final_ln.bias`).
pub struct MsgpackFile {
    pub path: PathBuf,
    pub arrays: BTreeMap<String, ArrayRef>,
    pub bytes: Arc<memmap2::Mmap>,
}

impl MsgpackFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while loading is the
        // user's problem in every loader (safetensors is mapped the same way).
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut arrays = BTreeMap::new();
        let mut parser = Parser {
            data: &bytes,
            pos: 0,
            path,
        };
        parser.value("", 0, &mut arrays)?;
        if parser.pos != bytes.len() {
            return Err(parser.err(
                "",
                format!(
                    "{} trailing bytes after the msgpack tree",
                    bytes.len() - parser.pos
                ),
            ));
        }
        if arrays.is_empty() {
            return Err(Error::WeightFile {
                path: path.into(),
                message: "the msgpack tree holds no arrays".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            arrays,
            bytes: Arc::new(bytes),
        })
    }

    /// The raw little-endian bytes of an array.
    pub fn data(&self, a: &ArrayRef) -> &[u8] {
        &self.bytes[a.offset..a.offset + a.len]
    }
}

struct Parser<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Parser<'a> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> Error {
        if key.is_empty() {
            Error::WeightFile {
                path: self.path.into(),
                message: format!("msgpack: {message}"),
            }
        } else {
            Error::Tensor {
                path: self.path.into(),
                key: key.into(),
                message: format!("msgpack: {message}"),
            }
        }
    }

    fn truncated(&self, key: &str) -> Error {
        self.err(
            key,
            format!(
                "truncated or malformed at byte {} of {}",
                self.pos,
                self.data.len()
            ),
        )
    }

    /// Runs an rmp decoder on the remaining bytes and advances past what it read.
    fn read<T, E>(
        &mut self,
        key: &str,
        f: impl FnOnce(&mut &'a [u8]) -> std::result::Result<T, E>,
    ) -> Result<T> {
        let mut rest = &self.data[self.pos.min(self.data.len())..];
        let before = rest.len();
        let out = f(&mut rest).map_err(|_| self.truncated(key))?;
        self.pos += before - rest.len();
        Ok(out)
    }

    fn take(&mut self, key: &str, n: usize) -> Result<(usize, usize)> {
        if self.data.len().saturating_sub(self.pos) < n {
            return Err(self.truncated(key));
        }
        let start = self.pos;
        self.pos += n;
        Ok((start, n))
    }

    fn string(&mut self, key: &str) -> Result<String> {
        let n = self.read(key, decode::read_str_len)? as usize;
        let (s, n) = self.take(key, n)?;
        String::from_utf8(self.data[s..s + n].to_vec())
            .map_err(|_| self.err(key, "a key is not UTF-8"))
    }

    fn value(
        &mut self,
        key: &str,
        depth: usize,
        out: &mut BTreeMap<String, ArrayRef>,
    ) -> Result<()> {
        let Some(&first) = self.data.get(self.pos) else {
            return Err(self.truncated(key));
        };
        if depth > MAX_DEPTH {
            return Err(self.err(key, format!("maps nested deeper than {MAX_DEPTH}")));
        }
        match Marker::from_u8(first) {
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                let n = self.read(key, decode::read_map_len)?;
                for _ in 0..n {
                    let name = self.string(key)?;
                    if name == "__msgpack_chunked_array__" {
                        return Err(self.err(key, "chunked arrays (> 1 GiB) are not supported"));
                    }
                    let child = if key.is_empty() {
                        name
                    } else {
                        format!("{key}.{name}")
                    };
                    self.value(&child, depth + 1, out)?;
                }
                Ok(())
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => {
                let meta = self.read(key, decode::read_ext_meta)?;
                if meta.typeid != EXT_NDARRAY {
                    return Err(self.err(
                        key,
                        format!(
                            "ext type {} is not an array (numpy scalars are not supported)",
                            meta.typeid
                        ),
                    ));
                }
                let end = self.pos.saturating_add(meta.size as usize);
                let array = self.array(key)?;
                if self.pos != end {
                    return Err(self.err(key, "array payload size mismatch"));
                }
                out.insert(key.to_string(), array);
                Ok(())
            }
            other => Err(self.err(
                key,
                format!("unexpected msgpack value {other:?} (expected a map or an array)"),
            )),
        }
    }

    /// `(shape, dtype, bytes)` inside an ext payload.
    fn array(&mut self, key: &str) -> Result<ArrayRef> {
        if self.read(key, decode::read_array_len)? != 3 {
            return Err(self.err(key, "array payload is not (shape, dtype, data)"));
        }
        let rank = self.read(key, decode::read_array_len)?;
        if rank > MAX_RANK {
            return Err(self.err(key, format!("rank {rank} (at most {MAX_RANK} is read)")));
        }
        let mut shape = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            let d = self.read(key, decode::read_int::<u64, _>)?;
            shape.push(usize::try_from(d).map_err(|_| self.err(key, format!("dimension {d}")))?);
        }
        let dtype_name = self.string(key)?;
        let (dtype, size) = match dtype_name.as_str() {
            "float32" => (DType::F32, 4),
            "float16" => (DType::F16, 2),
            "bfloat16" => (DType::BF16, 2),
            "float64" => (DType::F64, 8),
            other => return Err(self.err(key, format!("unsupported dtype `{other}`"))),
        };
        let n = self.read(key, decode::read_bin_len)? as usize;
        let bytes = shape
            .iter()
            .try_fold(size, |acc: usize, &d| acc.checked_mul(d));
        if bytes != Some(n) {
            return Err(self.err(
                key,
                format!("{n} data bytes for shape {shape:?} of {dtype_name}"),
            ));
        }
        let (offset, len) = self.take(key, n)?;
        Ok(ArrayRef {
            shape,
            dtype,
            offset,
            len,
        })
    }
}
