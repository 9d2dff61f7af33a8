//! The DALL·E parity checks against the committed min-dalle references, generic over the
//! backend: `dalle_parity.rs` runs them on the CPU for both weight layouts, `wgpu_parity.rs` on
//! wgpu. Included with `#[path]` by crates that also declare `mod dalle` (`common/dalle.rs`).
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kiln::models::dalle_mini::{DalleMini, SamplingConfig};

use crate::dalle::{self, assert_close, values};

/// The two encoder rows (unconditional, conditional) of the reference prompt.
pub fn text_rows() -> Vec<Vec<u32>> {
    let tt = dalle::ref_u32("text_tokens");
    tt.chunks(64).map(<[u32]>::to_vec).collect()
}

pub fn sampling(key: &str) -> SamplingConfig {
    let s = &dalle::refs_json()[key];
    SamplingConfig {
        cond_scale: s["s"].as_f64().expect("s") as f32,
        temperature: s["temperature"].as_f64().expect("T") as f32,
        top_k: s["top_k"].as_u64().expect("k") as usize,
        top_p: s.get("top_p").and_then(|p| p.as_f64()).unwrap_or(1.0) as f32,
    }
}

pub fn tokens_with_ref_uniforms<B: Backend>(m: &DalleMini<B>, cfg: &SamplingConfig) -> Vec<u32> {
    let (enc, pad) = m.encode(&text_rows());
    let u = dalle::ref_f64("uniforms");
    let out = m
        .decode_tokens(enc, pad, 1, cfg, &mut |_, t| u[t], &mut |_, _| true)
        .expect("decodes");
    out.into_iter().next().expect("one image")
}

/// The largest difference between two RGB8 buffers and how many bytes differ.
fn pixel_diff(got: &[u8], want: &[u32]) -> (i64, usize) {
    assert_eq!(got.len(), want.len(), "pixel count");
    got.iter().zip(want).fold((0, 0), |(worst, off), (&a, &b)| {
        let d = (i64::from(a) - i64::from(b)).abs();
        (worst.max(d), off + usize::from(d != 0))
    })
}

/// Embeddings + LayerNorm, every layer's output and the final state.
pub fn encoder_states<B: Backend>(name: &str, m: &DalleMini<B>, device: &B::Device, tol: f32) {
    let ids: Vec<i64> = text_rows().concat().into_iter().map(i64::from).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 64]), device);
    let trace = m.encoder.forward_traced(ids);
    let mut keys = vec!["enc_embed_ln".to_string()];
    keys.extend((0..m.config.encoder_layers).map(|i| format!("enc_layer{i}")));
    keys.push("encoder_state".into());
    assert_eq!(trace.len(), keys.len());
    for (key, got) in keys.iter().zip(trace) {
        let want = dalle::ref_f32(key).1;
        assert_close(&format!("{name} {key}"), &values(got), &want, tol);
    }
}

/// The decoder fed the reference's image tokens: logits of the first steps, both rows.
pub fn teacher_forced_logits<B: Backend>(name: &str, m: &DalleMini<B>, tol: f32) {
    let (shape, want) = dalle::ref_f32("logits_first");
    let (steps, rows) = (shape[0], shape[2]);
    assert!(steps >= 8);
    let image_tokens = dalle::ref_u32("image_tokens");
    let (enc, pad) = m.encode(&text_rows());
    let mut cache = m.decoder.start(enc, pad, &[0, 1]);
    let mut feed = m.config.decoder_start_token_id;
    for t in 0..steps {
        let got = values(m.decoder.step(&[feed, feed], &mut cache));
        let want = &want[t * 2 * rows..(t + 1) * 2 * rows];
        assert_close(&format!("{name} step {t} logits"), &got, want, tol);
        feed = image_tokens[t];
    }
}

/// Greedy decoding (top-k 1) gives the reference tokens, and their image is within 1/255.
pub fn greedy_tokens_and_image<B: Backend>(name: &str, m: &DalleMini<B>, device: &B::Device) {
    let got = greedy_tokens(name, m);
    let img = kiln::models::dalle_mini::vqgan::to_rgb8(m.vqgan.decode(&[got], device));
    let (worst, off) = pixel_diff(&img[0], &dalle::ref_u32("greedy_image_u8"));
    eprintln!("{name} greedy image: {off} bytes differ, worst by {worst}/255");
    assert!(worst <= 1, "{name}: greedy image differs by {worst}/255");
}

/// Greedy decoding (top-k 1) gives the reference tokens exactly; returns them.
pub fn greedy_tokens<B: Backend>(name: &str, m: &DalleMini<B>) -> Vec<u32> {
    let cfg = SamplingConfig {
        top_k: 1,
        ..sampling("sampling")
    };
    let got = tokens_with_ref_uniforms(m, &cfg);
    assert_eq!(
        got,
        dalle::ref_u32("greedy_tokens"),
        "{name}: greedy tokens"
    );
    got
}

/// The VQGAN on the reference tokens: post_quant_conv output, raw decoder output, and its
/// pixels (within 1/255, at most 0.1 % of them off by that).
pub fn vqgan<B: Backend>(name: &str, m: &DalleMini<B>, device: &B::Device, tol: f32) {
    let tokens = vec![dalle::ref_u32("image_tokens")];
    let z = m
        .vqgan
        .post_quant_conv
        .forward(m.vqgan.codes(&tokens, device));
    let want = dalle::ref_f32("vq_post_quant").1;
    assert_close(&format!("{name} vq_post_quant"), &values(z), &want, tol);
    let raw = m.vqgan.decode_raw(&tokens, device);
    let want = dalle::ref_f32("vq_out_raw").1;
    assert_close(
        &format!("{name} vq_out_raw"),
        &values(raw.clone()),
        &want,
        tol,
    );
    let img = kiln::models::dalle_mini::vqgan::to_rgb8(raw.clamp(0.0, 1.0));
    let want_u8 = dalle::ref_u32("image_u8");
    let (worst, off) = pixel_diff(&img[0], &want_u8);
    assert!(
        worst <= 1 && off * 1000 <= want_u8.len(),
        "{name}: {off} pixels differ, worst {worst}"
    );
}

/// BART loaded in f16 (the VQGAN stays f32) tracks min-dalle's fp32 teacher-forced logits
/// within f16 rounding (1e-2 of their scale), and not exactly (f16 rounding must show).
pub fn f16_teacher_forced_logits<B: Backend>(name: &str, device: &B::Device) {
    use burn::tensor::DType;
    let (shape, want) = dalle::ref_f32("logits_first");
    let (steps, rows) = (shape[0], shape[2]);
    let image_tokens = dalle::ref_u32("image_tokens");
    let m = DalleMini::<B>::load_as(&dalle::flax_dir(), None, device, DType::F16)
        .expect("loads in f16");
    assert_eq!(m.decoder.lm_head.weight.val().dtype(), DType::F16);
    let (enc, pad) = m.encode(&text_rows());
    let mut cache = m.decoder.start(enc, pad, &[0, 1]);
    let mut feed = m.config.decoder_start_token_id;
    let mut worst = 0.0f32;
    for t in 0..steps {
        let got = values(m.decoder.step(&[feed, feed], &mut cache));
        let want = &want[t * 2 * rows..(t + 1) * 2 * rows];
        let scale = want.iter().fold(1.0f32, |a, &b| a.max(b.abs()));
        let d = got
            .iter()
            .zip(want)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        worst = worst.max(d / scale);
        feed = image_tokens[t];
    }
    eprintln!("{name} f16 logits: max |diff| / max(1, |ref|) = {worst:e}");
    assert!(
        worst > 0.0 && worst <= 1e-2,
        "{name}: f16 logits off by {worst:e} of scale"
    );
}
