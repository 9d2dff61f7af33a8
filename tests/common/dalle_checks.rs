//! The DALL·E parity checks against the committed min-dalle references, generic over the
//! backend: `dalle_parity.rs` runs them on the CPU for both weight layouts, `wgpu_parity.rs` on
//! wgpu. They are `kiln doctor`'s (`kiln::doctor::dalle`). Included with `#[path]` by crates
//! that also declare `mod dalle` (`common/dalle.rs`).
#![allow(dead_code)]

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use kiln::doctor::dalle as doctor;
use kiln::models::dalle_mini::{DalleMini, SamplingConfig};

use crate::dalle::{self, fixtures};

#[path = "checks.rs"]
mod checks;
use checks::assert_passes;

/// The two encoder rows (unconditional, conditional) of the reference prompt.
pub fn text_rows() -> Vec<Vec<u32>> {
    doctor::text_rows(&fixtures()).expect("text_tokens")
}

pub fn sampling(key: &str) -> SamplingConfig {
    doctor::sampling(&fixtures(), key).expect("refs.json")
}

pub fn tokens_with_ref_uniforms<B: Backend>(m: &DalleMini<B>, cfg: &SamplingConfig) -> Vec<u32> {
    doctor::tokens_with_ref_uniforms(&fixtures(), m, cfg).expect("decodes")
}

/// Embeddings + LayerNorm, every layer's output and the final state.
pub fn encoder_states<B: Backend>(name: &str, m: &DalleMini<B>, _device: &B::Device, tol: f32) {
    assert_passes(doctor::encoder_states(&fixtures(), m, name, tol));
}

/// The decoder fed the reference's image tokens: logits of the first steps, both rows.
pub fn teacher_forced_logits<B: Backend>(name: &str, m: &DalleMini<B>, tol: f32) {
    assert_passes(doctor::teacher_forced_logits(&fixtures(), m, name, tol));
}

/// Greedy decoding (top-k 1) gives the reference tokens, and their image is within 1/255.
pub fn greedy_tokens_and_image<B: Backend>(name: &str, m: &DalleMini<B>, _device: &B::Device) {
    assert_passes(doctor::greedy(&fixtures(), m, name, true));
}

/// Greedy decoding (top-k 1) gives the reference tokens exactly.
pub fn greedy_tokens<B: Backend>(name: &str, m: &DalleMini<B>) {
    assert_passes(doctor::greedy(&fixtures(), m, name, false));
}

/// The VQGAN on the reference tokens: post_quant_conv output, raw decoder output, and its
/// pixels (within 1/255, at most 0.1 % of them off by that).
pub fn vqgan<B: Backend>(name: &str, m: &DalleMini<B>, _device: &B::Device, tol: f32) {
    assert_passes(doctor::vqgan(&fixtures(), m, name, tol));
}

/// BART loaded in f16 (the VQGAN stays f32) tracks min-dalle's fp32 teacher-forced logits
/// within f16 rounding (1e-2 of their scale), and not exactly (f16 rounding must show).
pub fn f16_teacher_forced_logits<B: Backend>(name: &str, device: &B::Device) {
    let m = DalleMini::<B>::load_as(&dalle::flax_dir(), None, device, DType::F16)
        .expect("loads in f16");
    assert_eq!(m.decoder.lm_head.weight.val().dtype(), DType::F16);
    let checks = assert_passes(doctor::f16_teacher_forced_logits(
        &fixtures(),
        &m,
        kiln::doctor::F16_TOL,
    ));
    assert!(
        checks.iter().all(|c| c.value > 0.0),
        "{name}: f16 logits equal fp32"
    );
}
