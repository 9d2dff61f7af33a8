//! DALL·E decoding invariants on the tiny model: the cached decoder (KV cache, cross K/V
//! projected once) equals an uncached recomputation of the whole prefix at every step; seeds
//! decide the tokens; a batch of n images equals the same images generated one at a time.

#[path = "common/dalle.rs"]
mod dalle;

use burn::tensor::{Int, Tensor, TensorData};
use dalle::{assert_close, device, values};
use kiln::models::dalle_mini::{DalleRequest, Tokenization};

#[test]
fn cached_decoder_equals_uncached_recomputation() {
    let m = dalle::load(&dalle::flax_dir());
    let [uncond, cond] = m
        .text_rows("a red chair", Tokenization::Normalized, 0)
        .expect("rows");
    let (enc, pad) = m.encode(&[uncond, cond]);
    let mut cache = m.decoder.start(enc.clone(), pad.clone(), &[0, 1]);
    let tokens: Vec<u32> = [m.config.decoder_start_token_id]
        .into_iter()
        .chain([5, 77, 900, 3, 3, 1023, 0, 42, 512, 7, 8])
        .collect();
    for t in 0..tokens.len() {
        let cached = values(m.decoder.step(&[tokens[t], tokens[t]], &mut cache));
        let prefix: Vec<i64> = tokens[..=t]
            .iter()
            .chain(&tokens[..=t])
            .map(|&x| i64::from(x))
            .collect();
        let ids =
            Tensor::<dalle::B, 2, Int>::from_data(TensorData::new(prefix, [2, t + 1]), &device());
        let full = m.decoder.forward_full(ids, enc.clone(), pad.clone());
        let [_, _, rows] = full.dims();
        let last = values(full.slice([0..2, t..t + 1, 0..rows]));
        assert_close(&format!("step {t}"), &cached, &last, 1e-5);
    }
}

fn request(n: usize, seed: u64) -> DalleRequest {
    DalleRequest {
        prompt: "a cat on the moon".into(),
        n,
        seed,
        top_k: 64,
        cond_scale: 4.0,
        ..Default::default()
    }
}

#[test]
fn seeds_decide_tokens_and_batches_equal_single_images() {
    let m = dalle::load(&dalle::min_dalle_dir());
    let mut steps = 0;
    let a = m
        .generate(&request(1, 11), &mut |s, total| {
            assert_eq!(total, 256);
            steps = s;
            true
        })
        .expect("generates");
    assert_eq!(steps, 256);
    assert_eq!(a.tokens[0].len(), 256);
    assert_eq!(
        (a.width, a.height, a.rgb8[0].len()),
        (256, 256, 256 * 256 * 3)
    );
    let again = m
        .generate(&request(1, 11), &mut |_, _| true)
        .expect("generates");
    assert_eq!(a.tokens, again.tokens, "same seed, same tokens");
    let b = m
        .generate(&request(1, 12), &mut |_, _| true)
        .expect("generates");
    assert_ne!(a.tokens, b.tokens, "different seeds, different tokens");

    let batch = m
        .generate(&request(2, 11), &mut |_, _| true)
        .expect("generates");
    assert_eq!(batch.seeds, vec![11, 12]);
    assert_eq!(
        batch.tokens,
        vec![a.tokens[0].clone(), b.tokens[0].clone()],
        "batch of 2 == seeds 11 and 12 alone"
    );
    for (i, single) in [&a, &b].iter().enumerate() {
        let worst = batch.rgb8[i]
            .iter()
            .zip(&single.rgb8[0])
            .map(|(&x, &y)| (i16::from(x) - i16::from(y)).abs())
            .max();
        assert!(
            worst <= Some(1),
            "image {i}: batch vs single differ by {worst:?}"
        );
    }
    let img = values(batch.images);
    assert!(img.iter().all(|&x| (0.0..=1.0).contains(&x)));
}

#[test]
fn progress_can_cancel_and_bad_requests_are_refused() {
    let m = dalle::load(&dalle::flax_dir());
    let e = m
        .generate(&request(1, 1), &mut |s, _| s < 3)
        .err()
        .expect("cancelled");
    assert!(matches!(e, kiln::Error::Cancelled), "{e}");
    for bad in [
        DalleRequest {
            n: 0,
            ..request(1, 1)
        },
        DalleRequest {
            temperature: 0.0,
            ..request(1, 1)
        },
        DalleRequest {
            top_p: 1.5,
            ..request(1, 1)
        },
    ] {
        assert!(matches!(
            m.generate(&bad, &mut |_, _| true),
            Err(kiln::Error::InvalidArgument(_))
        ));
    }
}
