//! Output files: A1111 `parameters` chunk round trip, JPEG/WebP, quality rules.

use image::RgbImage;
use kiln::image_io::params::Parameters;
use kiln::image_io::{self, ImageFormat};

fn sample() -> Parameters {
    Parameters {
        prompt: "a castle on a hill, golden hour".into(),
        negative_prompt: "blurry, low quality".into(),
        steps: 20,
        sampler: "DPM++ 2M Karras".into(),
        cfg_scale: 7.5,
        seed: 1234567,
        width: 512,
        height: 768,
        model: "v1-5-pruned-emaonly".into(),
        clip_skip: 2,
        denoising_strength: Some(0.75),
    }
}

fn img() -> RgbImage {
    RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 128])
    })
}

#[test]
fn png_parameters_round_trip() {
    let p = sample();
    let text = p.to_infotext();
    assert_eq!(
        text,
        "a castle on a hill, golden hour\nNegative prompt: blurry, low quality\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234567, Size: 512x768, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Clip skip: 2"
    );
    let png = image_io::encode(&img(), ImageFormat::Png, None, Some(&p)).unwrap();
    assert_eq!(image_io::read_parameters(&png).unwrap(), Some(p));
    let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(decoded, img());
}

#[test]
fn unicode_prompts_and_quoted_values_survive() {
    let p = Parameters {
        prompt: "café, 東京の夜景 🌃".into(),
        negative_prompt: String::new(),
        model: "my model: v2, final".into(),
        clip_skip: 1,
        denoising_strength: None,
        ..sample()
    };
    let png = image_io::encode(&img(), ImageFormat::Png, None, Some(&p)).unwrap();
    assert_eq!(image_io::read_parameters(&png).unwrap(), Some(p));
}

#[test]
fn no_metadata_means_no_chunk() {
    let png = image_io::encode(&img(), ImageFormat::Png, None, None).unwrap();
    assert_eq!(image_io::read_parameters(&png).unwrap(), None);
}

#[test]
fn jpeg_and_webp_encode_and_quality_is_checked() {
    let small = image_io::encode(&img(), ImageFormat::Jpeg, Some(10), None).unwrap();
    let large = image_io::encode(&img(), ImageFormat::Jpeg, Some(100), None).unwrap();
    assert!(small.len() < large.len());
    assert_eq!(
        image::guess_format(&large).unwrap(),
        image::ImageFormat::Jpeg
    );
    let webp = image_io::encode(&img(), ImageFormat::Webp, None, None).unwrap();
    assert_eq!(
        image::load_from_memory(&webp).unwrap().to_rgb8(),
        img(),
        "WebP is lossless"
    );
    assert!(
        image_io::encode(&img(), ImageFormat::Webp, Some(80), None)
            .unwrap_err()
            .to_string()
            .contains("JPEG only")
    );
    assert!(image_io::encode(&img(), ImageFormat::Jpeg, Some(0), None).is_err());
    assert!("gif".parse::<ImageFormat>().is_err());
}
