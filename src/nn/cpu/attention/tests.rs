use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};

use crate::nn::sdpa;

/// bf16 products (`--precision bf16`) against f64 attention of the bf16-rounded q, k and
/// v: within 4e-3 of the output's scale (measured 1.5e-3 with AMX, 2.0e-3 with
/// AVX512-BF16's kernel: each key block's probabilities are rounded to bf16 against its
/// running maximum). Several key blocks (online rescaling), last blocks of 52 and 77 keys
/// (k-pair padding), head size 40 (Qkᵀ's padding), partial query blocks, causal masks.
#[test]
fn bf16_products_match_f64_of_rounded_operands() {
    use burn::tensor::DType;
    use half::bf16;

    use crate::nn::sdpa_for;
    let d = Default::default();
    let n = Distribution::Normal(0.0, 1.0);
    let r = |v: f64| bf16::from_f64(v).to_f64();
    let rounded = |x: &[f32]| x.iter().map(|&v| r(f64::from(v))).collect::<Vec<_>>();
    for (sq, skv, causal) in [(300, 2100, false), (530, 2100, true), (5, 77, false)] {
        let [q, k, v] =
            [sq, skv, skv].map(|s| Tensor::<Flex, 4>::random([2, s, 3, 40], n, &d).swap_dims(1, 2));
        let vals = |t: &Tensor<Flex, 4>| t.to_data().to_vec::<f32>().expect("f32");
        let (qs, ks, vs) = (vals(&q), vals(&k), vals(&v));
        let got = vals(&sdpa_for(q, k, v, causal, DType::BF16));
        let (qs, ks, vs) = (rounded(&qs), rounded(&ks), rounded(&vs));
        let want = f64_attention([&qs, &ks, &vs], [6, sq, skv, 40], causal, r);
        let (err, scale) = max_diff(&got, &want);
        assert!(
            err <= 4e-3 * scale,
            "[{sq}x{skv}] causal {causal}: max |diff| {err} of {scale}"
        );
    }
}

/// `softmax(q kᵀ/√D) v` in f64 for `[BH, S, D]` values, the exponentials rounded by
/// `round_w` before they weigh the values (as the bf16 products do).
fn f64_attention(
    [qs, ks, vs]: [&[f64]; 3],
    [bh, sq, skv, d]: [usize; 4],
    causal: bool,
    round_w: impl Fn(f64) -> f64,
) -> Vec<f64> {
    let mut out = vec![0.0; bh * sq * d];
    for b in 0..bh {
        for i in 0..sq {
            let at = |x: &[f64], s: usize, j: usize, c: usize| x[(b * s + j) * d + c];
            let keys = if causal {
                (skv - sq + i + 1).min(skv)
            } else {
                skv
            };
            let sc: Vec<f64> = (0..keys)
                .map(|j| {
                    (0..d)
                        .map(|c| at(qs, sq, i, c) * at(ks, skv, j, c))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
            let total: f64 = w.iter().sum();
            for c in 0..d {
                out[(b * sq + i) * d + c] = (0..keys)
                    .map(|j| round_w(w[j]) * at(vs, skv, j, c))
                    .sum::<f64>()
                    / total;
            }
        }
    }
    out
}

/// Max |got − want| and max |want|.
fn max_diff(got: &[f32], want: &[f64]) -> (f64, f64) {
    got.iter()
        .zip(want)
        .fold((0.0f64, 0.0f64), |(e, s), (&g, &w)| {
            (e.max((f64::from(g) - w).abs()), s.max(w.abs()))
        })
}

/// f32 against f64 across both block sizes (several query blocks, the last partial; key
/// blocks past the first, so the online rescaling runs), causal and not, on SD's head sizes
/// (40 values take [`super::super::attention_kq`] where it runs, 80 the blocked path) and
/// cross-attention's 77 keys, with strided (`split_heads`-like) inputs; the scores' spread
/// doubled in two cases. Within 6e-6 of the output's scale: measured 3.0e-6 with keys ×
/// queries, Burn's attention 1.5e-6 on the same inputs.
#[test]
fn f32_matches_f64() {
    let d = Default::default();
    for (sq, skv, hd, causal, sd) in [
        (300, 2100, 40, false, 1.0),
        (300, 2100, 80, false, 1.0),
        (530, 1100, 80, true, 1.0),
        (530, 2100, 40, true, 1.0),
        (260, 77, 40, false, 1.0),
        (5, 7, 8, false, 1.0),
        (300, 2100, 8, false, 2.0),
        (300, 2100, 40, false, 2.0),
    ] {
        let n = Distribution::Normal(0.0, sd);
        let [q, k, v] =
            [sq, skv, skv].map(|s| Tensor::<Flex, 4>::random([2, s, 3, hd], n, &d).swap_dims(1, 2));
        let vals = |t: &Tensor<Flex, 4>| t.to_data().to_vec::<f32>().expect("f32");
        let wide = |x: Vec<f32>| x.into_iter().map(f64::from).collect::<Vec<_>>();
        let (qs, ks, vs) = (wide(vals(&q)), wide(vals(&k)), wide(vals(&v)));
        let want = f64_attention([&qs, &ks, &vs], [6, sq, skv, hd], causal, |w| w);
        let (err, scale) = max_diff(&vals(&sdpa(q, k, v, causal)), &want);
        assert!(
            err <= 6e-6 * scale,
            "[{sq}x{skv}x{hd}] causal {causal}: max |diff| {err} of {scale}"
        );
    }
}
