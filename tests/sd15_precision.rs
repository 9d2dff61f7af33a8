//! f16 compute (`--precision f16`): UNet and text encoder in f16, the VAE kept in f32
//! (`force_upcast`), checked against diffusers' fp32 run of the tiny model. Flex computes f16
//! on the CPU, so the GPU code path is exercised here without a GPU (`wgpu_parity.rs` runs the
//! same check on wgpu).

mod common;
#[path = "common/sd15_checks.rs"]
mod sd15_checks;

/// f16 keeps ~3 significant digits; after 4 steps of a random-weight UNet the latents stay
/// within 1e-2 of fp32 relative to their scale (measured 3.1e-3, the image 3.0e-3).
const F16_TOL: f32 = 1e-2;

#[test]
fn f16_unet_and_clip_match_fp32_reference_within_f16_tolerance() {
    sd15_checks::f16_pipeline::<common::B>(&common::device(), F16_TOL);
}
