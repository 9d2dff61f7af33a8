//! DALL·E Mini/Mega against min-dalle on the tiny model (`models/make_dalle_fixtures.py`):
//! encoder states, teacher-forced logits, the VQGAN and greedy decoding in f32; the logits with
//! BART in f16.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::{Check, F16_TOL, F32_TOL, Fixtures, Measure, Recorder, values};
use crate::error::{Error, Result};
use crate::models::dalle_mini::vqgan::to_rgb8;
use crate::models::dalle_mini::{DalleMini, SamplingConfig};

const FAMILY: &str = "dalle";

/// What `kiln doctor` checks in `dtype`, on the flax layout (the layouts differ at load time,
/// not on the device): everything in f32, the logits with BART in f16.
pub fn all<B: Backend>(fx: &Fixtures, device: &B::Device, dtype: DType) -> Result<Vec<Check>> {
    match dtype {
        DType::F32 => {
            let m = DalleMini::<B>::load(&fx.dalle_flax(), device)?;
            let mut checks = encoder_states(fx, &m, "", F32_TOL)?;
            checks.extend(teacher_forced_logits(fx, &m, "", F32_TOL)?);
            checks.extend(vqgan(fx, &m, "", F32_TOL)?);
            checks.extend(greedy(fx, &m, "", true)?);
            Ok(checks)
        }
        DType::F16 => {
            let m = DalleMini::<B>::load_as(&fx.dalle_flax(), None, device, DType::F16)?;
            f16_teacher_forced_logits(fx, &m, F16_TOL)
        }
        other => Err(Error::invalid(format!("no DALL·E checks in {other:?}"))),
    }
}

/// `label` (a weight layout) before `what`, when given.
fn named(label: &str, what: &str) -> String {
    if label.is_empty() {
        what.into()
    } else {
        format!("{label} {what}")
    }
}

/// The two encoder rows (unconditional, conditional) of the reference prompt.
pub fn text_rows(fx: &Fixtures) -> Result<Vec<Vec<u32>>> {
    Ok(fx
        .dalle_u32("text_tokens")?
        .chunks(64)
        .map(<[u32]>::to_vec)
        .collect())
}

/// The reference's sampling settings under `key` of `refs.json`.
pub fn sampling(fx: &Fixtures, key: &str) -> Result<SamplingConfig> {
    let json = fx.dalle_json()?;
    let s = &json[key];
    let num = |k: &str| {
        s[k].as_f64()
            .ok_or_else(|| Error::invalid(format!("refs.json: `{key}.{k}` is not a number")))
    };
    Ok(SamplingConfig {
        cond_scale: num("s")? as f32,
        temperature: num("temperature")? as f32,
        top_k: num("top_k")? as usize,
        top_p: s.get("top_p").and_then(|p| p.as_f64()).unwrap_or(1.0) as f32,
    })
}

/// The tokens decoded with the reference's own uniforms.
pub fn tokens_with_ref_uniforms<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    cfg: &SamplingConfig,
) -> Result<Vec<u32>> {
    let (enc, pad) = m.encode(&text_rows(fx)?);
    let u = fx.dalle_f64("uniforms")?;
    let mut out = m.decode_tokens(
        enc,
        pad,
        1,
        cfg,
        &mut |_, t| u.get(t).copied().unwrap_or(0.5),
        &mut |_, _| true,
    )?;
    Ok(out.pop().unwrap_or_default())
}

/// Embeddings + LayerNorm, every layer's output and the final state.
pub fn encoder_states<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    label: &str,
    tol: f32,
) -> Result<Vec<Check>> {
    let ids: Vec<i64> = text_rows(fx)?.concat().into_iter().map(i64::from).collect();
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let rows = ids.len() / 64;
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, 64]), &m.device);
    let trace = m.encoder.forward_traced(ids);
    let mut keys = vec!["enc_embed_ln".to_string()];
    keys.extend((0..m.config.encoder_layers).map(|i| format!("enc_layer{i}")));
    keys.push("encoder_state".into());
    if trace.len() != keys.len() {
        return Err(Error::invalid(format!(
            "the encoder traced {} states, not {}",
            trace.len(),
            keys.len()
        )));
    }
    for (key, got) in keys.iter().zip(trace) {
        let want = fx.dalle_f32(key)?.1;
        rec.close(
            named(label, key),
            Measure::MaxAbsDiff,
            &values(got)?,
            &want,
            tol,
        );
    }
    Ok(rec.checks)
}

/// The decoder fed the reference's image tokens: both rows' logits over the first steps.
pub fn teacher_forced_logits<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    label: &str,
    tol: f32,
) -> Result<Vec<Check>> {
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let (got, want) = logits_fed_reference(fx, m)?;
    rec.close(
        named(label, "teacher-forced logits"),
        Measure::MaxAbsDiff,
        &got,
        &want,
        tol,
    );
    Ok(rec.checks)
}

/// (logits of the reference's first steps, the reference's), the decoder fed its tokens.
fn logits_fed_reference<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (shape, want) = fx.dalle_f32("logits_first")?;
    let image_tokens = fx.dalle_u32("image_tokens")?;
    let (enc, pad) = m.encode(&text_rows(fx)?);
    let mut cache = m.decoder.start(enc, pad, &[0, 1]);
    let mut feed = m.config.decoder_start_token_id;
    let mut got = Vec::with_capacity(want.len());
    for t in 0..shape[0] {
        got.extend(values(m.decoder.step(&[feed, feed], &mut cache))?);
        feed = image_tokens.get(t).copied().unwrap_or(feed);
    }
    Ok((got, want))
}

/// The VQGAN on the reference tokens: post_quant_conv output, raw decoder output, and its
/// pixels (within 1/255, at most 0.1 % of them off by that).
pub fn vqgan<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    label: &str,
    tol: f32,
) -> Result<Vec<Check>> {
    let tokens = vec![fx.dalle_u32("image_tokens")?];
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let z = m
        .vqgan
        .post_quant_conv
        .forward(m.vqgan.codes(&tokens, &m.device));
    let want = fx.dalle_f32("vq_post_quant")?.1;
    rec.close(
        named(label, "vqgan post_quant_conv"),
        Measure::MaxAbsDiff,
        &values(z)?,
        &want,
        tol,
    );
    let raw = m.vqgan.decode_raw(&tokens, &m.device);
    let want = fx.dalle_f32("vq_out_raw")?.1;
    rec.close(
        named(label, "vqgan decoder"),
        Measure::MaxAbsDiff,
        &values(raw.clone())?,
        &want,
        tol,
    );
    let got = to_rgb8(raw.clamp(0.0, 1.0)).concat();
    let want = fx.dalle_u8("image_u8")?;
    rec.pixels(named(label, "vqgan pixels"), &got, &want, 1.0);
    let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    rec.count(
        named(label, "vqgan pixels off by 1/255"),
        off,
        want.len() as f32 / 1000.0,
    );
    Ok(rec.checks)
}

/// Greedy decoding (top-k 1) gives the reference tokens exactly; with `image`, their VQGAN
/// image is within 1/255 of the reference's.
pub fn greedy<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    label: &str,
    image: bool,
) -> Result<Vec<Check>> {
    let cfg = SamplingConfig {
        top_k: 1,
        ..sampling(fx, "sampling")?
    };
    let mut rec = Recorder::new(FAMILY, DType::F32);
    let got = tokens_with_ref_uniforms(fx, m, &cfg)?;
    rec.exact(
        named(label, "greedy tokens"),
        &got,
        &fx.dalle_u32("greedy_tokens")?,
    );
    if image {
        let img = to_rgb8(m.vqgan.decode(&[got], &m.device)).concat();
        rec.pixels(
            named(label, "greedy image pixels"),
            &img,
            &fx.dalle_u8("greedy_image_u8")?,
            1.0,
        );
    }
    Ok(rec.checks)
}

/// BART loaded in f16 (the VQGAN stays f32): teacher-forced logits against min-dalle's fp32
/// ones within `tol` of their scale (the largest logit of all steps).
pub fn f16_teacher_forced_logits<B: Backend>(
    fx: &Fixtures,
    m: &DalleMini<B>,
    tol: f32,
) -> Result<Vec<Check>> {
    let mut rec = Recorder::new(FAMILY, DType::F16);
    let (got, want) = logits_fed_reference(fx, m)?;
    rec.close(
        "teacher-forced logits",
        Measure::RelativeDiff,
        &got,
        &want,
        tol,
    );
    Ok(rec.checks)
}
