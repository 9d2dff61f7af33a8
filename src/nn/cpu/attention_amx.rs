//! [`super::attention`] with bf16 products on AMX tiles, driven here instead of through the
//! bf16 GEMM: the tiles read the queries and the probabilities in place, as bf16 rows, and
//! the keys and values packed once per head.
//!
//! Through the GEMM (`gemm_tile` per product), every (query block, key block) packed its
//! queries, its keys and values (for every one of a head's 16 query blocks at the 64×64
//! level) and its probabilities (f32 scores rounded to bf16 pairs, a second pass over the
//! block): together a quarter of the attention's samples. Here the softmax's exponentials are
//! rounded to bf16 as they are stored, into rows an AMX A tile loads as they are (`tileloadd`
//! takes any row stride), and the query block is converted once for all key blocks.
//!
//! Same arithmetic as the GEMM path but for a shorter polynomial in the exponentials (see
//! [`softmax_row`]): products of bf16-rounded operands summed in f32, the scores' max and
//! exponentials in f32, each key block's probabilities rounded to bf16 against its running
//! maximum, the online rescaling in f32. In an SD UNet step (`unet-profile`, bf16, 2 Xeon
//! cores) self-attention went 0.86 -> 0.61 s and cross-attention 0.086 -> 0.062 s.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::attention::{BLOCK_KV, BLOCK_Q, Online, View, store_rows};
use super::bf16::amx::{self, WINDOW_COLS as COLS, WINDOW_ROWS as ROWS};
use super::bf16::{grow, kernel};
use super::{SendPtr, math};

/// Whether this process takes this path (the CPU has AMX-BF16, Linux granted the tiles).
pub(super) fn available() -> bool {
    amx::available()
}

/// Every head's keys and values as B strips: keys for `Q·Kᵀ` (32 keys per strip, the head's
/// `dp` dims as pairs, padded with zeros), values for `P·V` (32 value columns per strip, the
/// keys as pairs, padded with zeros to `sp`).
struct Packed {
    k: Vec<u16>,
    v: Vec<u16>,
    /// `d`, `skv` and `dv` rounded up to [`COLS`].
    dp: usize,
    sp: usize,
    dvp: usize,
}

impl Packed {
    fn new(kv: &View, vv: &View) -> Self {
        let [b, h, skv, d] = kv.shape;
        let dv = vv.shape[3];
        let up = |x: usize| x.next_multiple_of(COLS);
        let (dp, sp, dvp) = (up(d), up(skv), up(dv));
        let (k_head, v_head) = (sp * dp, sp * dvp);
        let mut k = vec![0u16; b * h * k_head];
        let mut v = vec![0u16; b * h * v_head];
        k.par_chunks_mut(k_head)
            .zip(v.par_chunks_mut(v_head))
            .enumerate()
            .for_each(|(bh, (kd, vd))| {
                let (bi, hi) = (bh / h, bh % h);
                for key in 0..skv {
                    // In u32 (pairs): a strip is dp / 2 pair-rows of 32.
                    let at = (key / COLS) * (dp / 2) * COLS + key % COLS;
                    // SAFETY: key `key` of the head has `d` contiguous values (checked by
                    // `attention`); its pairs go to lane `key % 32` of its strip, `dp / 2`
                    // pair-rows of 32 u32.
                    unsafe {
                        let out = kd.as_mut_ptr().cast::<u32>().add(at);
                        kernel::pack_row_f32(kv.at(bi, hi, key), d, out, COLS);
                    }
                }
                for (p, pair) in (0..skv).step_by(2).enumerate() {
                    let r1 = (pair + 1 < skv).then(|| vv.at(bi, hi, pair + 1));
                    for js in 0..dvp / COLS {
                        let at = js * (sp / 2) * 64 + p * 64;
                        let nr = COLS.min(dv - js * COLS);
                        // SAFETY: value rows `pair` (and `pair + 1`) have `dv` contiguous
                        // values; pair-row `p` of strip `js` is 64 u16 inside the head's part.
                        unsafe {
                            let (c0, c1) = (vv.at(bi, hi, pair), r1);
                            kernel::pack_b_pair_f32(
                                c0.add(js * COLS),
                                c1.map(|r| r.add(js * COLS)),
                                nr,
                                vd.as_mut_ptr().add(at),
                            );
                        }
                    }
                }
            });
        Self { k, v, dp, sp, dvp }
    }
}

/// Scratch of one worker: the query block in bf16, one key block's scores (f32) and
/// probabilities (bf16), the running max / sum / correction, the output accumulator.
#[derive(Default)]
struct Scratch {
    q: Vec<u16>,
    scores: Vec<f32>,
    p: Vec<u16>,
    online: Online,
    acc: Vec<f32>,
}

/// `softmax(q kᵀ/√D) v` of the views into `out` (`[B, S, H, Dv]`, every value written), the
/// products on AMX tiles; `causal` as [`super::attention`]'s offset. `None` (nothing written)
/// when a view's last dimension is not contiguous or there are no keys.
pub(super) fn attention(
    qv: &View,
    kv: &View,
    vv: &View,
    causal: Option<isize>,
    out: SendPtr,
) -> Option<()> {
    if [qv, kv, vv].iter().any(|v| v.strides[3] != 1) || kv.shape[2] == 0 {
        return None;
    }
    let [b, h, sq, d] = qv.shape;
    let [skv, dv] = [kv.shape[2], vv.shape[3]];
    let scale = 1.0 / (d as f32).sqrt();
    let packed = Packed::new(kv, vv);
    let Packed { dp, sp, dvp, .. } = packed;
    let blocks = sq.div_ceil(BLOCK_Q);
    (0..b * h * blocks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let out = &out; // the whole SendPtr (Sync), not its raw field
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, hi) = (bh / h, bh % h);
            let q0 = blk * BLOCK_Q;
            let rows = BLOCK_Q.min(sq - q0);
            let rp = rows.next_multiple_of(ROWS);
            // Rows past `rows` keep what the buffers held (finite: zeros, earlier queries or
            // probabilities): they are computed and never stored.
            grow(&mut sc.q, rp * dp);
            for i in 0..rows {
                let row = &mut sc.q[i * dp..(i + 1) * dp];
                row[d..].fill(0);
                // SAFETY: query q0 + i of the head has `d` contiguous values, converted into
                // the row's first d.div_ceil(2) pairs (dp ≥ d, even).
                unsafe {
                    kernel::pack_row_f32(qv.at(bi, hi, q0 + i), d, row.as_mut_ptr().cast(), 1)
                };
            }
            sc.online.reset(rows);
            grow(&mut sc.acc, rp * dvp);
            let k_head = &packed.k[bh * sp * dp..][..sp * dp];
            let v_head = &packed.v[bh * sp * dvp..][..sp * dvp];
            for k0 in (0..skv).step_by(BLOCK_KV) {
                let kb = BLOCK_KV.min(skv - k0);
                let kbp = kb.next_multiple_of(COLS);
                grow(&mut sc.scores, rp * kbp);
                grow(&mut sc.p, rp * kbp);
                // Scores: each key strip (in L1) against every window of queries.
                for js in 0..kbp / COLS {
                    let strip = k_head[(k0 / COLS + js) * (dp / 2) * 64..].as_ptr();
                    for i0 in (0..rp).step_by(ROWS) {
                        // SAFETY: query rows i0..i0 + 24 of `dp` bf16 (dp / 2 pairs, a
                        // multiple of 16) are in sc.q; the key strip holds dp / 2 pair-rows;
                        // the window's 24 rows × 32 columns are inside the rp × kbp scores.
                        unsafe {
                            let a = sc.q.as_ptr().add(i0 * dp);
                            let dst = sc.scores.as_mut_ptr().add(i0 * kbp + js * COLS);
                            let a = [a, a.add(ROWS / 2 * dp)];
                            amx::window(dp / 2, a, dp * 2, strip, dst, kbp, false);
                        }
                    }
                }
                for i in 0..rows {
                    let valid = match causal {
                        Some(off) => ((q0 + i) as isize + off + 1 - k0 as isize)
                            .clamp(0, kb as isize) as usize,
                        None => kb,
                    };
                    let (scores, p) = (&sc.scores[i * kbp..][..valid], &mut sc.p[i * kbp..]);
                    p[valid..kbp].fill(0);
                    if valid == 0 {
                        sc.online.corr[i] = 1.0;
                        continue;
                    }
                    let m_old = sc.online.m[i];
                    // SAFETY: AMX implies AVX512-BF16; p has kbp ≥ valid values.
                    let (m_new, sum) = unsafe { softmax_row(scores, m_old, scale, p.as_mut_ptr()) };
                    sc.online.corr[i] = if m_old == f32::NEG_INFINITY {
                        0.0
                    } else {
                        math::exp(scale * (m_old - m_new))
                    };
                    sc.online.l[i] = sc.online.l[i] * sc.online.corr[i] as f64 + sum;
                    sc.online.m[i] = m_new;
                }
                if k0 > 0 {
                    for (row, &c) in sc.acc.chunks_exact_mut(dvp).zip(&sc.online.corr) {
                        row.iter_mut().for_each(|x| *x *= c);
                    }
                }
                // Output: every window of probabilities against each value strip.
                for i0 in (0..rp).step_by(ROWS) {
                    for js in 0..dvp / COLS {
                        let strip = v_head[js * (sp / 2) * 64 + (k0 / 2) * 64..].as_ptr();
                        // SAFETY: probability rows i0..i0 + 24 hold kbp bf16 (kbp / 2 pairs,
                        // a multiple of 16); the value strip holds sp / 2 ≥ (k0 + kbp) / 2
                        // pair-rows; the window is inside the rp × dvp accumulator.
                        unsafe {
                            let a = sc.p.as_ptr().add(i0 * kbp);
                            let dst = sc.acc.as_mut_ptr().add(i0 * dvp + js * COLS);
                            let a = [a, a.add(ROWS / 2 * kbp)];
                            amx::window(kbp / 2, a, kbp * 2, strip, dst, dvp, k0 > 0);
                        }
                    }
                }
            }
            store_rows(out, &sc.online.l, [bi, hi, q0], [sq, h, dv], |i, c| {
                sc.acc[i * dvp + c]
            });
        });
    Some(())
}

/// One row of a key block's online softmax: `m` = max(x, `m_run`), then `out[j] =
/// bf16(exp(s·(x[j] − m)))`; returns `m` and the sum of the f32 exponentials (f64 total of f32
/// lane sums over blocks of 1024, as [`math::exp_sub_sum`]). The max is here, compiled for
/// AVX-512, not in the task's loop (baseline SSE2 there: the max pass was 12% of the
/// attention's samples). 2ᶠ is the degree-4 polynomial: its 2.9e-6 is a thousandth of the
/// bf16 rounding that follows, and it made this path's [2,8,4096,40] 110.7 -> 100.2 ms
/// (kernel bench, 2 Xeon cores, medians of 6 alternated runs; the GEMM path took 113.5).
///
/// # Safety
/// The CPU has AVX512-BF16; `out` has `x.len()` writable values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn softmax_row(x: &[f32], m_run: f32, s: f32, out: *mut u16) -> (f32, f64) {
    let m = math::max(x).max(m_run);
    let exp = math::Exp2Sub::new(m, s, math::EXP2_POLY4);
    // 16 values at `at` (`mask` of them) into `acc`.
    let step = |acc: &mut __m512, at: usize, mask: u16| {
        // SAFETY: the masked load reads x[at..at + n], the masked store writes as many at
        // `out + at`, n = mask's ones (x.len() ≥ at + n, as out's).
        unsafe {
            let e = exp.of(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(at)));
            *acc = _mm512_mask_add_ps(*acc, mask, *acc, e);
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
            _mm256_mask_storeu_epi16(out.add(at).cast(), mask, h);
        }
    };
    let mut total = 0.0f64;
    for b0 in (0..x.len()).step_by(1024) {
        let end = x.len().min(b0 + 1024);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut at = b0;
        while at + 64 <= end {
            for (r, acc) in acc.iter_mut().enumerate() {
                step(acc, at + 16 * r, 0xFFFF);
            }
            at += 64;
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let n = (end - at).saturating_sub(16 * r).min(16);
            if n > 0 {
                step(acc, at + 16 * r, ((1u32 << n) - 1) as u16);
            }
        }
        // SAFETY: [__m512; 4] and [f32; 64] have one size, any bits are valid f32s.
        total += math::lane_total(&unsafe { std::mem::transmute::<[__m512; 4], [f32; 64]>(acc) });
    }
    (m, total)
}
