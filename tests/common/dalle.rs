//! Helpers for the DALL·E tests (included with `#[path]`, self-contained): the tiny fixture
//! folders, their reference tensors, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use kiln::models::dalle_mini::DalleMini;

pub type B = burn::backend::Flex;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(rel)
}

pub fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert_dtype(DType::F32)
        .to_vec::<f32>()
        .expect("f32 data")
}

/// Fails with the size of the error when `got` is not within `tol` of the reference.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length mismatch");
    let d = got
        .iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(
        d.is_finite() && d <= tol,
        "{what}: max |diff| = {d:e} > {tol:e}"
    );
    eprintln!("{what}: max |diff| = {d:e}");
}

pub fn tiny() -> PathBuf {
    fixture("dalle-tiny")
}

pub fn flax_dir() -> PathBuf {
    tiny().join("flax")
}

pub fn min_dalle_dir() -> PathBuf {
    tiny().join("mindalle/dalle_bart_tiny")
}

/// Both layouts, with a label for messages.
pub fn layouts() -> [(&'static str, PathBuf); 2] {
    [("min-dalle", min_dalle_dir()), ("flax", flax_dir())]
}

pub fn load(dir: &std::path::Path) -> DalleMini<B> {
    DalleMini::<B>::load(dir, &device()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The committed fixtures, as `kiln doctor` reads them.
pub fn fixtures() -> kiln::doctor::Fixtures {
    kiln::doctor::Fixtures::new(fixture("")).expect("models/fixtures")
}

pub fn ref_f32(key: &str) -> (Vec<usize>, Vec<f32>) {
    fixtures().dalle_f32(key).expect("reference tensor")
}

pub fn ref_f64(key: &str) -> Vec<f64> {
    fixtures().dalle_f64(key).expect("reference tensor")
}

pub fn ref_u32(key: &str) -> Vec<u32> {
    fixtures().dalle_u32(key).expect("reference tensor")
}

pub fn refs_json() -> serde_json::Value {
    fixtures().dalle_json().expect("refs.json")
}

/// A fresh scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-dalle-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Copies a folder's files (not recursively) into `dst`.
pub fn copy_files(src: &std::path::Path, dst: &std::path::Path) {
    for entry in std::fs::read_dir(src).expect("read dir").flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
        }
    }
}
