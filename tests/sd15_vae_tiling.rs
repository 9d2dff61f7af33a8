//! Tiled VAE decode and encode against diffusers' `enable_tiling()` on the tiny SD VAE
//! (`models/make_sd15_vae_fixtures.py`, tiles of 64 px / 8 latent cells so that a small image
//! spans 2 × 3 tiles, the last column 1 latent cell wide), the tile geometry diffusers derives
//! from the configs, and when the pipeline tiles.
//!
//! Tolerance: max |diff| ≤ 1e-4 relative to max(1, max |reference|), as the untiled VAE test:
//! each tile is an ordinary VAE pass, and blending is two multiply-adds in f32.

mod common;
#[path = "common/sd15_checks.rs"]
mod sd15_checks;

use common::*;
use kiln::models::sd15::config::VaeConfig;
use kiln::models::sd15::vae_tiling::{TileSizes, TileSteps};
use kiln::models::sd15::{GenerateRequest, ImageCondition, VaeChoice, VaeTiling};
use serde_json::Value;

const TOL: f32 = 1e-4;
const FILE: &str = "vae_tiling.safetensors";

/// The tile size the references were made with.
const SMALL: TileSizes = TileSizes {
    sample: 64,
    latent: 8,
    overlap_factor: 0.25,
};

#[test]
fn tiled_decode_matches_diffusers() {
    let m = sd15_checks::model::<B>(false, &device());
    let (s, z) = reference(FILE, "decode_in");
    assert_eq!(s, [1, 4, 10, 13]);
    let (_, want) = reference(FILE, "decode_out");
    let got = values(m.parts.vae.tiled_decode(tensor(&s, z.clone()), &SMALL));
    assert_close_scaled("tiled decode", &got, &want, TOL);
    // Tiling changes the image (per-tile GroupNorm statistics): the check above can fail.
    let whole = values(m.parts.vae.decode(tensor(&s, z)));
    assert!(
        max_abs_diff(&whole, &want) > 0.1,
        "tiles made no difference"
    );
}

#[test]
fn tiled_encode_matches_diffusers() {
    let m = sd15_checks::model::<B>(true, &device());
    let (_, image) = reference(FILE, "decode_out");
    let (mean, logvar) = m
        .parts
        .vae
        .tiled_encode(tensor(&[1, 3, 80, 104], image), &SMALL)
        .expect("encoder loaded");
    assert_eq!(mean.dims(), [1, 4, 10, 13]);
    let (_, want) = reference(FILE, "encode_mean");
    assert_close_scaled("tiled encode mean", &values(mean), &want, TOL);
    let (_, want) = reference(FILE, "encode_logvar");
    assert_close_scaled("tiled encode logvar", &values(logvar), &want, TOL);
}

fn diffusers_params(which: &str) -> Value {
    let path = sd_tiny().join("refs").join(FILE);
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let params = &meta.metadata().as_ref().unwrap()["tile_params"];
    serde_json::from_str::<Value>(params).unwrap()[which].clone()
}

fn check_geometry(tiles: TileSizes, want: &Value) {
    assert_eq!(tiles.sample as u64, want["tile_sample_min_size"]);
    assert_eq!(tiles.latent as u64, want["tile_latent_min_size"]);
    for (got, want) in [
        (tiles.decode_steps(), &want["decode"]),
        (tiles.encode_steps(), &want["encode"]),
    ] {
        let TileSteps {
            stride,
            blend,
            keep,
        } = got;
        assert_eq!(stride as u64, want["overlap_size"]);
        assert_eq!(blend as u64, want["blend_extent"]);
        assert_eq!(keep as u64, want["row_limit"]);
    }
}

#[test]
fn tile_geometry_is_diffusers() {
    let m = sd15_checks::model::<B>(false, &device());
    check_geometry(m.vae_tiles(), &diffusers_params("sd15-tiny"));
    check_geometry(
        TileSizes::of(&VaeConfig::default()),
        &diffusers_params("sd15"),
    );
}

#[test]
fn when_the_vae_tiles() {
    let sd = TileSizes::of(&VaeConfig::default()).latent;
    let at = |t: VaeTiling, w: usize, h: usize| t.applies([h / 8, w / 8], sd, w * h);
    // Auto: 512² and 768² whole; 1024² and 2048×512 in tiles.
    assert!(!at(VaeTiling::Auto, 512, 512));
    assert!(!at(VaeTiling::Auto, 768, 768));
    assert!(at(VaeTiling::Auto, 1024, 1024));
    assert!(at(VaeTiling::Auto, 2048, 512));
    // On: diffusers' rule, a side longer than one tile.
    assert!(!at(VaeTiling::On, 512, 512));
    assert!(at(VaeTiling::On, 520, 512));
    assert!(!at(VaeTiling::Off, 2048, 2048));
    assert_eq!("on".parse::<VaeTiling>().unwrap(), VaeTiling::On);
    assert!("sometimes".parse::<VaeTiling>().is_err());
}

/// `decode_with` and the img2img encode take the request's tiling: with tiles of the tiny
/// config (128 px) an image of 136 × 96 is one tile too wide.
#[test]
fn the_pipeline_tiles_as_asked() {
    let m = sd15_checks::model::<B>(true, &device());
    let z = tensor::<4>(
        &[1, 4, 12, 17],
        (0..816)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect(),
    );
    let tiles = m.vae_tiles();
    let scale = m.parts.vae_config.scaling_factor;
    let full = VaeChoice::Full;
    let on = values(m.decode_with(z.clone(), full, VaeTiling::On).unwrap());
    let want = values(m.parts.vae.tiled_decode(z.clone() / scale, &tiles));
    assert_close("decode_with(On)", &on, &want, 0.0);
    let off = values(m.decode_with(z.clone(), full, VaeTiling::Off).unwrap());
    let auto = values(m.decode_with(z.clone(), full, VaeTiling::Auto).unwrap());
    assert_close("decode_with(Auto) of a small image", &auto, &off, 0.0);
    assert!(max_abs_diff(&on, &off) > 1e-3);

    let image = kiln::image_io::to_rgb8(m.decode(z)).unwrap().remove(0);
    let latents = |tiling| {
        let req = GenerateRequest {
            prompt: "x".into(),
            steps: 2,
            width: 136,
            height: 96,
            condition: Some(ImageCondition {
                image: image.clone(),
                mask: None,
            }),
            strength: 0.5,
            vae_tiling: tiling,
            ..Default::default()
        };
        values(m.generate(&req, &mut |_, _| true).unwrap().latents)
    };
    let (on, off) = (latents(VaeTiling::On), latents(VaeTiling::Off));
    assert!(max_abs_diff(&on, &off) > 1e-4, "img2img encoded in tiles");
}
