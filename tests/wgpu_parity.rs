#![cfg(feature = "wgpu-base")]
//! The tiny-model parity checks on Burn's wgpu backend (default adapter; in CI Mesa's lavapipe
//! CPU Vulkan driver), against the same committed references as the CPU tests: SD 1.5 CLIP,
//! UNet, VAE decode/encode and a 4-step DDIM pipeline; DALL·E encoder states, teacher-forced
//! logits, VQGAN, greedy tokens. One case per component (lavapipe is slow), the
//! flax weight layout only (layouts differ at load time, not on the device).
//!
//! Tolerance: the CPU tests' 1e-4 (measured on lavapipe: ≤ 2e-5; see the CI log, which prints
//! every max |diff|). f16 runs, relative to the reference's scale: DALL·E's logits 1e-2 and the SD
//! pipeline 1e-2, as on the CPU (measured on lavapipe: logits 1.8e-3; SD latents 3.7e-3 and image
//! 3.7e-3, against the CPU's 3.1e-3 and 3.0e-3). Before f16 convolutions went through
//! `nn::gpu::conv_gemm` (Burn's direct conv kernel sums in f16) SD read 2.4e-2 and 3.1e-2 here.

mod common;
#[path = "common/dalle.rs"]
mod dalle;
#[path = "common/dalle_checks.rs"]
mod dalle_checks;
#[path = "common/host_reads.rs"]
mod host_reads;
#[path = "common/sd15_checks.rs"]
mod sd15_checks;

use burn::backend::Wgpu;
use burn::backend::wgpu::WgpuDevice;
use burn::module::Param;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use kiln::backend::DeviceSpec;
use kiln::models::dalle_mini::DalleMini;
use kiln::nn::GroupNorm;
use kiln::precision::Precision;
use kiln::schedulers::SchedulerKind;

const TOL: f32 = 1e-4;
/// The f16 SD pipeline's tolerance here, relative to the scale: the CPU's (see the module doc).
const F16_TOL: f32 = 1e-2;

fn device() -> WgpuDevice {
    WgpuDevice::default()
}

fn dalle_model() -> DalleMini<Wgpu> {
    DalleMini::<Wgpu>::load(&dalle::flax_dir(), &device()).expect("tiny DALL·E loads")
}

#[test]
fn sd15_text_encoder() {
    sd15_checks::text_encoder::<Wgpu>(&device(), TOL);
}

#[test]
fn sd15_unet() {
    sd15_checks::unet::<Wgpu>(&device(), TOL);
}

#[test]
fn sd15_unet_copies() {
    sd15_checks::unet_copies::<Wgpu>(&device(), TOL);
}

#[test]
fn sd15_vae_decode_and_encode() {
    sd15_checks::vae_decode_and_encode::<Wgpu>(&device(), TOL);
}

#[test]
fn sd15_ddim_4_steps() {
    let file = "pipeline_ddim4.safetensors";
    sd15_checks::pipeline::<Wgpu>(&device(), file, SchedulerKind::Ddim, "", 1, TOL);
}

#[test]
fn dalle_encoder_states() {
    dalle_checks::encoder_states("wgpu", &dalle_model(), &device(), TOL);
}

#[test]
fn dalle_teacher_forced_logits() {
    dalle_checks::teacher_forced_logits("wgpu", &dalle_model(), TOL);
}

#[test]
fn dalle_vqgan() {
    dalle_checks::vqgan("wgpu", &dalle_model(), &device(), TOL);
}

/// The tokens only: their image is the VQGAN decode that `dalle_vqgan` checks here on the
/// reference tokens (and the CPU tests on these). A second 256x256 decode would double this
/// file's longest work: Burn's direct f32 convolution on lavapipe took 138 s of it.
#[test]
fn dalle_greedy_tokens() {
    dalle_checks::greedy_tokens("wgpu", &dalle_model());
}

/// `--precision auto` on this adapter (lavapipe computes f16): f16, and the f16 SD pipeline
/// (UNet and CLIP in f16, the VAE in f32) within [`F16_TOL`] of diffusers' fp32 run.
#[test]
fn sd15_auto_precision_is_f16_and_tracks_fp32() {
    let dtype = Precision::Auto.resolve::<Wgpu>(DeviceSpec::Wgpu(None), &device());
    assert_eq!(
        dtype.expect("resolves"),
        DType::F16,
        "auto on an f16 adapter"
    );
    sd15_checks::f16_pipeline::<Wgpu>(&device(), F16_TOL);
}

/// DALL·E's BART in f16 on wgpu (the VQGAN stays f32): teacher-forced logits within f16
/// rounding of min-dalle's fp32 ones.
#[test]
fn dalle_f16_teacher_forced_logits() {
    dalle_checks::f16_teacher_forced_logits::<Wgpu>("wgpu", &device());
}

/// GroupNorm+SiLU with 262,144 values per group (SD's VAE at 512×512 has 1M) against the CPU
/// backend: Burn's wgpu `mean_dim` loses values on rows that long (see `nn::mean_last`).
#[test]
fn group_norm_long_rows_match_cpu() {
    let shape = [1usize, 128, 256, 256];
    let x: Vec<f32> = (0..shape.iter().product::<usize>() as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 250.0 - 1.5)
        .collect();
    fn run<B: Backend>(shape: &[usize], x: Vec<f32>, device: &B::Device) -> Vec<f32> {
        let c = shape[1];
        let param = |v: Vec<f32>| Param::from_tensor(common::tensor_on::<B, 1>(&[c], v, device));
        let norm = GroupNorm {
            weight: param((0..c).map(|i| 1.0 + 0.01 * i as f32).collect()),
            bias: param((0..c).map(|i| 0.1 - 0.002 * i as f32).collect()),
            num_groups: 32,
            eps: 1e-6,
        };
        common::values(norm.forward_silu(common::tensor_on::<B, 4>(shape, x, device)))
    }
    let want = run::<common::B>(&shape, x.clone(), &common::device());
    let got = run::<Wgpu>(&shape, x, &device());
    common::assert_close("group_norm [1, 128, 256, 256]", &got, &want, TOL);
}

#[test]
fn device_memory_counts_live_tensors() {
    // 64 MiB of f32, read back so that the fused backend has materialised it.
    let n = 16 << 20;
    let t = burn::tensor::Tensor::<Wgpu, 1>::random(
        [n],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device(),
    );
    assert_eq!(t.clone().into_data().num_elements(), n);
    let m = kiln::backend::device_memory::<Wgpu>(&device()).expect("wgpu reports its pools");
    eprintln!("device memory with a 64 MiB tensor alive: {m:?}");
    assert!(m.bytes_in_use >= 4 * n as u64, "{m:?}");
    assert!(m.bytes_reserved >= m.bytes_in_use, "{m:?}");
    drop(t);
}

/// f16 convolutions at UNet widths (3×3 over 320 channels: 2,880 products per output, stride 1
/// and 2, and a 1×1) against the same convolution in f32 on the CPU, from the same f16-rounded
/// operands: only the output's rounding may differ (2^-11 relative), not an f16 running sum.
#[test]
fn conv_f16_accumulates_in_f32() {
    use kiln::nn::Conv2d;
    fn run<Bk: Backend>(
        dtype: DType,
        (x, w, b): (&[f32], &[f32], &[f32]),
        [n, c, h, o, k, stride]: [usize; 6],
        device: &Bk::Device,
    ) -> Vec<f32> {
        let x = common::tensor_on::<Bk, 4>(&[n, c, h, h], x.to_vec(), device).cast(dtype);
        let w = common::tensor_on::<Bk, 4>(&[o, c, k, k], w.to_vec(), device).cast(dtype);
        let b = common::tensor_on::<Bk, 1>(&[o], b.to_vec(), device).cast(dtype);
        let conv = Conv2d::from_tensors(w, Some(b), stride, [k / 2; 4]);
        common::values(conv.forward(x).cast(DType::F32))
    }
    // Deterministic values in [-1, 1), rounded to f16 so that both sides read the same operands.
    let values = |len: usize, seed: u64, scale: f32| -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let v = ((i ^ seed).wrapping_mul(2_654_435_761) % 2048) as f32 / 1024.0 - 1.0;
                half::f16::from_f32(v * scale).to_f32()
            })
            .collect()
    };
    for shape @ [n, c, h, o, k, _] in [
        [2, 320, 16, 320, 3, 1],
        [1, 320, 16, 320, 3, 2],
        [2, 640, 8, 320, 1, 1],
    ] {
        let x = values(n * c * h * h, 1, 1.0);
        let w = values(o * c * k * k, 7, 1.0 / ((c * k * k) as f32).sqrt());
        let b = values(o, 3, 0.1);
        let want = run::<common::B>(DType::F32, (&x, &w, &b), shape, &common::device());
        let got = run::<Wgpu>(DType::F16, (&x, &w, &b), shape, &device());
        common::assert_close_scaled(&format!("f16 conv {shape:?}"), &got, &want, 2e-3);
    }
}

/// Reads back to the host on wgpu (each waits for the queue): SD none per denoising step,
/// DALL·E one per token step (see `common/host_reads.rs`).
#[test]
fn host_reads_per_step() {
    host_reads::sd15(&sd15_checks::model::<Wgpu>(false, &device()));
    host_reads::dalle(&dalle_model(), &dalle_checks::text_rows());
}
