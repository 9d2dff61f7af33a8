//! `kiln doctor`: the tiny-model parity checks against the committed reference tensors
//! (`models/fixtures`, made by `models/make_*_fixtures.py` with diffusers, transformers and
//! min-dalle), on any backend compiled in. The test suite runs the same checks
//! (`tests/sd15_parity.rs`, `tests/dalle_parity.rs` on the CPU, `tests/wgpu_parity.rs` on
//! wgpu), so a new GPU is verified against the same numbers and tolerances as CI.
//!
//! A check measures; it does not panic. A failing comparison is a [`Check`] whose value
//! exceeds its tolerance; a missing fixture or a model that does not load is an [`Error`].

pub mod dalle;
mod fixtures;
pub mod sd15;

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::Serialize;

pub use fixtures::Fixtures;

use crate::backend::BackendTask;
use crate::error::Result;

/// The f32 tolerance of every component check: max |diff| ≤ 1e-4, absolute (the pipelines'
/// relative to the reference's scale). Measured: ≤ 2e-5 on Flex and on Mesa's lavapipe.
pub const F32_TOL: f32 = 1e-4;
/// The f16 tolerance, relative to the reference's scale, of the f16 SD pipeline (UNet and CLIP
/// in f16, the VAE in f32) and of DALL·E's f16 logits, against the fp32 references. Measured:
/// SD 3.1e-3 (Flex) and 3.7e-3 (lavapipe); DALL·E logits 1.8e-3 (lavapipe).
pub const F16_TOL: f32 = 1e-2;

/// How a check's value is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// max |got − want|.
    MaxAbsDiff,
    /// max |got − want| / max(1, max |want|).
    RelativeDiff,
    /// The largest difference of two 8-bit images, in 1/255.
    PixelDiff,
    /// How many values (tokens) differ.
    Mismatches,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::MaxAbsDiff => "max |diff|",
            Measure::RelativeDiff => "max |diff| / scale",
            Measure::PixelDiff => "worst pixel /255",
            Measure::Mismatches => "values differing",
        }
    }
}

/// One comparison with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `sd15` or `dalle`.
    pub family: &'static str,
    pub name: String,
    /// The dtype the model computed in.
    pub precision: &'static str,
    pub measure: Measure,
    pub value: f64,
    pub tol: f64,
    /// Wall time since the previous check of its model (or its load): the compute and the
    /// read-back; on a GPU the first checks also compile their kernels.
    pub seconds: f64,
    /// Why the value is what it is when the comparison could not be made (a length mismatch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.value.is_finite() && self.value <= self.tol
    }
}

/// A family's checks in one precision, stamping each with the family, the precision and the
/// time since the previous check.
pub(crate) struct Recorder {
    family: &'static str,
    precision: &'static str,
    clock: Instant,
    pub checks: Vec<Check>,
}

impl Recorder {
    pub fn new(family: &'static str, dtype: DType) -> Self {
        Self {
            family,
            precision: dtype_name(dtype),
            clock: Instant::now(),
            checks: Vec::new(),
        }
    }

    fn push(&mut self, name: String, measure: Measure, value: f64, tol: f32, note: Option<String>) {
        self.checks.push(Check {
            family: self.family,
            name,
            precision: self.precision,
            measure,
            value,
            tol: f64::from(tol),
            seconds: self.clock.elapsed().as_secs_f64(),
            note,
        });
        self.clock = Instant::now();
    }

    /// `got` against `want` by `measure` (max |diff| or relative to the reference's scale).
    pub fn close(
        &mut self,
        name: impl Into<String>,
        measure: Measure,
        got: &[f32],
        want: &[f32],
        tol: f32,
    ) {
        let name = name.into();
        if got.len() != want.len() {
            let note = format!(
                "{} values against the reference's {}",
                got.len(),
                want.len()
            );
            return self.push(name, measure, f64::INFINITY, tol, Some(note));
        }
        let d = got
            .iter()
            .zip(want)
            .map(|(x, y)| f64::from((x - y).abs()))
            // NaN anywhere is NaN (`f64::max` would drop it), and fails the check.
            .fold(0.0, |m: f64, d| {
                if m.is_nan() || d.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            });
        let value = match measure {
            Measure::RelativeDiff => d / want.iter().fold(1f64, |m, x| m.max(f64::from(x.abs()))),
            _ => d,
        };
        self.push(name, measure, value, tol, None);
    }

    /// The worst difference of two 8-bit images, within `tol` (in 1/255).
    pub fn pixels(&mut self, name: impl Into<String>, got: &[u8], want: &[u8], tol: f32) {
        let name = name.into();
        if got.len() != want.len() {
            let note = format!("{} bytes against the reference's {}", got.len(), want.len());
            return self.push(name, Measure::PixelDiff, f64::INFINITY, tol, Some(note));
        }
        let worst = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max();
        self.push(
            name,
            Measure::PixelDiff,
            f64::from(worst.unwrap_or(0)),
            tol,
            None,
        );
    }

    /// How many of `got` differ from `want` (a length difference counts as that many): none.
    pub fn exact<T: PartialEq>(&mut self, name: impl Into<String>, got: &[T], want: &[T]) {
        let off =
            got.iter().zip(want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len());
        self.count(name, off, 0.0);
    }

    /// `off` values differ, at most `tol` may.
    pub fn count(&mut self, name: impl Into<String>, off: usize, tol: f32) {
        self.push(name.into(), Measure::Mismatches, off as f64, tol, None);
    }
}

pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// A tensor's values on the host, as f32.
pub(crate) fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    crate::nn::host_f32(t)
}

/// The model families `kiln doctor` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sd15,
    Dalle,
}

/// The checks of one family in one dtype (f32 or f16), on one device: what `kiln doctor` runs
/// through [`crate::backend::dispatch`] for each family and dtype asked for, printing each
/// group's lines as it ends.
pub struct Doctor {
    pub fixtures: Fixtures,
    pub family: Family,
    pub dtype: DType,
}

/// What [`Doctor`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The GPU backends' pools after the checks (bytes reserved: the peak, see
    /// [`crate::backend::DeviceMemory`]); none on the CPU.
    pub device_memory_reserved: Option<u64>,
}

impl BackendTask for Doctor {
    type Output = Result<Report>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let checks = match self.family {
            Family::Sd15 => sd15::all::<B>(&self.fixtures, &device, self.dtype)?,
            Family::Dalle => dalle::all::<B>(&self.fixtures, &device, self.dtype)?,
        };
        let memory = crate::backend::device_memory::<B>(&device);
        Ok(Report {
            checks,
            device_memory_reserved: memory.map(|m| m.bytes_reserved),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_fails_on_nan_length_or_size() {
        let mut rec = Recorder::new("sd15", DType::F32);
        rec.close(
            "nan first",
            Measure::MaxAbsDiff,
            &[f32::NAN, 1.0],
            &[0.0, 1.0],
            1e-4,
        );
        rec.close(
            "nan mid",
            Measure::MaxAbsDiff,
            &[0.0, f32::NAN, 1.0],
            &[0.0; 3],
            10.0,
        );
        rec.close("short", Measure::MaxAbsDiff, &[0.0], &[0.0, 0.0], 1e-4);
        rec.close("relative", Measure::RelativeDiff, &[10.5], &[10.0], 0.06);
        rec.close("absolute", Measure::MaxAbsDiff, &[10.5], &[10.0], 0.06);
        rec.pixels("pixels", &[3, 5], &[4, 7], 1.0);
        rec.exact("tokens", &[1, 2, 3], &[1, 2]);
        let got: Vec<(bool, f64)> = rec.checks.iter().map(|c| (c.passed(), c.value)).collect();
        assert!(!got[0].0 && got[0].1.is_nan());
        assert!(!got[1].0 && got[1].1.is_nan());
        assert!(!got[2].0 && rec.checks[2].note.is_some());
        assert_eq!(got[3], (true, 0.05));
        assert_eq!(got[4], (false, 0.5));
        assert_eq!(got[5], (false, 2.0));
        assert_eq!(got[6], (false, 1.0));
    }
}
