//! DALL·E Mini/Mega parity on the tiny random model (models/fixtures/dalle-tiny, made by
//! models/make_dalle_fixtures.py with min-dalle's modules): encoder states, teacher-forced
//! logits, VQGAN output, greedy and sampled token sequences — from both weight layouts.

#[path = "common/dalle.rs"]
mod dalle;
#[path = "common/dalle_checks.rs"]
mod dalle_checks;

use dalle::device;
use dalle_checks::{sampling, text_rows, tokens_with_ref_uniforms};
use kiln::models::dalle_mini::Tokenization;

const TOL: f32 = 1e-4;

#[test]
fn text_rows_match_min_dalle_tokenizer() {
    let m = dalle::load(&dalle::min_dalle_dir());
    let prompt = dalle::refs_json()["prompt"]
        .as_str()
        .expect("prompt")
        .to_string();
    let [uncond, cond] = m
        .text_rows(&prompt, Tokenization::MinDalle, 0)
        .expect("rows");
    assert_eq!(vec![uncond, cond], text_rows());
}

#[test]
fn encoder_states_match() {
    for (name, dir) in dalle::layouts() {
        dalle_checks::encoder_states(name, &dalle::load(&dir), &device(), TOL);
    }
}

#[test]
fn teacher_forced_logits_match() {
    for (name, dir) in dalle::layouts() {
        dalle_checks::teacher_forced_logits(name, &dalle::load(&dir), TOL);
    }
}

#[test]
fn greedy_tokens_and_image_match() {
    for (name, dir) in dalle::layouts() {
        dalle_checks::greedy_tokens_and_image(name, &dalle::load(&dir), &device());
    }
}

#[test]
fn sampled_tokens_match_with_reference_uniforms() {
    for (key, tokens) in [("sampling", "image_tokens"), ("sampling2", "image_tokens2")] {
        let want = dalle::ref_u32(tokens);
        for (name, dir) in dalle::layouts() {
            let m = dalle::load(&dir);
            assert_eq!(
                tokens_with_ref_uniforms(&m, &sampling(key)),
                want,
                "{name}: {tokens} ({key})"
            );
        }
    }
}

#[test]
fn vqgan_matches() {
    for (name, dir) in dalle::layouts() {
        dalle_checks::vqgan(name, &dalle::load(&dir), &device(), TOL);
    }
}

/// `--precision f16`: BART in f16 (the VQGAN stays f32) tracks min-dalle's fp32 logits within
/// f16 rounding. Flex computes f16 on the CPU, so the GPU path's dtype handling runs here.
#[test]
fn f16_teacher_forced_logits_within_f16_tolerance() {
    dalle_checks::f16_teacher_forced_logits::<dalle::B>("cpu", &device());
}
