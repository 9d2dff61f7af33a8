//! Shared test helpers: fixture paths, reference tensors, the CPU backend, comparisons.
//! `tensor_on` and `values` take any backend (`wgpu_parity.rs` runs on wgpu).
#![allow(dead_code)]

mod checks;
#[allow(unused_imports)] // not every test crate asserts checks
pub use checks::assert_passes;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

pub type B = burn::backend::Flex;

pub fn device() -> burn::backend::flex::FlexDevice {
    burn::backend::flex::FlexDevice
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(rel)
}

pub fn sd_tiny() -> PathBuf {
    fixture("sd15-tiny")
}

/// The committed fixtures, as `kiln doctor` reads them.
pub fn fixtures() -> kiln::doctor::Fixtures {
    kiln::doctor::Fixtures::new(fixture("")).expect("models/fixtures")
}

/// A reference tensor from `models/fixtures/sd15-tiny/refs/<file>`.
pub fn reference(file: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    fixtures().sd15_ref(file, key).expect("reference tensor")
}

pub fn tensor<const D: usize>(shape: &[usize], values: Vec<f32>) -> Tensor<B, D> {
    tensor_on(shape, values, &device())
}

pub fn tensor_on<Bk: Backend, const D: usize>(
    shape: &[usize],
    values: Vec<f32>,
    device: &Bk::Device,
) -> Tensor<Bk, D> {
    Tensor::from_data(TensorData::new(values, shape.to_vec()), device)
}

pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert_dtype(DType::F32)
        .to_vec::<f32>()
        .expect("f32 data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Fails with the size of the error when `got` is not within `tol` of the reference.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(
        d.is_finite() && d <= tol,
        "{what}: max |diff| = {d:e} > {tol:e}"
    );
    eprintln!("{what}: max |diff| = {d:e}");
}

/// Like [`assert_close`] with the error measured against `max(1, max|ref|)`, as the fixture
/// checker (`models/make_sd15_fixtures.py --verify`) does: Euler's latents live at σ ≈ 15, where
/// f32 rounding alone is ~1e-6 per operation.
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let d = max_abs_diff(got, want);
    assert!(
        d.is_finite() && d / scale <= tol,
        "{what}: max |diff| = {d:e} (scale {scale}) > {tol:e} relative"
    );
    eprintln!("{what}: max |diff| = {d:e}, scale {scale}");
}

/// Copies the tree `from` into `to`, leaving out `refs/` folders and the files `keep` refuses
/// (a fixture to break in a tempdir without its large reference tensors).
pub fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "refs" {
                copy_tree(&e.path(), &dst, keep);
            }
        } else if keep(&e.path()) {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
