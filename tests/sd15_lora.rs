//! LoRAs on the tiny SD 1.5 model against diffusers (`load_lora_weights` + `set_adapters`),
//! references made by `models/make_sd15_lora_fixtures.py`: final latents of 4-step runs, fp32 on
//! the CPU backend, max |diff| ≤ 1e-4 × max(1, max|ref|), the tolerance of `sd15_parity.rs`.
//! The LoRAs move the latents by 7–28 (checked below to be far above the tolerance), so a wrong
//! scale, weight or key mapping cannot pass.

mod common;

use std::path::PathBuf;

use burn::tensor::DType;
use common::*;
use kiln::Error;
use kiln::models::sd15::lora::{LoraFormat, inspect};
use kiln::models::sd15::{GenerateRequest, LoraSpec, NoiseOverrides, StableDiffusion};
use kiln::schedulers::SchedulerKind;

const TOL: f32 = 1e-4;
const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn lora(name: &str) -> PathBuf {
    fixture("sd15-tiny-lora").join(name)
}

fn refs(key: &str) -> Vec<f32> {
    let f = kiln::weights::TensorFile::open(&lora("refs.safetensors")).expect("refs");
    f.read_f32(key).expect("reference tensor").1
}

fn specs(loras: &[(&str, f32)]) -> Vec<LoraSpec> {
    loras
        .iter()
        .map(|&(name, weight)| LoraSpec {
            path: lora(&format!("{name}.safetensors")),
            weight,
        })
        .collect()
}

/// DDIM 4 steps, guidance 7.5 from the reference noise (the LCM case: LCM, guidance 1, with
/// the scheduler's injected step noise).
fn request(loras: &[(&str, f32)], lcm: bool) -> GenerateRequest {
    let step_noise = lcm.then(|| {
        (0..)
            .map_while(|i| {
                kiln::weights::TensorFile::open(&lora("refs.safetensors"))
                    .ok()?
                    .read_f32(&format!("lcm_noise_step{i}"))
                    .ok()
                    .map(|(_, v)| v)
            })
            .collect()
    });
    GenerateRequest {
        prompt: PROMPT.into(),
        steps: 4,
        guidance_scale: if lcm { 1.0 } else { 7.5 },
        scheduler: if lcm {
            SchedulerKind::Lcm
        } else {
            SchedulerKind::Ddim
        },
        width: 96,
        height: 128,
        noise: NoiseOverrides {
            init_latents: Some(refs("init_noise")),
            step_noise,
            ..Default::default()
        },
        loras: specs(loras),
        ..Default::default()
    }
}

fn latents(m: &StableDiffusion<B>, req: &GenerateRequest) -> Vec<f32> {
    values(
        m.generate(req, &mut |_, _| true)
            .expect("generation runs")
            .latents,
    )
}

fn model() -> StableDiffusion<B> {
    StableDiffusion::<B>::load(&sd_tiny(), false, &device()).expect("tiny model loads")
}

/// `got` matches reference `key`, and that reference is far (> 100 × tolerance) from `base`.
fn check(what: &str, got: &[f32], key: &str, base: &str) {
    let want = refs(key);
    assert_close_scaled(what, got, &want, TOL);
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let moved = max_abs_diff(&want, &refs(base));
    assert!(
        moved > 100.0 * TOL * scale,
        "{what}: the LoRA moves the latents by only {moved}"
    );
}

#[test]
fn kohya_locon_with_text_encoder_matches_diffusers() {
    let got = latents(&model(), &request(&[("kohya", 1.0)], false));
    check("kohya", &got, "kohya", "base");
}

#[test]
fn peft_matches_diffusers_and_old_diffusers_names_equal_it() {
    let m = model();
    let got = latents(&m, &request(&[("peft", 1.0)], false));
    check("peft", &got, "peft", "base");
    let old = latents(&m, &request(&[("old_diffusers", 1.0)], false));
    assert_eq!(old, got, "pre-PEFT diffusers names give other latents");
}

#[test]
fn two_loras_at_different_weights_match_diffusers() {
    let got = latents(&model(), &request(&[("kohya", 0.7), ("peft", -0.4)], false));
    check("kohya 0.7 + peft -0.4", &got, "kohya_peft", "base");
}

#[test]
fn lcm_style_lora_with_lcm_4_steps_guidance_1_matches_diffusers() {
    let m = model();
    let base = latents(&m, &request(&[], true));
    assert_close_scaled("lcm without LoRA", &base, &refs("lcm_base"), TOL);
    let got = latents(&m, &request(&[("lcm_style", 1.0)], true));
    check("lcm with lcm_style", &got, "lcm", "lcm_base");
}

#[test]
fn single_file_model_takes_the_same_lora() {
    let single = StableDiffusion::<B>::load(
        &sd_tiny().join("sd15-tiny-fp16.safetensors"),
        false,
        &device(),
    )
    .expect("single file loads");
    let got = latents(&single, &request(&[("kohya", 1.0)], false));
    // The fp16 file's weights stay f16 in memory on the CPU; the adapted ones are merged in
    // f32, so the result is the f32 folder's, bit for bit.
    assert_eq!(got, latents(&model(), &request(&[("kohya", 1.0)], false)));
}

#[test]
fn f16_model_takes_a_lora_within_f16_tolerance() {
    let m = StableDiffusion::<B>::load_as(&sd_tiny(), false, &device(), DType::F16).expect("loads");
    let got = latents(&m, &request(&[("kohya", 1.0)], false));
    assert_close_scaled("f16 kohya", &got, &refs("kohya"), 1e-2);
}

#[test]
fn no_state_leaks_between_requests_and_variants_are_kept() {
    let m = model();
    let base = latents(&m, &request(&[], false));
    assert_close_scaled("base", &base, &refs("base"), TOL);
    let first = latents(&m, &request(&[("kohya", 1.0)], false));
    assert_eq!(m.lora_cache_usage().0, 1);
    assert_eq!(
        latents(&m, &request(&[], false)),
        base,
        "base changed by a LoRA request"
    );
    let again = latents(&m, &request(&[("kohya", 1.0)], false));
    assert_eq!(again, first, "the kept variant gives other latents");
    assert_eq!(m.lora_cache_usage().0, 1, "same LoRAs, same variant");
    latents(&m, &request(&[("kohya", 0.5)], false));
    assert_eq!(
        m.lora_cache_usage().0,
        2,
        "another weight is another variant"
    );
    // Weight 0 is no LoRA at all.
    assert_eq!(latents(&m, &request(&[("kohya", 0.0)], false)), base);

    let mut uncached = model();
    uncached.set_lora_cache_limit(0);
    assert_eq!(
        latents(&uncached, &request(&[("kohya", 1.0)], false)),
        first
    );
    assert_eq!(uncached.lora_cache_usage(), (0, 0));
}

/// The factors of `peft.safetensors` written under kohya names, without alphas (scale 1, as
/// kohya and A1111 read such files), or with alpha = 2 × rank on every module (scale 2).
fn peft_as_kohya(dir: &std::path::Path, alpha: Option<f32>) -> PathBuf {
    let peft = kiln::weights::TensorFile::open(&lora("peft.safetensors")).expect("peft");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for key in peft.keys() {
        let (shape, v) = peft.read_f32(key).expect("tensor");
        let (module, factor) = key
            .strip_suffix(".lora_A.weight")
            .map(|m| (m, "lora_down.weight"))
            .or_else(|| {
                key.strip_suffix(".lora_B.weight")
                    .map(|m| (m, "lora_up.weight"))
            })
            .expect("peft key");
        let name = module
            .replacen("unet.", "lora_unet_", 1)
            .replacen("text_encoder.", "lora_te_", 1)
            .replace('.', "_");
        if let (Some(a), "lora_down.weight") = (alpha, factor) {
            let a = (a * shape[0] as f32).to_le_bytes().to_vec();
            tensors.push((format!("{name}.alpha"), vec![], a));
        }
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push((format!("{name}.{factor}"), shape, bytes));
    }
    let views = tensors.iter().map(|(k, s, b)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
        (k.clone(), view.expect("view"))
    });
    let out = dir.join(format!("peft_as_kohya_{alpha:?}.safetensors"));
    std::fs::write(
        &out,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    out
}

#[test]
fn kohya_names_without_alpha_scale_1_and_with_alpha_scale_alpha_over_rank() {
    let m = model();
    let dir = tempfile::tempdir().expect("tempdir");
    let peft = latents(&m, &request(&[("peft", 1.0)], false));
    let peft_half = latents(&m, &request(&[("peft", 0.5)], false));
    let run = |path: PathBuf, weight: f32| {
        let req = GenerateRequest {
            loras: vec![LoraSpec { path, weight }],
            ..request(&[], false)
        };
        latents(&m, &req)
    };
    assert_eq!(run(peft_as_kohya(dir.path(), None), 1.0), peft);
    // alpha / rank = 2 at weight 0.25 is the PEFT file at 0.5.
    assert_close_scaled(
        "alpha = 2 rank",
        &run(peft_as_kohya(dir.path(), Some(2.0)), 0.25),
        &peft_half,
        1e-6,
    );
}

fn lora_error(m: &StableDiffusion<B>, file: &str) -> String {
    let path = lora(file);
    let err = match m
        .generate(&request(&[], false), &mut |_, _| true)
        .map(|_| ())
    {
        Ok(()) => m
            .generate(
                &GenerateRequest {
                    loras: vec![LoraSpec {
                        path: path.clone(),
                        weight: 1.0,
                    }],
                    ..request(&[], false)
                },
                &mut |_, _| true,
            )
            .err()
            .expect("the LoRA is refused"),
        Err(e) => panic!("base run failed: {e}"),
    };
    assert!(matches!(err, Error::Lora { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(file), "{msg}: no file name");
    let checked = m
        .check_lora(&path)
        .err()
        .expect("check_lora refuses it too");
    assert_eq!(checked.to_string(), msg);
    msg
}

#[test]
fn bad_loras_are_refused_naming_file_and_key_and_base_is_untouched() {
    let m = model();
    let base = latents(&m, &request(&[], false));

    let msg = lora_error(&m, "sdxl_keys.safetensors");
    assert!(
        msg.contains("lora_te2_text_model_encoder_layers_0_self_attn_q_proj"),
        "{msg}"
    );
    assert!(msg.contains("SDXL"), "{msg}");
    let err = inspect(&lora("sdxl_keys.safetensors")).expect_err("inspect refuses SDXL");
    assert!(err.to_string().contains("SDXL"));

    let msg = lora_error(&m, "bad_shape.safetensors");
    assert!(
        msg.contains("attn1_to_q.lora_down.weight")
            && msg.contains("[4, 48]")
            && msg.contains("[32, 32]"),
        "{msg}"
    );

    let msg = lora_error(&m, "not_lora.safetensors");
    assert!(
        msg.contains("`bias`") && msg.contains("not a LoRA"),
        "{msg}"
    );

    let msg = lora_error(&m, "no_such_file.safetensors");
    assert!(msg.contains("cannot read"), "{msg}");

    assert_eq!(
        latents(&m, &request(&[], false)),
        base,
        "base changed after errors"
    );
    assert_eq!(m.lora_cache_usage(), (0, 0));
}

#[test]
fn inspect_reports_format_rank_and_parts() {
    let k = inspect(&lora("kohya.safetensors")).expect("kohya");
    assert_eq!(k.formats, vec![LoraFormat::Kohya]);
    assert_eq!((k.rank, k.text_encoder_modules), (4, 12));
    assert!(k.unet_modules > 40 && k.conv_modules > 0, "{k:?}");
    let p = inspect(&lora("peft.safetensors")).expect("peft");
    assert_eq!(p.formats, vec![LoraFormat::Peft]);
    assert_eq!((p.rank, p.text_encoder_modules, p.conv_modules), (2, 8, 0));
    let o = inspect(&lora("old_diffusers.safetensors")).expect("old");
    assert_eq!(o.formats, vec![LoraFormat::DiffusersOld]);
    assert_eq!(
        (o.unet_modules, o.text_encoder_modules),
        (p.unet_modules, 8)
    );
}

/// Resident memory and its peak, in MiB (Linux `/proc/self/status`).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Measurement, not a check (run by hand): the cost of a LoRA variant on a full-size model.
/// `KILN_LORA_BENCH_MODEL=.cache/sd15-random KILN_LORA_BENCH_FILE=.cache/sd15-lora/lcm_style_full.safetensors
/// cargo test --release --test sd15_lora -- --ignored --nocapture` (files from
/// `make_sd15_fixtures.py --full` and `make_sd15_lora_fixtures.py --full-lcm`).
#[test]
#[ignore]
fn measure_variant_cost_on_a_full_size_model() {
    use std::time::Instant;
    let (Some(model_dir), Some(file)) = (
        std::env::var_os("KILN_LORA_BENCH_MODEL"),
        std::env::var_os("KILN_LORA_BENCH_FILE"),
    ) else {
        eprintln!("KILN_LORA_BENCH_MODEL / KILN_LORA_BENCH_FILE not set; nothing measured");
        return;
    };
    let t = Instant::now();
    let m = StableDiffusion::<B>::load(std::path::Path::new(&model_dir), false, &device())
        .expect("model loads");
    eprintln!("base model loaded in {:.2} s", t.elapsed().as_secs_f32());
    let loras = vec![LoraSpec {
        path: file.into(),
        weight: 1.0,
    }];
    let (rss0, _) = rss_mib();
    let t0 = Instant::now();
    let v = m.lora_variant(&loras).expect("variant").expect("some");
    let build = t0.elapsed().as_secs_f32();
    let (rss1, peak) = rss_mib();
    let t1 = Instant::now();
    m.lora_variant(&loras).expect("variant again");
    eprintln!(
        "variant: built in {build:.2} s, replaced {:.0} MiB; RSS {rss0:.0} -> {rss1:.0} MiB (peak {peak:.0}); \
         kept variant returned in {:.4} s",
        v.bytes as f64 / 1048576.0,
        t1.elapsed().as_secs_f32()
    );
    let x = tensor::<4>(&[1, 4, 64, 64], vec![0.1; 4 * 64 * 64]);
    let ctx = tensor::<3>(&[1, 77, 768], vec![0.01; 77 * 768]);
    for (what, unet) in [
        ("base", &m.parts.unet),
        ("LoRA", &v.unet),
        ("base", &m.parts.unet),
        ("LoRA", &v.unet),
    ] {
        let t = Instant::now();
        values(unet.forward(x.clone(), 500.0, &ctx));
        eprintln!(
            "{what} UNet step 64x64 batch 1: {:.2} s",
            t.elapsed().as_secs_f32()
        );
    }
}
