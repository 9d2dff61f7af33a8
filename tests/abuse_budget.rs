//! Bounded work per request (issue 29, items 1 and 2): the work budget refuses a request whose
//! n × steps × pixels is too much, up front, with a 400 that says the limit and what was asked;
//! a cancel reaches the VAE / VQGAN decode (within one image or tile); every string field of the
//! request schemas is bounded; the truncating tokenizers read only a head of a huge text.

mod common;
#[path = "common/dalle.rs"]
mod dalle;
#[path = "common/sd15_checks.rs"]
mod sd15_checks;
mod server_common;

use std::time::{Duration, Instant};

use common::{B, device, tensor};
use kiln::engine::{
    EngineError, Family, ImageJob, ImagePipeline, JobParams, JobRules, Limits, Sd15Pipeline,
};
use kiln::models::dalle_mini::{DalleRequest, Tokenization};
use kiln::models::sd15::tokenizer::ClipTokenizer;
use kiln::models::sd15::{VaeChoice, VaeTiling};
use serde_json::json;
use server_common::*;

fn sd(n: u32, side: u32, steps: Option<u32>) -> JobParams {
    JobParams {
        prompt: "a cat".into(),
        n: Some(n),
        width: Some(side),
        height: Some(side),
        steps,
        seed: Some(1),
        ..Default::default()
    }
}

#[test]
fn the_budget_passes_todays_requests_and_refuses_hours_of_work() {
    let rules = JobRules::default();
    for (n, side, steps) in [
        (4, 512, Some(50)),
        (1, 512, None),
        (4, 1024, Some(50)),
        (10, 512, Some(100)),
        (1, 1024, Some(150)),
    ] {
        let job = sd(n, side, steps).into_job(Family::Sd15, &rules, None);
        assert!(job.is_ok(), "n={n} {side}² {steps:?}: {:?}", job.err());
    }
    let dalle = sd(10, 256, None);
    assert!(
        dalle
            .clone()
            .into_job(Family::DalleMini, &rules, None)
            .is_ok()
    );

    let e = sd(10, 1024, Some(150))
        .into_job(Family::Sd15, &rules, None)
        .expect_err("6000 units is over the default 1000");
    let EngineError::Invalid { param, message } = &e else {
        panic!("not Invalid: {e:?}");
    };
    assert_eq!(param, &None, "no single field is at fault");
    for part in ["6000", "limit of 1000", "n=10 × 150 steps × 1024x1024"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // The CLI's own, larger bound; a deployment's own, smaller one (DALL·E counts 50 an image).
    let cli = JobRules::cli(Default::default());
    assert!(
        sd(10, 1024, Some(150))
            .into_job(Family::Sd15, &cli, None)
            .is_ok()
    );
    let tight = JobRules {
        limits: Limits {
            max_work: 99,
            ..Limits::default()
        },
        ..JobRules::default()
    };
    assert!(dalle.into_job(Family::DalleMini, &tight, None).is_err());
    let e = sd(1, 512, Some(100))
        .into_job(Family::Sd15, &tight, None)
        .expect_err("100 > 99");
    assert!(e.to_string().contains("100 units"), "{e}");
}

#[tokio::test]
async fn an_over_budget_request_is_a_400_before_it_is_queued() {
    let t = start();
    let r = generate(
        &t,
        json!({"prompt": "x", "n": 10, "size": "1024x1024", "num_inference_steps": 150}),
    )
    .await;
    let e = r.assert_error(400, None);
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("limit of 1000") && msg.contains("6000"),
        "{msg}"
    );
    let stats = t.engine.stats();
    assert_eq!((stats.completed, stats.in_flight), (0, 0));
}

/// The job of `n` images of `side`² at 2 steps for the tiny SD model.
fn tiny_job(n: usize, side: u32) -> ImageJob {
    let mut job = ImageJob::new("a cat", side, side, 3);
    job.n = n;
    job.steps = Some(2);
    job
}

#[test]
fn a_cancel_reaches_the_sd_decode_within_one_image() {
    let mut p = Sd15Pipeline::new(sd15_checks::model::<B>(false, &device()), "tiny");
    // Uncancelled: the last step, then one decode check per image.
    let mut seen = Vec::new();
    p.generate(&tiny_job(3, 64), &mut |pr| {
        seen.push((pr.step, pr.total, pr.decoding));
        true
    })
    .expect("generates");
    let (steps, decodes): (Vec<_>, Vec<_>) = seen.iter().partition(|(_, _, d)| !d);
    assert_eq!(
        steps.last().map(|&&(s, t, _)| s == t),
        Some(true),
        "{seen:?}"
    );
    assert_eq!(decodes.len(), 3, "one per image: {seen:?}");
    assert!(decodes.iter().all(|(s, t, _)| s == t), "{seen:?}");
    // Cancelled after the first image is decoded: the other two are not.
    let mut decodes = 0;
    let e = p
        .generate(&tiny_job(3, 64), &mut |pr| {
            decodes += usize::from(pr.decoding);
            decodes < 2
        })
        .err()
        .expect("cancelled");
    assert!(matches!(e, EngineError::Cancelled), "{e}");
    assert_eq!(decodes, 2);
}

#[test]
fn a_cancel_reaches_the_tiled_vae_within_one_tile() {
    let m = sd15_checks::model::<B>(false, &device());
    // 136 × 96 px: wider than one tile of the tiny config (see sd15_vae_tiling.rs).
    let z = || tensor::<4>(&[1, 4, 12, 17], vec![0.1; 816]);
    let mut tiles = 0;
    m.decode_checked(z(), VaeChoice::Full, VaeTiling::On, &mut || {
        tiles += 1;
        true
    })
    .expect("decodes");
    assert!(tiles >= 2, "{tiles} tiles");
    let mut asked = 0;
    let e = m
        .decode_checked(z(), VaeChoice::Full, VaeTiling::On, &mut || {
            asked += 1;
            asked < 2
        })
        .expect_err("cancelled");
    assert!(matches!(e, kiln::Error::Cancelled), "{e}");
    assert_eq!(asked, 2, "stopped at the second tile of {tiles}");
}

#[test]
fn a_cancel_reaches_the_vqgan_decode_within_one_image() {
    let m = dalle::load(&dalle::flax_dir());
    let req = DalleRequest {
        prompt: "a cat".into(),
        n: 2,
        seed: 1,
        ..Default::default()
    };
    let mut at_end = 0;
    let out = m
        .generate(&req, &mut |s, total| {
            at_end += usize::from(s == total);
            true
        })
        .expect("generates");
    assert_eq!(out.rgb8.len(), 2);
    assert_eq!(at_end, 3, "the last token, then once before each image");
    let mut at_end = 0;
    let e = m
        .generate(&req, &mut |s, total| {
            at_end += usize::from(s == total);
            at_end < 2
        })
        .err()
        .expect("cancelled");
    assert!(matches!(e, kiln::Error::Cancelled), "{e}");
}

#[tokio::test]
async fn every_string_field_is_bounded_by_the_schema() {
    let t = start();
    let long = |n: usize| "x".repeat(n);
    for (field, len) in [
        ("negative_prompt", 32_001),
        ("model", 257),
        ("scheduler", 65),
        ("quality", 65),
        ("style", 65),
        ("user", 257),
        ("background", 65),
        ("moderation", 65),
        ("size", 17),
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = json!(long(len));
        generate(&t, body).await.assert_error(400, Some(field));
    }
    // At the bound it passes the schema (and then the engine's own checks).
    let ok = generate(&t, json!({"prompt": "x", "negative_prompt": long(32_000)})).await;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.text());

    // A 12 MiB negative prompt in an edit (uploads may be 32 MiB): refused by the schema, fast.
    let t0 = Instant::now();
    let form = poem::test::TestForm::new()
        .text("prompt", "x")
        .text("negative_prompt", long(12 << 20))
        .bytes("image", png_bytes(32, 32, false));
    send(t.client.post("/v1/images/edits").multipart(form))
        .await
        .assert_error(400, Some("negative_prompt"));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    for (field, len) in [("user", 257), ("input_fidelity", 65), ("scheduler", 65)] {
        let form = poem::test::TestForm::new()
            .text("prompt", "x")
            .text(field, long(len))
            .bytes("image", png_bytes(32, 32, false));
        send(t.client.post("/v1/images/edits").multipart(form))
            .await
            .assert_error(400, Some(field));
    }
}

/// 10 MB texts of ordinary words, one word, and blanks before a word.
fn huge_texts() -> [String; 3] {
    let mb = 10_000_000;
    [
        "a photo of a cat, ".repeat(mb / 18),
        "a".repeat(mb),
        " ".repeat(mb) + "cat",
    ]
}

#[test]
fn the_clip_tokenizer_reads_only_what_it_keeps() {
    let tok = ClipTokenizer::builtin().expect("builtin tokenizer");
    let short = tok.encode(&"a photo of a cat, ".repeat(40)).unwrap();
    for text in huge_texts() {
        let t0 = Instant::now();
        let t = tok.encode(&text).expect("encodes");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(t.ids.len(), 77);
        if text.starts_with("a photo") {
            assert_eq!(t.ids, short.ids, "the same 75 tokens as a short text");
            assert!(t.dropped > 0);
        }
    }
}

#[test]
fn dalle_text_rows_read_only_what_they_keep() {
    let m = dalle::load(&dalle::flax_dir());
    let short = "a photo of a cat, ".repeat(40);
    for how in [Tokenization::Normalized, Tokenization::MinDalle] {
        let want = m.text_rows(&short, how, 0).expect("rows");
        for text in huge_texts() {
            let t0 = Instant::now();
            let rows = m.text_rows(&text, how, 0).expect("rows");
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{how:?}: {:?}",
                t0.elapsed()
            );
            if text.starts_with("a photo") {
                assert_eq!(rows, want, "{how:?}: the same kept ids as a short text");
            }
        }
    }
}
