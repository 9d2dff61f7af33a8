//! DALL·E Mini/Mega parity on the tiny random model (models/fixtures/dalle-tiny, made by
//! models/make_dalle_fixtures.py with min-dalle's modules): encoder states, teacher-forced
//! logits, VQGAN output, greedy and sampled token sequences — from both weight layouts.

#[path = "common/dalle.rs"]
mod dalle;

use burn::tensor::{Int, Tensor, TensorData};
use dalle::{assert_close, device, values};
use kiln::models::dalle_mini::{DalleMini, SamplingConfig, Tokenization};

const TOL: f32 = 1e-4;

fn text_rows() -> Vec<Vec<u32>> {
    let tt = dalle::ref_u32("text_tokens");
    tt.chunks(64).map(<[u32]>::to_vec).collect()
}

fn sampling(key: &str) -> SamplingConfig {
    let s = &dalle::refs_json()[key];
    SamplingConfig {
        cond_scale: s["s"].as_f64().expect("s") as f32,
        temperature: s["temperature"].as_f64().expect("T") as f32,
        top_k: s["top_k"].as_u64().expect("k") as usize,
        top_p: s.get("top_p").and_then(|p| p.as_f64()).unwrap_or(1.0) as f32,
    }
}

fn tokens_with_ref_uniforms(m: &DalleMini<dalle::B>, cfg: &SamplingConfig) -> Vec<u32> {
    let (enc, pad) = m.encode(&text_rows());
    let u = dalle::ref_f64("uniforms");
    let out = m
        .decode_tokens(enc, pad, 1, cfg, &mut |_, t| u[t], &mut |_, _| true)
        .expect("decodes");
    out.into_iter().next().expect("one image")
}

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
        let m = dalle::load(&dir);
        let ids: Vec<i64> = text_rows().concat().into_iter().map(i64::from).collect();
        let ids = Tensor::<dalle::B, 2, Int>::from_data(TensorData::new(ids, [2, 64]), &device());
        let trace = m.encoder.forward_traced(ids);
        let layers = m.config.encoder_layers;
        let mut keys = vec!["enc_embed_ln".to_string()];
        keys.extend((0..layers).map(|i| format!("enc_layer{i}")));
        keys.push("encoder_state".into());
        for (key, got) in keys.iter().zip(trace) {
            assert_close(
                &format!("{name} {key}"),
                &values(got),
                &dalle::ref_f32(key).1,
                TOL,
            );
        }
    }
}

#[test]
fn teacher_forced_logits_match() {
    let (shape, want) = dalle::ref_f32("logits_first");
    let (steps, rows) = (shape[0], shape[2]);
    assert!(steps >= 8);
    let image_tokens = dalle::ref_u32("image_tokens");
    for (name, dir) in dalle::layouts() {
        let m = dalle::load(&dir);
        let (enc, pad) = m.encode(&text_rows());
        let mut cache = m.decoder.start(enc, pad, &[0, 1]);
        let mut feed = m.config.decoder_start_token_id;
        for t in 0..steps {
            let got = values(m.decoder.step(&[feed, feed], &mut cache));
            assert_close(
                &format!("{name} step {t} logits"),
                &got,
                &want[t * 2 * rows..(t + 1) * 2 * rows],
                TOL,
            );
            feed = image_tokens[t];
        }
    }
}

#[test]
fn greedy_tokens_and_image_match() {
    let want = dalle::ref_u32("greedy_tokens");
    let want_img = dalle::ref_u32("greedy_image_u8");
    let cfg = SamplingConfig {
        top_k: 1,
        ..sampling("sampling")
    };
    for (name, dir) in dalle::layouts() {
        let m = dalle::load(&dir);
        let got = tokens_with_ref_uniforms(&m, &cfg);
        assert_eq!(got, want, "{name}: greedy tokens");
        let img = kiln::models::dalle_mini::vqgan::to_rgb8(m.vqgan.decode(&[got], &device()));
        let worst = img[0]
            .iter()
            .zip(&want_img)
            .map(|(&a, &b)| (i64::from(a) - i64::from(b)).abs())
            .max();
        assert!(
            worst <= Some(1),
            "{name}: greedy image differs by {worst:?}/255"
        );
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
    let tokens = dalle::ref_u32("image_tokens");
    let want_u8 = dalle::ref_u32("image_u8");
    for (name, dir) in dalle::layouts() {
        let m = dalle::load(&dir);
        let z = m
            .vqgan
            .post_quant_conv
            .forward(m.vqgan.codes(std::slice::from_ref(&tokens), &device()));
        assert_close(
            &format!("{name} vq_post_quant"),
            &values(z),
            &dalle::ref_f32("vq_post_quant").1,
            TOL,
        );
        let raw = m.vqgan.decode_raw(std::slice::from_ref(&tokens), &device());
        assert_close(
            &format!("{name} vq_out_raw"),
            &values(raw.clone()),
            &dalle::ref_f32("vq_out_raw").1,
            TOL,
        );
        let img = kiln::models::dalle_mini::vqgan::to_rgb8(raw.clamp(0.0, 1.0));
        let off = img[0]
            .iter()
            .zip(&want_u8)
            .filter(|(a, b)| u32::from(**a) != **b)
            .count();
        let worst = img[0]
            .iter()
            .zip(&want_u8)
            .map(|(&a, &b)| (i64::from(a) - i64::from(b)).abs())
            .max();
        assert!(
            worst <= Some(1) && off * 1000 <= want_u8.len(),
            "{name}: {off} pixels differ, worst {worst:?}"
        );
    }
}

/// `--precision f16`: BART in f16 (the VQGAN stays f32) tracks min-dalle's fp32 logits within
/// f16 rounding. Flex computes f16 on the CPU, so the GPU path's dtype handling runs here.
#[test]
fn f16_teacher_forced_logits_within_f16_tolerance() {
    use burn::tensor::DType;
    let (shape, want) = dalle::ref_f32("logits_first");
    let (steps, rows) = (shape[0], shape[2]);
    let image_tokens = dalle::ref_u32("image_tokens");
    let m = DalleMini::<dalle::B>::load_as(&dalle::flax_dir(), None, &device(), DType::F16)
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
    eprintln!("f16 logits: max |diff| / max(1, |ref|) = {worst:e}");
    assert!(
        worst > 0.0 && worst <= 1e-2,
        "f16 logits off by {worst:e} of scale"
    );
}
