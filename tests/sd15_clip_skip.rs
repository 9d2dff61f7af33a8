//! `clip_skip` against diffusers on the tiny model. kiln numbers it as A1111 does (1 = last CLIP
//! layer, 2 = penultimate); diffusers' `clip_skip=k` is kiln's `k + 1`. The reference
//! (`refs/clip_skip.safetensors`) holds diffusers' `clip_skip=1` embeddings and a 4-step DDIM
//! loop that uses them for both prompts, as A1111 does.

mod common;

use common::*;
use kiln::models::sd15::{GenerateRequest, NoiseOverrides, StableDiffusion};
use kiln::schedulers::SchedulerKind;

const PROMPT: &str = "a photograph of an astronaut riding a horse";
const FILE: &str = "clip_skip.safetensors";

fn model() -> StableDiffusion<B> {
    StableDiffusion::<B>::load(&sd_tiny(), false, &device()).expect("tiny model loads")
}

#[test]
fn clip_skip_2_is_diffusers_clip_skip_1() {
    let m = model();
    for (text, key) in [(PROMPT, "prompt_embeds"), ("", "uncond_embeds")] {
        let (_, want) = reference(FILE, key);
        let got = values(m.encode_prompt(text, 2).unwrap());
        assert_close(&format!("clip_skip 2 {key}"), &got, &want, 1e-5);
        // The last layer's output is something else entirely.
        let last = values(m.encode_prompt(text, 1).unwrap());
        let d = max_abs_diff(&last, &want);
        assert!(
            d > 1e-2,
            "{key}: clip_skip 1 and 2 agree (max |diff| {d:e})"
        );
    }
    let (_, last) = reference("text_encoder.safetensors", "prompt_embeds");
    assert_close(
        "clip_skip 1 prompt_embeds",
        &values(m.encode_prompt(PROMPT, 1).unwrap()),
        &last,
        1e-5,
    );
}

#[test]
fn clip_skip_2_pipeline_matches_diffusers() {
    let m = model();
    let (shape, noise) = reference(FILE, "init_noise");
    let req = GenerateRequest {
        prompt: PROMPT.into(),
        steps: 4,
        scheduler: SchedulerKind::Ddim,
        width: shape[3] * 8,
        height: shape[2] * 8,
        noise: NoiseOverrides {
            init_latents: Some(noise),
            ..Default::default()
        },
        clip_skip: 2,
        ..Default::default()
    };
    let out = m.generate(&req, &mut |_, _| true).expect("generation runs");
    let (_, want) = reference(FILE, "final_latents");
    let got = values(out.latents);
    assert_close_scaled("clip_skip 2 final latents", &got, &want, 1e-4);

    let last = values(
        m.generate(
            &GenerateRequest {
                clip_skip: 1,
                ..req.clone()
            },
            &mut |_, _| true,
        )
        .unwrap()
        .latents,
    );
    assert!(max_abs_diff(&last, &want) > 1e-3, "clip_skip had no effect");
}
