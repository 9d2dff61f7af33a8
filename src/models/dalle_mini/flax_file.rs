//! Flax checkpoints (`flax_model.msgpack`) as `TensorFile`s keyed by module paths: every leaf
//! becomes a lazy snapshot that is sliced per layer and transposed only when a parameter reads
//! it. The name rules are `weights.rs`'s.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use burn::module::ParamId;
use burn::tensor::{Shape, TensorData};
use burn_store::{TensorSnapshot, TensorSnapshotError};

use super::msgpack::{ArrayRef, MsgpackFile};
use super::weights::{FlaxTarget, VqganLeaf, flax_bart_targets, flax_vqgan_target};
use crate::error::{Error, Result};
use crate::weights::TensorFile;

/// Lazily materialised snapshot of (a slice of) a msgpack array.
fn snapshot(file: &Arc<MsgpackFile>, array: &ArrayRef, target: &FlaxTarget) -> TensorSnapshot {
    let mut shape = array.shape.clone();
    if target.layer.is_some() {
        shape.remove(0);
    }
    let out_shape: Vec<usize> = match &target.permute {
        Some(p) => p.iter().map(|&a| shape[a]).collect(),
        None => shape.clone(),
    };
    let (file, array, target2, dtype) = (file.clone(), array.clone(), target.clone(), array.dtype);
    let src_shape = shape;
    let result_shape = out_shape.clone();
    let data_fn = Rc::new(
        move || -> std::result::Result<TensorData, TensorSnapshotError> {
            let bytes = file.data(&array);
            let esize = dtype.size();
            let per: usize = src_shape.iter().product::<usize>() * esize;
            let bytes = match target2.layer {
                Some(i) => bytes
                    .get(i * per..(i + 1) * per)
                    .ok_or_else(|| TensorSnapshotError::DataError("layer out of range".into()))?,
                None => bytes,
            };
            let data = match &target2.permute {
                Some(p) => permute_bytes(bytes, &src_shape, p, esize),
                None => bytes.to_vec(),
            };
            Ok(TensorData::from_bytes_vec(
                data,
                result_shape.clone(),
                dtype,
            ))
        },
    );
    let path_stack = target.path.split('.').map(str::to_string).collect();
    TensorSnapshot::from_closure(
        data_fn,
        dtype,
        Shape::from(out_shape),
        path_stack,
        Vec::new(),
        ParamId::new(),
    )
}

/// Row-major axis permutation of raw elements of `esize` bytes: output axis j = input axis p[j].
pub fn permute_bytes(src: &[u8], shape: &[usize], p: &[usize], esize: usize) -> Vec<u8> {
    let rank = shape.len();
    let mut in_strides = vec![1usize; rank];
    for a in (0..rank.saturating_sub(1)).rev() {
        in_strides[a] = in_strides[a + 1] * shape[a + 1];
    }
    let out_shape: Vec<usize> = p.iter().map(|&a| shape[a]).collect();
    let strides: Vec<usize> = p.iter().map(|&a| in_strides[a]).collect();
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total * esize);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>() * esize;
        out.extend_from_slice(&src[off..off + esize]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// A flax DalleBart checkpoint as a `TensorFile` keyed by module paths (`encoder.…`,
/// `decoder.…`); leaves outside the published layout keep their flax key so that the load
/// reports them as unused.
pub fn flax_bart_file(path: &Path, layers_enc: usize, layers_dec: usize) -> Result<TensorFile> {
    let file = Arc::new(MsgpackFile::open(path)?);
    let mut tensors = BTreeMap::new();
    for (key, array) in &file.arrays {
        let layers = if key.contains(".decoder.") {
            layers_dec
        } else {
            layers_enc
        };
        let targets = flax_bart_targets(key, array.shape.len(), layers);
        let scanned = targets
            .as_ref()
            .and_then(|t| t.first())
            .is_some_and(|t| t.layer.is_some());
        if scanned && array.shape.first() != Some(&layers) {
            let message = format!(
                "shape {:?}: scanned over {:?} layers, the config has {layers}",
                array.shape,
                array.shape.first()
            );
            return Err(Error::Tensor {
                path: path.into(),
                key: key.clone(),
                message,
            });
        }
        match targets {
            Some(targets) => {
                for t in targets {
                    tensors.insert(t.path.clone(), snapshot(&file, array, &t));
                }
            }
            None => {
                let t = FlaxTarget {
                    path: key.clone(),
                    layer: None,
                    permute: None,
                };
                tensors.insert(key.clone(), snapshot(&file, array, &t));
            }
        }
    }
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors,
    })
}

/// A flax VQGAN checkpoint as a `TensorFile` keyed by module paths; the encoder half is kept
/// under `ignored.` so the load lists it as ignored.
pub fn flax_vqgan_file(path: &Path) -> Result<TensorFile> {
    let file = Arc::new(MsgpackFile::open(path)?);
    let mut tensors = BTreeMap::new();
    for (key, array) in &file.arrays {
        let t = match flax_vqgan_target(key, array.shape.len()) {
            VqganLeaf::Param(t) => t,
            VqganLeaf::Ignored => FlaxTarget {
                path: format!("ignored.{key}"),
                layer: None,
                permute: None,
            },
            VqganLeaf::Unknown => FlaxTarget {
                path: key.clone(),
                layer: None,
                permute: None,
            },
        };
        tensors.insert(t.path.clone(), snapshot(&file, array, &t));
    }
    Ok(TensorFile {
        path: path.to_path_buf(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_transposes_and_reorders_conv_kernels() {
        let src: Vec<u8> = (0..6).collect(); // [2, 3]
        assert_eq!(
            permute_bytes(&src, &[2, 3], &[1, 0], 1),
            vec![0, 3, 1, 4, 2, 5]
        );
        // HWIO [1, 1, 2, 3] → OIHW [3, 2, 1, 1]: element (o, i) = src[i * 3 + o]
        assert_eq!(
            permute_bytes(&src, &[1, 1, 2, 3], &[3, 2, 0, 1], 1),
            vec![0, 3, 1, 4, 2, 5]
        );
    }
}
