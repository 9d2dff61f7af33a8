//! Branch-free f32 math that the compiler vectorises (no libm calls in the hot loops).

/// `eˣ` after Cephes `expf`: `2ⁿ·eʳ` with `|r| ≤ ln2/2` and a degree-6 minimax polynomial,
/// within ~1 ulp of libm for `x ≥ -87.3`; below that it returns ~1e-38 rather than 0.
///
/// Written with `mul_add`: Rust never contracts `a * b + c`, and the separate multiplies and
/// adds made the attention softmax's exp ~27 vector ops per 16 values (~22% of a 64×64
/// self-attention). Every caller is inside a `simd_dispatch!` kernel whose SIMD variants
/// enable FMA; the plain fallback (x86-64 without AVX2) calls libm's `fmaf`, which gives the
/// same bits, slowly.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer (ties to even) that sits in the low mantissa bits,
    // so 2ⁿ is built with integer ops on the bits; a float→int cast would stay scalar.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.0);
    let z = x.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = z - MAGIC;
    // n·0.693359375 is exact (the constant has 9 significant bits), so fusing loses nothing.
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = (p * r).mul_add(r, r) + 1.0;
    y * f32::from_bits(z.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// `erf(x)`: Maclaurin series below |x| = 0.5 (where A&S loses relative precision to the
/// `1 - …` cancellation), Abramowitz & Stegun 7.1.26 above (≤ 1.5e-7 in exact arithmetic,
/// ≤ 5e-7 in f32). Both are computed and one selected, so the loop stays branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    // Horner steps fused as in `exp` (the GEGLU's erf had its multiplies and adds apart).
    let t = 1.0 / a.mul_add(0.327_591_1, 1.0);
    let mut poly = 1.061_405_4f32;
    for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        poly = poly.mul_add(t, c);
    }
    let far = (-(poly * t)).mul_add(exp(-a * a), 1.0).copysign(x);
    let x2 = x * x;
    let mut series = -0.000_854_832_7f32;
    for c in [
        0.005_223_977,
        -0.026_866_17,
        0.112_837_92,
        -0.376_126_4,
        1.128_379_2,
    ] {
        series = series.mul_add(x2, c);
    }
    let series = x * series;
    if a < 0.5 { series } else { far }
}

/// `x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// PyTorch's default (erf) GELU.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

const LANES: usize = 16;

/// The sum of `N` (a power of two) lanes as a halving tree: lane `l` += lane `l + w` for
/// w = N/2, …, 1. The SIMD kernels reduce their accumulator registers in this order, so every
/// variant gives the same bits.
#[inline(always)]
pub fn tree_sum<const N: usize>(mut lanes: [f32; N]) -> f32 {
    let mut w = N / 2;
    while w > 0 {
        for l in 0..w {
            lanes[l] += lanes[l + w];
        }
        w /= 2;
    }
    lanes[0]
}

/// Σ f(xᵢ) with 16 f32 lanes per block of 1024 and an f64 total: vectorises, and the error
/// stays at f32 rounding of short partial sums.
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(1024) {
        let mut acc = [0.0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                acc[i] += f(c[i]);
            }
        }
        let mut s: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
        s += acc.iter().map(|&v| v as f64).sum::<f64>();
        total += s;
    }
    total
}

/// `xᵢ ← exp(s·(xᵢ − m))` in place, returning Σ of the new values (f64 total of f32 lane sums
/// over blocks of 1024): the softmax's exponentials (attention, 64 lanes in flight so the
/// polynomial's dependency chains overlap; `s` > 0 its score scale, which the score GEMM then
/// leaves out). `m` must be at least every `xᵢ` (the row's max), so every result is at most 1; one below 2⁻¹²⁶ (−∞ included) comes out as ~1e-38, not 0,
/// as from [`exp`].
///
/// Each value is [`exp2_le0`] of `(xᵢ − m)·(s·log₂e)`. With AVX-512 that is 11 vector ops where
/// [`exp`] takes 18 (`vscalefps` builds 2ⁿ·p, `vrndscaleps` rounds). Kernel bench on 2 Xeon
/// cores, alternated: a 64×64 self-attention `[2,8,4096,40]` with bf16 products 130 -> 125 ms;
/// in f32 no change beyond the noise (~200 ms), where the products, not the exponentials, set
/// the pace. The portable loop computes the same bits.
#[inline(always)]
pub fn exp_sub_sum(x: &mut [f32], m: f32, s: f32) -> f64 {
    let k = s * std::f32::consts::LOG2_E;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected just above.
        return unsafe { exp_sub_sum_avx512(x, m, s) };
    }
    let mut total = 0.0f64;
    for block in x.chunks_mut(1024) {
        let mut acc = [0.0f32; EXP_LANES];
        let mut chunks = block.chunks_exact_mut(EXP_LANES);
        for c in &mut chunks {
            for i in 0..EXP_LANES {
                let e = exp2_le0((c[i] - m) * k);
                c[i] = e;
                acc[i] += e;
            }
        }
        total += exp_sub_tail(chunks.into_remainder(), m, k, &acc);
    }
    total
}

/// Lanes of [`exp_sub_sum`]'s accumulators.
const EXP_LANES: usize = 4 * LANES;

/// A block's values past its last whole group of lanes, exponentiated (`k` = s·log₂e), plus the group's
/// lane sums: the f64 sum both variants of [`exp_sub_sum`] add per block, in one order.
#[inline(always)]
fn exp_sub_tail(rest: &mut [f32], m: f32, k: f32, acc: &[f32; EXP_LANES]) -> f64 {
    let mut total = 0.0f64;
    for v in rest {
        *v = exp2_le0((*v - m) * k);
        total += *v as f64;
    }
    total + lane_total(acc)
}

/// The f64 sum of [`exp_sub_sum`]'s 64 lane sums: eight f64 lanes, then their sum (one chain
/// of 64 scalar adds, 4 cycles each, had been as long as a 1024-block's exponentials).
#[inline(always)]
pub(super) fn lane_total(acc: &[f32; EXP_LANES]) -> f64 {
    let mut lanes = [0.0f64; 8];
    for c in acc.chunks_exact(8) {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64;
        }
    }
    lanes.iter().sum::<f64>()
}

/// Coefficients of 2ᶠ on `[−½, ½]` (degree 6, Lawson-weighted least squares for the
/// relative error: 2.7e-9 exact, ≤ 1.4 ulp evaluated in f32 by FMA).
const EXP2_POLY: [f32; 7] = [
    1.0,
    0.693_147_2,
    0.240_226_46,
    0.055_503_245,
    0.009_618_487,
    0.001_340_142,
    0.000_153_495_87,
];

/// `2ᵗ` for `t ≤ 0` (within 2 ulp where the result is normal): `t` clamped to −126 (NaN
/// passes), `n` = t rounded to even by the 1.5·2²³ trick, `2ⁿ · p(t − n)` with 2ⁿ built in the
/// exponent bits; `p(f)·2ⁿ` rounds once, as `vscalefps` does, so the AVX-512 variant matches.
#[inline(always)]
pub fn exp2_le0(t: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let t = if t < -126.0 { -126.0 } else { t };
    let z = t + MAGIC;
    let n = z - MAGIC;
    let f = t - n;
    let mut p = EXP2_POLY[6];
    for &c in EXP2_POLY[..6].iter().rev() {
        p = p.mul_add(f, c);
    }
    p * f32::from_bits(z.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23)
}

/// Coefficients of 2ᶠ on `[−½, ½]` of degree 4 (fitted as [`EXP2_POLY`]: 2.9e-6 relative,
/// ~24 ulp): for exponentials rounded to bf16 next (half an ulp there is 2.0e-3); PyTorch's
/// vectorised `exp_u20` ("ULP=20") makes the same trade.
pub(super) const EXP2_POLY4: [f32; 5] = [
    0.999_999_2,
    0.693_119_76,
    0.240_247_43,
    0.055_931_43,
    0.009_574_662,
];

/// `2^(k·(v − m))` for lanes `v ≤ m` in AVX-512 registers: the operations of [`exp2_le0`]
/// with `vrndscaleps` for the rounding and `vscalefps` for `2ⁿ·p` (same bits with
/// [`EXP2_POLY`]).
#[cfg(target_arch = "x86_64")]
pub(super) struct Exp2Sub<const N: usize> {
    m: std::arch::x86_64::__m512,
    k: std::arch::x86_64::__m512,
    poly: [std::arch::x86_64::__m512; N],
}

#[cfg(target_arch = "x86_64")]
impl<const N: usize> Exp2Sub<N> {
    /// For `exp(s·(v − m))` (`k` = s·log₂e), 2ᶠ by the polynomial `poly`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn new(m: f32, s: f32, poly: [f32; N]) -> Self {
        use std::arch::x86_64::*;
        Self {
            m: _mm512_set1_ps(m),
            k: _mm512_set1_ps(s * std::f32::consts::LOG2_E),
            poly: poly.map(|c| _mm512_set1_ps(c)),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn of(&self, v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        self.pow2(_mm512_mul_ps(_mm512_sub_ps(v, self.m), self.k))
    }

    /// `2ᵗ` for lanes `t ≤ 0`, the part of [`Self::of`] after the scaling.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn pow2(&self, t: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // max(lo, t) returns t when either is NaN: NaN passes, as in exp2_le0.
        let t = _mm512_max_ps(_mm512_set1_ps(-126.0), t);
        let n = _mm512_roundscale_ps::<0x08>(t);
        let f = _mm512_sub_ps(t, n);
        let mut p = self.poly[N - 1];
        for &c in self.poly[..N - 1].iter().rev() {
            p = _mm512_fmadd_ps(p, f, c);
        }
        _mm512_scalef_ps(p, n)
    }
}

#[cfg(target_arch = "x86_64")]
impl Exp2Sub<7> {
    /// For [`Self::pow2`] alone: [`exp2_le0`]'s bits.
    #[target_feature(enable = "avx512f")]
    pub(super) fn base2() -> Self {
        Self::new(0.0, 1.0, EXP2_POLY)
    }
}

/// [`exp_sub_sum`] in AVX-512 registers (`k` = s·log₂e): 4 vectors in flight.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_sum_avx512(x: &mut [f32], m: f32, s: f32) -> f64 {
    use std::arch::x86_64::*;
    let exp = Exp2Sub::new(m, s, EXP2_POLY);
    let k = s * std::f32::consts::LOG2_E;
    let mut total = 0.0f64;
    for block in x.chunks_mut(1024) {
        let mut acc = [_mm512_setzero_ps(); EXP_LANES / LANES];
        let mut chunks = block.chunks_exact_mut(EXP_LANES);
        for c in &mut chunks {
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: lanes 16·i.. of the 64-value chunk.
                let ptr = unsafe { c.as_mut_ptr().add(LANES * i) };
                // SAFETY: 16 values at ptr, unaligned load and store.
                let e = exp.of(unsafe { _mm512_loadu_ps(ptr) });
                // SAFETY: as the load.
                unsafe { _mm512_storeu_ps(ptr, e) };
                *acc = _mm512_add_ps(*acc, e);
            }
        }
        // SAFETY: [__m512; 4] and [f32; 64] have one size, any bits are valid f32s.
        let lanes: [f32; EXP_LANES] = unsafe { std::mem::transmute(acc) };
        total += exp_sub_tail(chunks.into_remainder(), m, k, &lanes);
    }
    total
}

/// max(x), vectorised (NaN propagates as in `f32::max` semantics of the lanes: ignored). Four
/// registers of lanes, folded at the end: with one, every `vmaxps` waited on the previous
/// (4 cycles), and this max was half of attention's softmax pass (kernel bench, 2 Xeon cores).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let gt = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; 4 * LANES];
    let mut chunks = x.chunks_exact(4 * LANES);
    for c in &mut chunks {
        for i in 0..4 * LANES {
            acc[i] = gt(acc[i], c[i]);
        }
    }
    let mut w = 2 * LANES;
    while w > 0 {
        for l in 0..w {
            acc[l] = gt(acc[l], acc[l + w]);
        }
        w /= 2;
    }
    chunks.remainder().iter().fold(acc[0], |a, &b| a.max(b))
}

#[cfg(test)]
mod tests;
