//! `JobParams::into_job` unit cases (the HTTP and CLI paths are tested end to end).

use super::*;

fn params() -> JobParams {
    JobParams {
        prompt: "a cat".into(),
        seed: Some(7),
        ..Default::default()
    }
}

#[test]
fn defaults_come_from_the_family() {
    let l = JobRules::default();
    let j = params().into_job(Family::Sd15, &l, None).unwrap();
    assert_eq!((j.width, j.height, j.n, j.seed), (512, 512, 1, 7));
    let j = params().into_job(Family::DalleMini, &l, None).unwrap();
    assert_eq!((j.width, j.height), (256, 256));
}

#[test]
fn options_of_the_other_family_are_refused_by_name() {
    let l = JobRules::default();
    let mut p = params();
    p.dalle.top_k = Some(3);
    let e = p.into_job(Family::Sd15, &l, None).unwrap_err();
    assert!(matches!(e, EngineError::Invalid { param: Some(ref p), .. } if p == "top_k"));
    let mut p = params();
    p.negative_prompt = Some("x".into());
    let e = p.into_job(Family::DalleMini, &l, None).unwrap_err();
    assert!(e.to_string().contains("negative_prompt"), "{e}");
}

#[test]
fn an_edit_keeps_its_image_size_and_transparency_mask() {
    let l = JobRules::default();
    let mut rgba = image::RgbaImage::new(100, 67);
    rgba.put_pixel(3, 3, image::Rgba([0, 0, 0, 0]));
    rgba.put_pixel(4, 3, image::Rgba([9, 9, 9, 255]));
    let edit = EditInput {
        image: DynamicImage::ImageRgba8(rgba),
        mask: None,
        convention: MaskConvention::Auto,
    };
    let j = params()
        .into_job(Family::Sd15, &l, Some(edit.clone()))
        .unwrap();
    assert_eq!((j.width, j.height), (96, 64));
    let mask = j
        .init
        .unwrap()
        .mask
        .expect("transparent pixels are the mask");
    assert_eq!((mask.get_pixel(3, 3)[0], mask.get_pixel(4, 3)[0]), (255, 0));
    let e = params()
        .into_job(Family::DalleMini, &l, Some(edit))
        .unwrap_err();
    assert!(matches!(e, EngineError::Unsupported { .. }));
}
