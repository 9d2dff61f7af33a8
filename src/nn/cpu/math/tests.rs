use super::*;

#[test]
fn exp_matches_libm() {
    let mut worst = 0.0f32;
    for i in -87_000..88_000 {
        let x = i as f32 * 1e-3;
        let (got, want) = (exp(x), x.exp());
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 3e-7, "exp relative error {worst:e}");
    assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
}

#[test]
fn erf_gelu_silu_match_libm() {
    for i in -8000..8000 {
        let x = i as f32 * 1e-3;
        let e = (erf(x) as f64 - libm_erf(x as f64)).abs();
        assert!(
            e < 5e-7 && (x.abs() >= 0.5 || e <= 2e-7 * f64::from(x.abs().max(1e-3))),
            "erf({x}) error {e:e}"
        );
        let s = (silu(x) - x / (1.0 + (-x).exp())).abs();
        assert!(s <= 1e-6 * x.abs().max(1.0), "silu({x})");
    }
    assert_eq!(gelu(0.0), 0.0);
    assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
}

/// erf via its series / continued fraction in f64, enough for a 1e-7 check.
fn libm_erf(x: f64) -> f64 {
    // Taylor series converges fast for |x| < 3; beyond, erf is 1 to within 2e-5 and the
    // A&S bound still applies, so compare against 1 - erfc asymptotic.
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let a = x.abs();
        let erfc = (-a * a).exp() / (a * std::f64::consts::PI.sqrt())
            * (1.0 - 0.5 / (a * a) + 0.75 / (a * a * a * a));
        (1.0 - erfc).copysign(x)
    }
}

#[test]
fn sums_and_max() {
    let x: Vec<f32> = (0..5000).map(|i| (i % 97) as f32 - 40.0).collect();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert_eq!(sum_map(&x, |v| v), want);
    assert_eq!(max(&x), 56.0);
    let x: Vec<f32> = x.iter().map(|v| v * 0.01).collect();
    let mut y = x.clone();
    let want: f64 = x.iter().map(|&v| (v - 0.5).exp() as f64).sum();
    let got = exp_sub_sum(&mut y, 0.5, 1.0);
    assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    for (&e, &v) in y.iter().zip(&x) {
        assert!((e - (v - 0.5).exp()).abs() <= 3e-7 * e, "exp({v} - 0.5)");
    }
}

/// The softmax's exponentials `exp(s·(x − m))`: within 2.5e-7 + s|x − m|·1e-7 (relative) of
/// libm's where the result is normal (the second term is the rounding of s·log₂e and of
/// `(x − m)·s·log₂e`, on weights below e^−s|x−m| of the row's largest), ~1e-38 below, NaN
/// kept; and the AVX-512 variant (where the CPU has it) gives the portable loop's bits,
/// values and sum, remainders included. Scales 1 and 1/√40 (attention's, folded in).
/// Every length around the 64-lane groups, the maximum in each position (lanes, fold,
/// remainder), NaNs ignored as by `f32::max`.
#[test]
fn max_finds_the_largest_anywhere() {
    for n in [0, 1, 15, 63, 64, 65, 130, 1024, 1037] {
        for at in 0..n {
            let mut x: Vec<f32> = (0..n).map(|i| -((i * 37 % 101) as f32)).collect();
            x[(at + 1) % n] = f32::NAN;
            x[at] = 7.5;
            assert_eq!(max(&x), 7.5, "n {n}, max at {at}");
        }
    }
    assert_eq!(max(&[]), f32::NEG_INFINITY);
}

#[test]
fn exp_sub_sum_matches_libm_and_its_portable_loop() {
    let m = 3.25f32;
    let mut x: Vec<f32> = (0..2100).map(|i| m - i as f32 * 0.0431).collect();
    x.extend([f32::NEG_INFINITY, -200.0, m, f32::NAN, m - 1e-7]);
    for s in [1.0, 1.0 / 40f32.sqrt()] {
        let mut y = x.clone();
        let got = exp_sub_sum(&mut y, m, s);
        for (&e, &v) in y.iter().zip(&x) {
            let want = (s as f64 * (v - m) as f64).exp();
            if v.is_nan() {
                assert!(e.is_nan());
            } else if want < 1.2e-38 {
                assert!((0.0..1.3e-38).contains(&e), "exp({s}·({v} - {m})) = {e}");
            } else {
                let tol = 2.5e-7 + (s * (v - m)).abs() as f64 * 1e-7;
                let err = ((e as f64 - want) / want).abs();
                assert!(err < tol, "exp({s}·({v} - {m})) = {e}");
            }
        }
        let k = s * std::f32::consts::LOG2_E;
        let (mut portable, mut total) = (x.clone(), 0.0f64);
        for block in portable.chunks_mut(1024) {
            let mut acc = [0.0f32; EXP_LANES];
            let mut chunks = block.chunks_exact_mut(EXP_LANES);
            for c in &mut chunks {
                for i in 0..EXP_LANES {
                    c[i] = exp2_le0((c[i] - m) * k);
                    acc[i] += c[i];
                }
            }
            total += exp_sub_tail(chunks.into_remainder(), m, k, &acc);
        }
        assert!(got.is_nan() && total.is_nan());
        let bits = |v: &[f32]| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&portable));
        let (mut a, mut b) = (x[..2100].to_vec(), x[..2100].to_vec());
        let sum = exp_sub_sum(&mut a, m, s);
        let mut t = 0.0;
        for block in b.chunks_mut(1024) {
            t += exp_sub_tail(block, m, k, &[0.0; EXP_LANES]);
        }
        assert!((sum - t).abs() <= 1e-6 * t, "{sum} vs {t}");
    }
}

/// The degree-4 polynomial's claim (2.9e-6 relative on [−½, ½], evaluated in f32 by FMA), and
/// the degree-6 one's (1.4 ulp): what each may be used for rests on these.
#[test]
fn exp2_polynomials_meet_their_bounds() {
    let worst = |poly: &[f32]| {
        (-5000..=5000)
            .map(|i| {
                let f = i as f32 * 1e-4;
                let p = poly.iter().rev().fold(0.0f32, |p, &c| p.mul_add(f, c));
                let want = 2f64.powf(f as f64);
                ((p as f64 - want) / want).abs()
            })
            .fold(0.0, f64::max)
    };
    let (w4, w6) = (worst(&EXP2_POLY4), worst(&EXP2_POLY));
    assert!(w4 < 3.0e-6, "degree 4: {w4}");
    assert!(w6 < 1.7e-7, "degree 6: {w6}");
}
