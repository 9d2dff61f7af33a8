//! Safetensors files read through a memory map that gives each tensor's pages back as soon
//! as the tensor is copied out.
//!
//! burn-store's `SafetensorsStore` keeps the whole file mapped while any snapshot lives, and a
//! mapped page that was read counts in the process's resident set until the map is dropped:
//! loading a 3.4 GB UNet peaked at params + file = 6.4 GiB. Here every tensor read ends with
//! `MADV_DONTNEED` on its byte range, so the peak is the parameters plus one tensor.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use burn::module::ParamId;
use burn::tensor::{DType, Shape, TensorData, bf16, f16};
use burn_store::{TensorSnapshot, TensorSnapshotError};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

fn dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

/// Copies little-endian `bytes` into a properly aligned `Vec<T>`.
fn typed<T: Copy + Default>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: `v` owns n·size_of::<T>() bytes and every T here is plain old data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            v.as_mut_ptr().cast::<u8>(),
            n * size_of::<T>(),
        );
    }
    v
}

fn tensor_data(bytes: &[u8], shape: Vec<usize>, dt: DType) -> TensorData {
    match dt {
        DType::F64 => TensorData::new(typed::<f64>(bytes), shape),
        DType::F32 => TensorData::new(typed::<f32>(bytes), shape),
        DType::F16 => TensorData::new(typed::<f16>(bytes), shape),
        DType::BF16 => TensorData::new(typed::<bf16>(bytes), shape),
        DType::I64 => TensorData::new(typed::<i64>(bytes), shape),
        DType::I32 => TensorData::new(typed::<i32>(bytes), shape),
        DType::I16 => TensorData::new(typed::<i16>(bytes), shape),
        DType::I8 => TensorData::new(typed::<i8>(bytes), shape),
        DType::U8 => TensorData::new(bytes.to_vec(), shape),
        _ => TensorData::new(bytes.iter().map(|&b| b != 0).collect::<Vec<bool>>(), shape),
    }
}

/// The tensors of a `.safetensors` file as lazy snapshots.
pub fn open(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
    let bad = |e: &dyn std::fmt::Display| Error::WeightFile {
        path: path.into(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a file truncated underneath us would fault, as with any
    // mapped weight loader (burn-store's included).
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let st = SafeTensors::deserialize(&map).map_err(|e| bad(&e))?;
    let base = map.as_ptr() as usize;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dt = dtype(view.dtype()).ok_or_else(|| {
            bad(&format!(
                "tensor `{name}`: unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let data = view.data();
        let (start, len) = (data.as_ptr() as usize - base, data.len());
        let shape = view.shape().to_vec();
        let map = Arc::clone(&map);
        let dims = shape.clone();
        let read = Rc::new(
            move || -> std::result::Result<TensorData, TensorSnapshotError> {
                let t = tensor_data(&map[start..start + len], dims.clone(), dt);
                // SAFETY: a read-only file map: dropped pages are re-read from the file if touched
                // again (a second load of the same tensor), never zero-filled.
                let _ =
                    unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, len) };
                Ok(t)
            },
        );
        let snap = TensorSnapshot::from_closure(
            read,
            dt,
            Shape::from(shape),
            vec![name.clone()],
            Vec::new(),
            ParamId::new(),
        );
        out.insert(name, snap);
    }
    Ok(out)
}
