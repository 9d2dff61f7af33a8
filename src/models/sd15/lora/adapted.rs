//! A LoRA-adapted copy of the text encoder and UNet: `W' = W + Σ weightᵢ · scaleᵢ · upᵢ @ downᵢ`
//! merged into the weights, so a step costs what a base step costs.
//!
//! Loaded weights are held in kernel layouts (`Linear` transposed, convolutions re-laid out
//! for the CPU kernels), so deltas are not added to them. Instead the base weight is read
//! again from the checkpoint it was loaded from, in checkpoint layout, through the loader's
//! own key map; the delta is added there, and the sum goes through the parameter's load path
//! (`Param::transform_for_load`, which applies the same layout mapper as the first load). The
//! copy is a clone of the modules (Burn clones share storage), so only the adapted parameters
//! take new memory and the base model is never written.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::LoraSpec;
use super::format::{LoraFile, LoraModule, Part, parse};
use crate::error::{Error, Result};
use crate::models::sd15::clip::ClipTextModel;
use crate::models::sd15::loader::Components;
use crate::models::sd15::unet_2d::UNet2DConditionModel;
use crate::weights::{KeyTarget, TensorFile, param_shapes};

/// Text encoder and UNet with LoRAs merged in; `bytes` is the memory of the parameters that
/// were replaced (everything else is shared with the base model).
#[derive(Clone)]
pub struct Adapted<B: Backend> {
    pub text_encoder: ClipTextModel<B>,
    pub unet: UNet2DConditionModel<B>,
    pub bytes: usize,
}

/// A parameter a LoRA module adapts: its path and its checkpoint-layout shape.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    pub shape: Vec<usize>,
}

/// kohya name (module path, `.` → `_`) → the weight it names, for every 2-D and 4-D weight of
/// a model; names two paths share are left out (they would be ambiguous), none do in SD 1.5.
pub struct NameMap(HashMap<String, Target>);

impl NameMap {
    /// From the parameters of a freshly constructed (lazy, unallocated) module: shapes in
    /// checkpoint layout.
    pub fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut map: HashMap<String, Option<Target>> = HashMap::new();
        for (path, shape) in param_shapes::<B, M>(module) {
            let Some(name) = path.strip_suffix(".weight").map(|m| m.replace('.', "_")) else {
                continue;
            };
            if !matches!(shape.num_dims(), 2 | 4) {
                continue;
            }
            let target = Target {
                path,
                shape: shape.to_vec(),
            };
            map.entry(name)
                .and_modify(|t| *t = None)
                .or_insert(Some(target));
        }
        Self(map.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
    }

    fn get(&self, part: Part, name: &str) -> Option<&Target> {
        self.0.get(name).or_else(|| match part {
            // transformers ≥ 5 names CLIP's modules without `text_model.`
            Part::TextEncoder => self.0.get(&format!("text_model_{name}")),
            Part::Unet => None,
        })
    }
}

/// The name maps of the model's text encoder and UNet.
pub struct Names {
    pub unet: NameMap,
    pub text_encoder: NameMap,
}

impl Names {
    pub fn of<B: Backend>(parts: &Components<B>, device: &B::Device) -> Self {
        Self {
            unet: NameMap::of(&UNet2DConditionModel::<B>::new(&parts.unet_config, device)),
            text_encoder: NameMap::of(&ClipTextModel::<B>::new(&parts.clip_config, device)),
        }
    }

    fn map(&self, part: Part) -> &NameMap {
        match part {
            Part::Unet => &self.unet,
            Part::TextEncoder => &self.text_encoder,
        }
    }

    /// The weight each module of `lora` adapts, shapes checked: an error names the file and
    /// the first module that does not fit this model.
    pub fn resolve<'a>(&'a self, lora: &LoraFile) -> Result<Vec<&'a Target>> {
        lora.modules
            .iter()
            .map(|m| {
                let target = self.map(m.part).get(m.part, &m.name).ok_or_else(|| {
                    let what = match m.part {
                        Part::Unet => "UNet",
                        Part::TextEncoder => "text encoder",
                    };
                    lora_err(
                        &lora.path,
                        format!(
                            "key `{}`: the SD 1.5 {what} has no module `{}`",
                            m.down.key, m.name
                        ),
                    )
                })?;
                check_shapes(&lora.path, m, target)?;
                Ok(target)
            })
            .collect()
    }
}

fn lora_err(path: &Path, message: String) -> Error {
    Error::Lora {
        path: path.to_path_buf(),
        message,
    }
}

/// `up @ down` must have the weight's shape: `up` `[out, r(, 1, 1)]`, `down` `[r, in]` for a
/// linear or 1×1 weight, `[r, in, kh, kw]` as the convolution's.
fn check_shapes(path: &Path, m: &LoraModule, t: &Target) -> Result<()> {
    let (d, u) = (&m.down.shape, &m.up.shape);
    let out = t.shape[0];
    let fits_down = match (d.len(), t.shape.len()) {
        (4, 4) => d[1..] == t.shape[1..],
        _ => d[1..].iter().product::<usize>() == t.shape[1..].iter().product::<usize>(),
    };
    if u[0] != out {
        return Err(lora_err(
            path,
            format!(
                "key `{}`: shape {u:?} does not fit `{}` of shape {:?}",
                m.up.key, t.path, t.shape
            ),
        ));
    }
    if !fits_down {
        return Err(lora_err(
            path,
            format!(
                "key `{}`: shape {d:?} does not fit `{}` of shape {:?}",
                m.down.key, t.path, t.shape
            ),
        ));
    }
    Ok(())
}

/// One term `coef · up @ down` of a weight's delta.
struct Term<'a> {
    coef: f32,
    file: &'a LoraFile,
    module: &'a LoraModule,
}

/// Builds the adapted copy of `parts` for `loras` (files already parsed, with their weights).
pub fn build<B: Backend>(
    parts: &Components<B>,
    names: &Names,
    loras: &[(LoraFile, f32)],
    device: &B::Device,
) -> Result<Adapted<B>> {
    let mut terms: [BTreeMap<&str, (&Target, Vec<Term<'_>>)>; 2] = Default::default();
    for (file, weight) in loras {
        let targets = names.resolve(file)?;
        for (module, target) in file.modules.iter().zip(targets) {
            let slot = &mut terms[module.part as usize];
            slot.entry(target.path.as_str())
                .or_insert_with(|| (target, Vec::new()))
                .1
                .push(Term {
                    coef: weight * module.scale(),
                    file,
                    module,
                });
        }
    }
    let [unet_terms, text_terms] = terms;
    let src = &parts.sources;
    let unet_cfg = &parts.unet_config;
    let unet_map = src.unet_map(unet_cfg);
    let mut bytes = 0;
    let compute = parts.unet.conv_in.compute_dtype();
    let unet = merge(
        parts.unet.clone(),
        &src.unet,
        &*unet_map,
        unet_terms,
        (device, compute),
        &mut bytes,
    )?;
    let text_encoder = merge(
        parts.text_encoder.clone(),
        &src.text_encoder,
        &src.text_encoder_map(),
        text_terms,
        (device, compute),
        &mut bytes,
    )?;
    Ok(Adapted {
        text_encoder,
        unet,
        bytes,
    })
}

/// `module` with the weights named in `terms` replaced by base (read from `base_file`) +
/// delta; the replaced bytes are added to `bytes`. `compute` is the module's activations'
/// dtype.
fn merge<B: Backend, M: Module<B>>(
    module: M,
    base_file: &Path,
    map: &dyn Fn(&str) -> KeyTarget,
    terms: BTreeMap<&str, (&Target, Vec<Term<'_>>)>,
    (device, compute): (&B::Device, DType),
    bytes: &mut usize,
) -> Result<M> {
    if terms.is_empty() {
        return Ok(module);
    }
    let file = TensorFile::open(base_file)?;
    let mut todo = HashMap::new();
    for key in file.keys() {
        if let KeyTarget::Param(path) = map(key)
            && let Some((target, terms)) = terms.get(path.as_str())
        {
            todo.insert(path, (key.to_string(), *target, terms.as_slice()));
        }
    }
    if let Some(path) = terms.keys().find(|p| !todo.contains_key(**p)) {
        return Err(Error::Tensor {
            path: base_file.to_path_buf(),
            key: path.to_string(),
            message: "the base weight a LoRA adapts is not in the file it was loaded from".into(),
        });
    }
    let mut mapper = Replace {
        path: Vec::new(),
        device: device.clone(),
        compute,
        base: &file,
        todo,
        bytes: 0,
        error: None,
    };
    let module = module.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    if let Some(path) = mapper.todo.keys().next() {
        return Err(Error::Numerical(format!(
            "LoRA merge: parameter `{path}` was not found in the module"
        )));
    }
    *bytes += mapper.bytes;
    Ok(module)
}

/// Replaces the parameters named in `todo` by base + delta, made one at a time (so the
/// transient memory is one f32 weight) and given through the parameter's load path, as the
/// parameter's dtype (f32 for an f16-held one under f32 activations). The first error stops the replacing and is kept in `error`.
struct Replace<'a, B: Backend> {
    path: Vec<String>,
    device: B::Device,
    /// The activations' dtype.
    compute: DType,
    base: &'a TensorFile,
    /// Parameter path → (key of its base weight in `base`, shape, delta terms).
    todo: HashMap<String, (String, &'a Target, &'a [Term<'a>])>,
    bytes: usize,
    error: Option<Error>,
}

impl<B: Backend> Replace<'_, B> {
    /// `base + Σ coef · up @ down` as f32 `[out, fan_in]` (checkpoint layout, flattened).
    fn merged(&self, key: &str, target: &Target, terms: &[Term<'_>]) -> Result<Tensor<B, 2>> {
        let out = target.shape[0];
        let fan_in = target.shape[1..].iter().product::<usize>();
        let (_, base) = self.base.read_f32(key)?;
        let dev = &self.device;
        let mut w = Tensor::<B, 2>::from_data(TensorData::new(base, [out, fan_in]), dev);
        for t in terms {
            let r = t.module.rank();
            let (_, up) = t.file.file.read_f32(&t.module.up.key)?;
            let (_, down) = t.file.file.read_f32(&t.module.down.key)?;
            let up = Tensor::<B, 2>::from_data(TensorData::new(up, [out, r]), dev);
            let down = Tensor::<B, 2>::from_data(TensorData::new(down, [r, fan_in]), dev);
            w = w + up.matmul(down) * t.coef;
        }
        Ok(w)
    }
}

impl<B: Backend> ModuleMapper<B> for Replace<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let path = self.path.join(".");
        let Some((key, target, terms)) = self.todo.remove(&path) else {
            return param;
        };
        if target.shape.len() != D {
            self.error = Some(Error::Numerical(format!(
                "LoRA merge: `{path}` is {D}-D in the model, {:?} in its file",
                target.shape
            )));
            return param;
        }
        let w = match self.merged(&key, target, terms) {
            Ok(w) => w,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        // An f16-held weight under f32 activations (the CPU keeps an fp16 file's weights f16)
        // is merged into an f32 one: rounding base + delta to f16 moved the tiny model's LoRA
        // output by 7e-4 of scale, 7x the LoRA parity tolerance.
        let dtype = match param.val().dtype() {
            DType::F16 if self.compute == DType::F32 => DType::F32,
            held => held,
        };
        let dims: [usize; D] = std::array::from_fn(|i| target.shape[i]);
        self.bytes += target.shape.iter().product::<usize>() * dtype.size();
        let id = param.id;
        param.transform_for_load(w.reshape(dims).cast(dtype), id)
    }
}

/// Parses the LoRAs of a request (weight 0 ones are skipped).
pub fn open_all(specs: &[LoraSpec]) -> Result<Vec<(LoraFile, f32)>> {
    specs
        .iter()
        .filter(|s| s.weight != 0.0)
        .map(|s| Ok((parse(&s.path)?, s.weight)))
        .collect()
}
