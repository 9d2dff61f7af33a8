//! Compute precision of the models: f16 on GPU backends, f32 on the CPU, unless asked; and
//! [`Placement`], the device and precision a model runs with.

use std::str::FromStr;

use burn::tensor::DType;
use burn::tensor::backend::Backend;

use crate::backend::{DeviceList, DeviceSpec};
use crate::error::{Error, Result};

/// What the user asked for (`--precision`, `KILN_PRECISION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 where the device computes it natively (wgpu, cuda), f32 on the CPU, where f16 has
    /// no native arithmetic on x86 and is slower than f32.
    #[default]
    Auto,
    F32,
    F16,
    /// bf16: on the CPU the Linear and convolution weights are held in bf16 (half the memory)
    /// and multiplied in bf16 with f32 sums (AVX512-BF16 `vdpbf16ps` where the CPU has it,
    /// widened to f32 elsewhere), everything between the layers in f32; on wgpu/cuda, bf16
    /// throughout where the device supports it.
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" | "full" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::invalid(format!(
                "unknown precision `{other}`; use auto, f32, f16 or bf16"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The dtype the weights of UNet, text encoder and BART are stored in on `device`; their
    /// activations are in [`crate::nn::compute_dtype`] of it (the same, but f32 for bf16 on
    /// the CPU).
    pub fn resolve<B: Backend>(self, spec: DeviceSpec, device: &B::Device) -> Result<DType> {
        let f16_ok = B::supports_dtype(device, DType::F16);
        match self {
            Self::Bf16 if spec == DeviceSpec::Cpu || B::supports_dtype(device, DType::BF16) => {
                Ok(DType::BF16)
            }
            Self::Bf16 => Err(Error::Device(format!(
                "device `{spec}` cannot compute in bf16; use --precision f16 or f32"
            ))),
            Self::F32 => Ok(DType::F32),
            Self::F16 if f16_ok => Ok(DType::F16),
            Self::F16 => Err(Error::Device(format!(
                "device `{spec}` cannot compute in f16; use --precision f32"
            ))),
            Self::Auto if f16_ok && spec != DeviceSpec::Cpu => Ok(DType::F16),
            Self::Auto => Ok(DType::F32),
        }
    }
}

/// Where and in what precision a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: DeviceSpec,
    pub precision: Precision,
}

impl From<DeviceSpec> for Placement {
    fn from(device: DeviceSpec) -> Self {
        Self {
            device,
            precision: Default::default(),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.precision {
            Precision::Auto => write!(f, "{}", self.device),
            p => write!(f, "{} ({p})", self.device),
        }
    }
}

/// Where the server runs its models: every device of `--device` (each gets a replica of every
/// model), all in one precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placements {
    pub devices: DeviceList,
    pub precision: Precision,
}

impl Placements {
    /// `(label, placement)` per device, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Placement)> {
        self.devices.iter().map(|(label, device)| {
            let place = Placement {
                device,
                precision: self.precision,
            };
            (label, place)
        })
    }
}

impl From<Placement> for Placements {
    fn from(p: Placement) -> Self {
        Self {
            devices: p.device.into(),
            precision: p.precision,
        }
    }
}

impl From<DeviceSpec> for Placements {
    fn from(d: DeviceSpec) -> Self {
        Placement::from(d).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("f8".parse::<Precision>().is_err());
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn cpu_is_f32_unless_asked() {
        type B = burn::backend::Flex;
        let d = burn::backend::flex::FlexDevice;
        let cpu = DeviceSpec::Cpu;
        assert_eq!(Precision::Auto.resolve::<B>(cpu, &d).unwrap(), DType::F32);
        assert_eq!(crate::nn::compute_dtype::<B>(DType::BF16), DType::F32);
        assert_eq!(Precision::F16.resolve::<B>(cpu, &d).unwrap(), DType::F16);
        assert_eq!(Precision::Bf16.resolve::<B>(cpu, &d).unwrap(), DType::BF16);
    }
}
