//! The weight side: `U = G g Gᵀ` for every output channel, each variant supplying its `G`.

use std::ops::Range;

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::nn::cpu::{PackedA, Unfilled, Widen, prefetch};

/// `U[ξ][o][c]` from the `[O, C, 3, 3]` weight `w` (f32, f16 or bf16, any strides): per output
/// channel, its 9 taps are gathered as rows over the input channels ([`gather_taps`]), then
/// transformed 16 channels at a time. (Transforming channel by channel, with 16 scattered
/// stores each, cost as much as the bf16 GEMMs of a 640-channel 32×32 convolution.)
///
/// `taps_of(taps, c, out)` is the variant's transform of one channel's taps into its
/// `positions` rows of `U`.
pub(super) fn transform_weights(
    w: &FlexTensor,
    o: usize,
    c: usize,
    positions: usize,
    taps_of: impl Fn(&[f32], usize, &mut [&mut [f32]]) + Sync,
) -> Vec<f32> {
    let mut u = Unfilled::new(positions * o * c);
    let u_ptr = u.ptr();
    (0..o)
        .into_par_iter()
        .for_each_init(Vec::new, |taps: &mut Vec<f32>, oi| {
            let u_ptr = u_ptr;
            gather_taps(w, oi, 0..c, taps);
            let mut rows: Vec<&mut [f32]> = (0..positions)
                // SAFETY: rows (ξ, oi) of u, c long each; each oi is written by one task.
                .map(|xi| unsafe {
                    std::slice::from_raw_parts_mut(u_ptr.0.add((xi * o + oi) * c), c)
                })
                .collect();
            taps_of(taps, c, &mut rows);
        });
    // SAFETY: every output channel's task writes its row of every transform position.
    unsafe { u.filled() }
}

/// `U[oi][ξ][ci]` for output channels `o0..o0 + ob` and input channels `chans` only, rows of
/// `ld` ≥ `chans.len()` (values past the channels left as they were), into `u` (grown as
/// needed): the weight side of [`super::blocked`], where a task transforms a piece of `U`
/// small enough to stay in its cache until its GEMMs read it. Each channel's `positions`
/// rows are adjacent, so its transform writes one run of memory (`[ξ][oi]` order put its 36
/// rows 64 KB apart, on the same L1 sets: the F(4×4) transform took twice its GEMMs' time).
pub(super) fn transform_block(
    w: &FlexTensor,
    [o0, ob]: [usize; 2],
    chans: Range<usize>,
    [positions, ld]: [usize; 2],
    taps_of: impl Fn(&[f32], usize, &mut [&mut [f32]]),
    taps: &mut Vec<f32>,
    u: &mut Vec<f32>,
) {
    let cl = chans.len();
    if u.len() < ob * positions * ld {
        u.resize(ob * positions * ld, 0.0);
    }
    for (oi, block) in u.chunks_exact_mut(positions * ld).take(ob).enumerate() {
        if oi + TAPS_AHEAD < ob {
            prefetch_taps(w, o0 + oi + TAPS_AHEAD, chans.clone());
        }
        gather_taps(w, o0 + oi, chans.clone(), taps);
        let mut rows: Vec<&mut [f32]> = block.chunks_exact_mut(ld).collect();
        taps_of(taps, cl, &mut rows);
    }
}

/// [`transform_weights`] packed for the bf16 GEMM as it is made, one operand per position:
/// each output channel's rows go from the worker's cache straight into the packed strips
/// (the f32 `U` and its packing pass had been 6% of a bf16 SD UNet step's samples; the step
/// went 2.45 -> 2.41 s, 3 alternated pairs).
pub(super) fn transform_weights_packed(
    w: &FlexTensor,
    o: usize,
    c: usize,
    positions: usize,
    taps_of: impl Fn(&[f32], usize, &mut [&mut [f32]]) + Sync,
) -> Vec<PackedA> {
    PackedA::build_rows(positions, o, c, Vec::new, |taps, oi, rows| {
        gather_taps(w, oi, 0..c, taps);
        taps_of(taps, c, rows);
    })
}

/// Output channel `oi`'s 9 taps `[kh][kw]` of `w` as rows of its input channels `chans`, in f32.
/// A tap's row is converted or copied as a slice where the channels are contiguous
/// (`Conv2d`'s `[k, k, O, C]` layout): element by element it was 5% of a 640-channel 32×32
/// convolution's samples (12.8 -> 11.8 ms, medians of 4 alternated pairs, 2 Xeon cores).
fn gather_taps(w: &FlexTensor, oi: usize, chans: Range<usize>, taps: &mut Vec<f32>) {
    let c = chans.len();
    let st = w.layout().strides();
    let (so, sc, sh, sw) = (st[0], st[1], st[2], st[3]);
    let w0 = w.layout().start_offset() as isize;
    taps.resize(9 * c, 0.0);
    for (t, row) in taps.chunks_exact_mut(c).enumerate() {
        let base = w0
            + oi as isize * so
            + (t / 3) as isize * sh
            + (t % 3) as isize * sw
            + chans.start as isize * sc;
        let at = |ci: usize| (base + ci as isize * sc) as usize;
        match w.dtype() {
            DType::BF16 => gather_row(w.storage::<half::bf16>(), at, sc == 1, row),
            DType::F16 => gather_row(w.storage::<half::f16>(), at, sc == 1, row),
            _ => gather_row(w.storage::<f32>(), at, sc == 1, row),
        }
    }
}

/// Output channels ahead of the one being gathered whose taps [`transform_block`] prefetches.
/// A piece's 9 tap rows per channel are short (128 f16 channels: 4 cache lines each) and a
/// channel's rows lie `C` values apart, too scattered for the hardware prefetcher: the widening
/// waited on its loads, 5% of an fp16-file SD image's samples.
const TAPS_AHEAD: usize = 2;

/// Asks for the cache lines of output channel `oi`'s 9 tap rows over `chans` (a hint: where
/// the channels are not contiguous, nothing).
fn prefetch_taps(w: &FlexTensor, oi: usize, chans: Range<usize>) {
    let st = w.layout().strides();
    if st[1] != 1 {
        return;
    }
    let size = w.dtype().size();
    let base = w.layout().start_offset() as isize + oi as isize * st[0] + chans.start as isize;
    let bytes = w.bytes().as_ptr();
    for t in 0..9 {
        let at = base + (t / 3) as isize * st[2] + (t % 3) as isize * st[3];
        let row = bytes.wrapping_add(at as usize * size);
        for line in (0..chans.len() * size).step_by(64) {
            prefetch(row.wrapping_add(line));
        }
    }
}

/// `row[ci]` = `ws[at(ci)]` in f32: as a slice where the channels are contiguous, else value
/// by value.
#[inline(always)]
fn gather_row<T: Widen + Copy>(
    ws: &[T],
    at: impl Fn(usize) -> usize,
    contiguous: bool,
    row: &mut [f32],
) {
    if contiguous {
        T::widen(&ws[at(0)..at(0) + row.len()], row);
    } else {
        for (ci, r) in row.iter_mut().enumerate() {
            *r = ws[at(ci)].wide();
        }
    }
}

/// Channels per step of [`transform_taps_with`]: one AVX-512 register of f32.
const L: usize = 16;

/// A variant's `G` (N×3), the weight transform's half, applied to three values (lanes of them).
pub(super) trait WeightTransform<const N: usize> {
    fn g(v: [Lanes; 3]) -> [Lanes; N];
}

/// [`L`] channels' values, one per lane: the element-wise operations are one vector
/// instruction each, and a transform's values stay in registers.
#[derive(Clone, Copy)]
pub(super) struct Lanes([f32; L]);

impl std::ops::Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(mut self, r: Lanes) -> Lanes {
        for l in 0..L {
            self.0[l] += r.0[l];
        }
        self
    }
}

impl std::ops::Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(mut self, r: Lanes) -> Lanes {
        for l in 0..L {
            self.0[l] -= r.0[l];
        }
        self
    }
}

impl std::ops::Mul<f32> for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn mul(mut self, k: f32) -> Lanes {
        for v in &mut self.0 {
            *v *= k;
        }
        self
    }
}

/// `U = G g Gᵀ` for `c` channels at once: `taps` holds the 9 taps `g[kh][kw]` as rows of `c`,
/// `out[N·i + j]` (N² rows) receives `U[i][j]` per channel. `G` over the columns of `g`, then
/// over the rows, [`L`] channels at a time in [`Lanes`]. (Per lane, through arrays filled
/// value by value and copied out with `copy_from_slice`, the copies were `memcpy` calls: with
/// them this transform was 24% of an 8×8 convolution's samples.)
#[inline(always)]
pub(super) fn transform_taps_with<T: WeightTransform<N>, const N: usize>(
    taps: &[f32],
    c: usize,
    out: &mut [&mut [f32]],
) {
    for c0 in (0..c).step_by(L) {
        let len = L.min(c - c0);
        // Loops, not `array::from_fn`: its closures were compiled out of line, without the
        // caller's vector features.
        let mut g = [Lanes([0.0; L]); 9];
        for (t, g) in g.iter_mut().enumerate() {
            *g = Lanes(lanes(&taps[t * c + c0..], len));
        }
        // G g: each column kw of g through G (N rows of lanes per column).
        let mut cols = [[Lanes([0.0; L]); N]; 3];
        for (kw, col) in cols.iter_mut().enumerate() {
            *col = T::g([g[kw], g[3 + kw], g[6 + kw]]);
        }
        // · Gᵀ over each row i.
        for i in 0..N {
            let row = T::g([cols[0][i], cols[1][i], cols[2][i]]);
            for (j, r) in row.iter().enumerate() {
                store_lanes(&mut out[N * i + j][c0..], &r.0, len);
            }
        }
    }
}

/// The first `len` (≤ [`L`]) values of `src` in [`L`] lanes, zero past `len`. Whole lanes are read
/// as one array, so they compile to vector loads (a `copy_from_slice` of a run-time length is
/// a `memcpy` call per 64 bytes: with the stores below, 24% of an 8×8 convolution's samples).
#[inline(always)]
fn lanes(src: &[f32], len: usize) -> [f32; L] {
    match src.first_chunk::<L>() {
        Some(v) if len == L => *v,
        _ => {
            let mut v = [0.0f32; L];
            v[..len].copy_from_slice(&src[..len]);
            v
        }
    }
}

/// The first `len` (≤ [`L`]) lanes of `v` into `dst`, whole lanes as one array store.
#[inline(always)]
fn store_lanes(dst: &mut [f32], v: &[f32; L], len: usize) {
    match dst.first_chunk_mut::<L>() {
        Some(d) if len == L => *d = *v,
        _ => dst[..len].copy_from_slice(&v[..len]),
    }
}
