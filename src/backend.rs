//! Run-time device selection among the backends compiled in (`cpu`, `wgpu`, `cuda` features).
//!
//! Model code is generic over `B: Backend`; [`dispatch`] monomorphises a [`BackendTask`] for the
//! backend the user asked for, or says which cargo feature would enable it.

use std::str::FromStr;

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// `None`: wgpu's default adapter.
    Wgpu(Option<usize>),
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i
                    .parse::<usize>()
                    .map_err(|_| Error::Device(format!("bad device index in `{s}`")))?;
                (n.to_string(), Some(i))
            }
            None => (s.clone(), None),
        };
        match (name.as_str(), index) {
            ("cpu" | "flex", None) => Ok(DeviceSpec::Cpu),
            ("wgpu" | "gpu" | "vulkan" | "metal", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(Error::Device(format!(
                "unknown device `{s}`; use cpu, wgpu[:N] or cuda[:N]"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// `--device`: one device or a comma list (`cuda:0,cuda:1`). The server runs one worker with a
/// replica of every model per entry. Each entry has a label, unique in the list, that names its
/// worker in logs, metrics and `/health`: the device's own name (`cuda:1`), with `#k` (the k-th
/// time, from 0) added when the same device is listed more than once (`cpu,cpu` → `cpu#0`,
/// `cpu#1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(Vec<(String, DeviceSpec)>);

impl DeviceList {
    /// `(label, device)` in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, DeviceSpec)> {
        self.0.iter().map(|(l, d)| (l.as_str(), *d))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The device when the list holds exactly one (`kiln generate` runs on one).
    pub fn single(&self) -> Option<DeviceSpec> {
        match self.0.as_slice() {
            [(_, d)] => Some(*d),
            _ => None,
        }
    }
}

impl From<DeviceSpec> for DeviceList {
    fn from(d: DeviceSpec) -> Self {
        Self(vec![(d.to_string(), d)])
    }
}

impl FromStr for DeviceList {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let specs = s
            .split(',')
            .map(|part| {
                if part.trim().is_empty() {
                    return Err(Error::Device(format!(
                        "empty entry in the device list `{s}`; use e.g. cpu or cuda:0,cuda:1"
                    )));
                }
                part.parse::<DeviceSpec>()
            })
            .collect::<Result<Vec<_>>>()?;
        let labels = specs.iter().enumerate().map(|(i, d)| {
            let same = |e: &DeviceSpec| e == d;
            if specs.iter().filter(|e| same(e)).count() == 1 {
                d.to_string()
            } else {
                format!("{d}#{}", specs[..i].iter().filter(|e| same(e)).count())
            }
        });
        Ok(Self(labels.zip(specs.iter().copied()).collect()))
    }
}

impl std::fmt::Display for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.0.iter().map(|(l, _)| l.as_str()).collect();
        f.write_str(&labels.join(","))
    }
}

/// Work to run on whichever backend the user picked.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

// Unused only in a build with every backend compiled in.
#[cfg_attr(
    all(feature = "cpu", feature = "wgpu-base", feature = "cuda"),
    allow(dead_code)
)]
fn not_compiled(spec: DeviceSpec, feature: &str) -> Error {
    Error::Device(format!(
        "device `{spec}` needs the `{feature}` cargo feature; rebuild with `cargo build --release --features {feature}`"
    ))
}

/// Runs `task` on the backend for `spec`.
pub fn dispatch<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => {
            #[cfg(feature = "cpu")]
            return Ok(task.run::<burn::backend::Flex>(burn::backend::flex::FlexDevice));
            #[cfg(not(feature = "cpu"))]
            return Err(not_compiled(spec, "cpu"));
        }
        DeviceSpec::Wgpu(index) => {
            #[cfg(feature = "wgpu-base")]
            {
                use burn::backend::wgpu::WgpuDevice;
                let device = match index {
                    None => WgpuDevice::DefaultDevice,
                    Some(i) => WgpuDevice::DiscreteGpu(i),
                };
                return Ok(task.run::<burn::backend::Wgpu>(device));
            }
            #[cfg(not(feature = "wgpu-base"))]
            {
                let _ = index;
                return Err(not_compiled(spec, "wgpu"));
            }
        }
        DeviceSpec::Cuda(index) => {
            #[cfg(feature = "cuda")]
            return Ok(task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(index)));
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                return Err(not_compiled(spec, "cuda"));
            }
        }
    }
}

/// The backends this binary was built with, for `--help` and error messages.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cpu") {
        v.push("cpu");
    }
    if cfg!(feature = "wgpu-base") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// What a GPU backend's memory pools hold on one device, as cubecl counts it for the calling
/// thread's stream (cubecl keeps one pool per stream, and a stream per thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes of live tensors (without padding).
    pub bytes_in_use: u64,
    /// Bytes the pools have taken from the device. The pools keep their pages until a cleanup,
    /// so read after a run this is the run's peak reservation (a lower bound of it if cubecl
    /// freed pages meanwhile).
    pub bytes_reserved: u64,
}

/// [`DeviceMemory`] of `device` for the wgpu and cuda backends; `None` on the CPU, whose memory
/// is the process's RSS.
pub fn device_memory<B: Backend>(device: &B::Device) -> Option<DeviceMemory> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu-base")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        return cube_memory::<burn::backend::wgpu::WgpuRuntime>(d);
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        return cube_memory::<burn::cubecl::cuda::CudaRuntime>(d);
    }
    let _ = any;
    None
}

#[cfg(any(feature = "wgpu-base", feature = "cuda"))]
fn cube_memory<R: burn::cubecl::Runtime>(device: &R::Device) -> Option<DeviceMemory> {
    // The client is the device's shared one, so this reads the pools the models allocate from.
    let usage = R::client(device).memory_usage().ok()?;
    Some(DeviceMemory {
        bytes_in_use: usage.bytes_in_use,
        bytes_reserved: usage.bytes_reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Wgpu(None)
        );
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert!("cpu:1".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn device_lists_get_unique_labels() {
        let labels = |s: &str| {
            let list: DeviceList = s.parse().unwrap();
            list.iter().map(|(l, _)| l.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(labels("cpu"), ["cpu"]);
        assert_eq!(labels("cpu,cpu"), ["cpu#0", "cpu#1"]);
        assert_eq!(labels("cuda:0, cuda:1"), ["cuda:0", "cuda:1"]);
        assert_eq!(
            labels("wgpu:0,wgpu:1,wgpu:0"),
            ["wgpu:0#0", "wgpu:1", "wgpu:0#1"]
        );
        let list: DeviceList = "cpu,cpu".parse().unwrap();
        assert_eq!(list.single(), None);
        assert_eq!(
            "cuda".parse::<DeviceList>().unwrap().single(),
            Some(DeviceSpec::Cuda(0))
        );
        assert!("cpu,".parse::<DeviceList>().is_err());
        assert!("cpu,tpu".parse::<DeviceList>().is_err());
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn the_cpu_has_no_device_memory() {
        let d = burn::backend::flex::FlexDevice;
        assert_eq!(device_memory::<burn::backend::Flex>(&d), None);
    }
}
