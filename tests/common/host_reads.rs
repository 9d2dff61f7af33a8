//! Reads back to the host during generation, counted by `kiln::nn::host_reads` (every read of
//! model and engine code goes through `kiln::nn::host_f32`; `tests/host_reads.rs` checks the
//! sources). On a GPU each read waits for the queued kernels, so the loops keep to what the
//! algorithm needs: SD none per denoising step, DALL·E one per token (sampling is on the host).
//! Generic over the backend: `host_reads.rs` runs these on the CPU, `wgpu_parity.rs` on wgpu.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use kiln::models::dalle_mini::{DalleMini, SamplingConfig};
use kiln::models::sd15::{GenerateRequest, StableDiffusion};
use kiln::nn::host_reads;
use kiln::schedulers::SchedulerKind;

/// Reads made by `f` on this thread.
fn reads_of<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = host_reads();
    let out = f();
    (host_reads() - before, out)
}

/// SD: a plain prompt reads nothing back before the images are encoded; an emphasised one
/// reads its chunks' means once (A1111's mean restoration). Neither depends on the steps.
pub fn sd15<B: Backend>(m: &StableDiffusion<B>) {
    let run = |prompt: &str, steps: usize, scheduler| {
        let req = GenerateRequest {
            prompt: prompt.into(),
            steps,
            width: 32,
            height: 32,
            seed: 1,
            scheduler,
            ..Default::default()
        };
        reads_of(|| m.generate(&req, &mut |_, _| true).expect("generates")).0
    };
    for scheduler in [
        SchedulerKind::Ddim,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Heun,
    ] {
        for (prompt, want) in [("a red horse", 0), ("a (red:1.3) horse", 1)] {
            let few = run(prompt, 2, scheduler);
            let more = run(prompt, 5, scheduler);
            eprintln!("{scheduler:?} `{prompt}`: {few} reads at 2 steps, {more} at 5");
            assert_eq!(
                few, more,
                "{scheduler:?} `{prompt}`: reads grow with the steps"
            );
            assert_eq!(few, want, "{scheduler:?} `{prompt}`: reads");
        }
    }
}

/// DALL·E: exactly one read per token step (the logits the host samples from), and one per
/// VQGAN batch to make its pixels.
pub fn dalle<B: Backend>(m: &DalleMini<B>, rows: &[Vec<u32>]) {
    let (enc, pad) = m.encode(rows);
    let cfg = SamplingConfig {
        cond_scale: 10.0,
        temperature: 1.0,
        top_k: 1,
        top_p: 1.0,
    };
    let (reads, tokens) = reads_of(|| {
        m.decode_tokens(enc, pad, 1, &cfg, &mut |_, _| 0.5, &mut |_, _| true)
            .expect("decodes")
    });
    let steps = m.config.image_length as u64;
    eprintln!("DALL·E: {reads} reads for {steps} token steps");
    assert_eq!(reads, steps, "one read per token step");
    let (reads, _) =
        reads_of(|| kiln::models::dalle_mini::vqgan::to_rgb8(m.vqgan.decode(&tokens, &m.device)));
    assert_eq!(reads, 1, "one read for the VQGAN's pixels");
}
