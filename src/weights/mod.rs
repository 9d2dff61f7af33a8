//! Reading checkpoint files (safetensors, PyTorch pickles) and applying their tensors to a
//! module under a key mapping, with a report of what was missing and what was left unused.
//!
//! Files are opened lazily: safetensors are memory-mapped (`mapped`, which hands each tensor's
//! pages back once copied) and pickles are read tensor by tensor through burn-store, so only
//! the tensors a module takes are ever copied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_store::{ModuleSnapshot, ModuleStore, PytorchStore, TensorSnapshot};

mod mapped;

use crate::error::{Error, Result};
use crate::nn::kernels;

/// The tensors of one checkpoint file, by their key in the file.
pub struct TensorFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorSnapshot>,
}

impl TensorFile {
    /// Opens `.safetensors`, or a PyTorch pickle (`.bin`, `.ckpt`, `.pt`, `.pth`), unwrapping the
    /// `state_dict` entry Lightning/CompVis checkpoints put the weights under.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(path, "no such file"));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let bad = |e: &dyn std::fmt::Display| Error::WeightFile {
            path: path.into(),
            message: e.to_string(),
        };
        let tensors = match ext.as_str() {
            "safetensors" => mapped::open(path)?,
            "bin" | "ckpt" | "pt" | "pth" => {
                let open = |key: Option<&str>| {
                    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
                    if let Some(k) = key {
                        store = store.with_top_level_key(k);
                    }
                    store.get_all_snapshots().map(|m| m.clone())
                };
                match open(Some("state_dict")) {
                    Ok(m) if !m.is_empty() => m,
                    _ => open(None).map_err(|e| bad(&e))?,
                }
            }
            _ => {
                return Err(bad(&format!(
                    "unknown weight file extension `.{ext}` (expected .safetensors, .bin, .ckpt, .pt or .pth)"
                )));
            }
        };
        if tensors.is_empty() {
            return Err(bad(&"the file holds no tensors"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Reads one tensor in its own dtype.
    pub fn read_data(&self, key: &str) -> Result<TensorData> {
        let snap = self.tensors.get(key).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            key: key.into(),
            message: "not in the file".into(),
        })?;
        snap.to_data().map_err(|e| self.tensor_err(key, e))
    }

    /// Reads one tensor as `f32` values (used by tests and for small inputs like init latents).
    pub fn read_f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let data = self.read_data(key)?.convert_dtype(DType::F32);
        let values = data
            .to_vec::<f32>()
            .map_err(|e| self.tensor_err(key, format!("{e:?}")))?;
        Ok((data.shape.to_vec(), values))
    }

    fn tensor_err(&self, key: &str, e: impl std::fmt::Display) -> Error {
        Error::Tensor {
            path: self.path.clone(),
            key: key.into(),
            message: e.to_string(),
        }
    }
}

/// What a load did: every file key is either applied, expected-unused (listed by name), or
/// unused; every module parameter is either applied or missing.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    pub applied: usize,
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    pub ignored: Vec<String>,
}

impl LoadReport {
    pub fn merge(&mut self, other: LoadReport) {
        self.files.extend(other.files);
        self.applied += other.applied;
        self.missing.extend(other.missing);
        self.unused.extend(other.unused);
        self.ignored.extend(other.ignored);
    }

    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty()
    }
}

/// Where a file key goes.
pub enum KeyTarget {
    /// A module parameter path.
    Param(String),
    /// A key the format is known to carry that the model does not use (EMA copies, training
    /// buffers): reported as ignored, not as unused.
    Ignore,
    /// Not this module's key (e.g. another component of a single-file checkpoint).
    Other,
}

/// Applies the tensors of `file` to `module`, mapping file keys with `map`.
///
/// Shapes are checked against the module before anything is applied, so a wrong file gives an
/// error naming the file and the key. Float tensors are cast to the dtype of the parameter they
/// replace (f16/bf16 checkpoints into f32 models and back). A `[o, i, 1, 1]` tensor that feeds a
/// `[o, i]` parameter is reshaped: the CompVis VAE stores its attention projections as 1×1 convs.
pub fn load_into<B: Backend, M: Module<B>>(
    module: M,
    file: &TensorFile,
    map: &dyn Fn(&str) -> KeyTarget,
) -> Result<(M, LoadReport)> {
    load_into_as(module, file, map, float_dtype::<B>())
}

/// [`load_into`] with the parameters stored as `dtype` (f16 models load straight to f16,
/// without an f32 copy on the device), except the GEMM weights ([`is_gemm_weight`]) where the
/// backend computes them otherwise:
/// - bf16 on the CPU multiplies bf16 weights under f32 activations
///   ([`crate::nn::compute_dtype`]): only the GEMM weights are bf16, the rest (biases, norms,
///   embeddings) f32;
/// - f32 on the CPU reads f16 GEMM weights as they are ([`kernels::reads_f16_weights`]): an
///   f16 file's stay f16, half the resident memory (SD 1.5's UNet 1.7 GB instead of 3.4), with
///   the results of an f32 load, since widening f16 is exact.
pub fn load_into_as<B: Backend, M: Module<B>>(
    module: M,
    file: &TensorFile,
    map: &dyn Fn(&str) -> KeyTarget,
    dtype: DType,
) -> Result<(M, LoadReport)> {
    let compute = crate::nn::compute_dtype::<B>(dtype);
    let keep_f16 = dtype == DType::F32 && kernels::reads_f16_weights::<B>();
    if compute == dtype && !keep_f16 {
        return load_into_with(module, file, map, &|_, _| dtype);
    }
    let shapes = param_shapes(&module);
    let rank = |path: &str| shapes.get(path).map_or(0, |s| s.num_dims());
    load_into_with(
        module,
        file,
        map,
        &|path, file_dtype| match is_gemm_weight(path, rank(path)) {
            true if keep_f16 && file_dtype == DType::F16 => DType::F16,
            true => dtype,
            false => compute,
        },
    )
}

/// Whether parameter `path` of rank `rank` is the weight of a `Linear` or `Conv2d` (what the
/// GEMM kernels multiply by): a matrix or kernel named `weight`, except an embedding table
/// (`token_embedding.weight`), which is looked up, not multiplied.
fn is_gemm_weight(path: &str, rank: usize) -> bool {
    let mut seg = path.rsplit('.');
    rank >= 2
        && seg.next() == Some("weight")
        && !seg.next().is_some_and(|s| s.ends_with("embedding"))
}

/// [`load_into_as`] with the dtype chosen per parameter: `dtype(path, dtype in the file)`.
pub fn load_into_with<B: Backend, M: Module<B>>(
    module: M,
    file: &TensorFile,
    map: &dyn Fn(&str) -> KeyTarget,
    dtype: &dyn Fn(&str, DType) -> DType,
) -> Result<(M, LoadReport)> {
    let expected = param_shapes(&module);

    let mut report = LoadReport {
        files: vec![file.path.clone()],
        ..Default::default()
    };
    let mut snapshots = Vec::new();
    let mut taken = BTreeSet::new();
    for (key, snap) in &file.tensors {
        let path = match map(key) {
            KeyTarget::Param(p) => p,
            KeyTarget::Ignore => {
                report.ignored.push(key.clone());
                continue;
            }
            KeyTarget::Other => continue,
        };
        let Some(shape) = expected.get(&path) else {
            report.unused.push(key.clone());
            continue;
        };
        if !taken.insert(path.clone()) {
            return Err(
                file.tensor_err(key, format!("a second tensor maps onto parameter `{path}`"))
            );
        }
        let found = &snap.shape;
        let reshape = if found == shape {
            None
        } else if found.num_elements() == shape.num_elements() && is_pointwise_conv(found, shape) {
            Some(shape.clone())
        } else {
            return Err(file.tensor_err(
                key,
                format!(
                    "shape {:?} in the file, the model needs {:?}",
                    found.as_slice(),
                    shape.as_slice()
                ),
            ));
        };
        if !matches!(
            snap.dtype,
            DType::F64 | DType::F32 | DType::F16 | DType::BF16
        ) {
            return Err(file.tensor_err(key, format!("dtype {:?} is not a float type", snap.dtype)));
        }
        let to = dtype(&path, snap.dtype);
        snapshots.push(retarget(snap, &path, to, reshape));
    }

    let mut module = module;
    let result = module.apply(snapshots, None, None, false);
    if let Some(err) = result.errors.first() {
        return Err(Error::WeightFile {
            path: file.path.clone(),
            message: err.to_string(),
        });
    }
    report.applied = result.applied.len();
    report.missing = result.missing.into_iter().map(|(p, _)| p).collect();
    report.missing.sort();
    Ok((module, report))
}

/// The float dtype parameters are created with on `B`.
fn float_dtype<B: Backend>() -> DType {
    <B::FloatElem as burn::tensor::Element>::dtype()
}

/// Every float parameter's path and shape, read without initialising lazy parameters (a
/// full-size UNet would otherwise allocate its 3.4 GB of zeros before loading).
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> HashMap<String, Shape> {
    struct Shapes {
        path: Vec<String>,
        out: HashMap<String, Shape>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.insert(self.path.join("."), param.lazy_shape());
        }
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: HashMap::new(),
    };
    module.visit(&mut v);
    v.out
}

fn is_pointwise_conv(found: &Shape, want: &Shape) -> bool {
    found.num_dims() == 4 && want.num_dims() == 2 && found[2] == 1 && found[3] == 1
}

/// A snapshot under a new path whose data is cast (and reshaped) on demand.
fn retarget(
    snap: &TensorSnapshot,
    path: &str,
    dtype: DType,
    reshape: Option<Shape>,
) -> TensorSnapshot {
    let inner = snap.clone_data_fn();
    let shape = reshape.clone().unwrap_or_else(|| snap.shape.clone());
    let data_fn = Rc::new(move || {
        let mut data = inner()?;
        if data.dtype != dtype {
            data = data.convert_dtype(dtype);
        }
        if let Some(s) = &reshape {
            data.shape = s.clone();
        }
        Ok(data)
    });
    let path_stack = path.split('.').map(str::to_string).collect();
    TensorSnapshot::from_closure(
        data_fn,
        dtype,
        shape,
        path_stack,
        Vec::new(),
        ParamId::new(),
    )
}

/// Fails when a load left module parameters without weights.
pub fn require_complete(report: &LoadReport, file: &Path) -> Result<()> {
    if report.missing.is_empty() {
        return Ok(());
    }
    let examples = report
        .missing
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::MissingTensors {
        path: file.to_path_buf(),
        count: report.missing.len(),
        examples,
    })
}

/// Writes one f32 tensor as a safetensors file (used for `--save-latents`).
pub fn write_f32(path: &Path, name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .map_err(|e| Error::io(path, e))?;
    let out = safetensors::serialize([(name, view)], None).map_err(|e| Error::io(path, e))?;
    std::fs::write(path, out).map_err(|e| Error::io(path, e))
}
