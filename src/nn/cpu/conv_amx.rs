//! 3×3 and 1×1 stride-1 "same" convolutions with bf16 weights on AMX tiles, brgemm style:
//! each 24-channel × 32-pixel output window sums all taps × all input channels in its tiles
//! ([`amx::conv_window`]) and is stored once.
//!
//! The input is converted once per call into zero-padded planes of bf16 channel pairs
//! (`[C/2][plane][2]`, through the [`Prologue`]: GroupNorm + SiLU or ×2 upsampling applied as
//! it is read), in which tap (kh, kw) of "wide" output column `q = y·(W+2) + x` is pair column
//! `q + kh·(W+2) + kw`: a B tile (16 channel pairs × 16 columns) is then 16 rows of 64 bytes
//! one plane apart, loaded in place for every tap. The weights (`Conv2d`'s `[3, 3, O, C]`
//! layout: a tap's rows of `C` contiguous bf16) are A tiles loaded in place too. So nothing is
//! packed per tap: the shifted GEMMs (`conv_same`) packed the input 9 times per task and loaded
//! and stored their accumulator per tap and k block; the Winograd kernel streamed its
//! transformed weights (16/9 of the weight, made per call) through every task.

#![cfg(target_arch = "x86_64")]

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::bf16::amx::{self, Tap, WINDOW_COLS as COLS, WINDOW_ROWS as ROWS, Window};
use super::bf16::kernel;
use super::winograd::Prologue;
use super::{Epilogue, SendPtr, Unfilled, contiguous, new_tensor, simd_dispatch, slice};

/// Windows per task along the wide columns: the task's accumulator (`ROWS·blocks × 512`
/// f32) and input columns stay in L2.
const BAND: usize = 16;
/// Output-channel rows per task (a multiple of [`ROWS`]).
const OBLOCK: usize = 8 * ROWS;

/// Whether [`conv`] takes a convolution of `c` input channels with weight `w`: a bf16
/// weight whose rows of input channels are contiguous, `c` whole k-steps (16 pairs), AMX,
/// and `KILN_CONV` unset (`direct`: the shifted GEMMs only; any other value, e.g. `gemm`:
/// the kernels before this one, Winograd from 32×32; for A/B timing and bisecting).
pub(super) fn takes(w: &FlexTensor, c: usize) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let st = w.layout().strides();
    !*OFF.get_or_init(|| std::env::var_os("KILN_CONV").is_some())
        && w.dtype() == DType::BF16
        && st[1] == 1
        && st[0] == c as isize
        && st[2] > 0
        && st[3] > 0
        && c.is_multiple_of(COLS)
        && amx::available()
}

/// The same contract as `winograd::conv3x3` (`x` `[N, C, H, W]`, or half that with
/// `Upsample2x`; `w` `[O, C, k, k]`, k = 3 or 1 with padding k/2, held as [`takes`] requires;
/// bias `[O]`; `add` shaped as the output or per channel).
pub(super) fn conv(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<(&FlexTensor, bool)>,
    pro: Prologue<'_>,
) -> FlexTensor {
    let s = x.layout().shape();
    let (n, c) = (s[0], s[1]);
    let (h, wd) = pro.plane(s[2], s[3]);
    let (o, k) = (w.layout().shape()[0], w.layout().shape()[2]);
    debug_assert!(k == 1 || k == 3);
    let x = contiguous(x);
    let (p, taps) = (k / 2, k * k);
    let wp = wd + 2 * p;
    // Wide columns, rounded up to whole windows; a plane holds the padded input plus the
    // columns the last window's taps reach (2p rows and 2p columns further, 32 wide).
    let wide = (h * wp).next_multiple_of(COLS);
    let plane = wide + 2 * p * (wp + 1) + COLS;
    let planes = convert(&x, pro, [n, c, h, wd, p], plane);

    // The weights' tap matrices, and a copy of the last rows (past the last whole window
    // of output channels) padded with zero rows: a window's A tiles always read 24 rows.
    let st = w.layout().strides();
    let (sh, sw) = (st[2] as usize, st[3] as usize);
    let wbase = w.layout().start_offset();
    let ws = w.storage::<half::bf16>();
    let tap_at = |t: usize, r: usize| wbase + (t / k) * sh + (t % k) * sw + r * c;
    let whole = o / ROWS * ROWS;
    let mut tail = vec![half::bf16::ZERO; taps * ROWS * c];
    for t in 0..taps {
        let len = (o - whole) * c;
        tail[t * ROWS * c..][..len].copy_from_slice(&ws[tap_at(t, whole)..][..len]);
    }
    let a_rows = |t: usize, r0: usize| -> *const u16 {
        let rows = if r0 < whole {
            &ws[tap_at(t, r0)..]
        } else {
            &tail[t * ROWS * c..]
        };
        rows.as_ptr().cast()
    };

    let epilogue = Epilogue::new(bias, add);
    let (bs, adds) = (epilogue.bias(), epilogue.add());
    let windows = wide / COLS;
    let bands = windows.div_ceil(BAND);
    let oblocks = o.div_ceil(OBLOCK);
    let mut out = Unfilled::new(n * o * h * wd);
    let out_ptr = out.ptr();
    (0..n * oblocks * bands)
        .into_par_iter()
        .for_each_init(Vec::new, |acc: &mut Vec<f32>, task| {
            let out = &out_ptr; // the whole SendPtr (Sync), not its raw field
            let (img, ob, band) = (
                task / (oblocks * bands),
                (task / bands) % oblocks,
                task % bands,
            );
            let (o0, o1) = (ob * OBLOCK, ((ob + 1) * OBLOCK).min(o));
            let (w0, w1) = (band * BAND, ((band + 1) * BAND).min(windows));
            let cols = (w1 - w0) * COLS;
            let rows = (o1 - o0).next_multiple_of(ROWS);
            if acc.len() < rows * cols {
                acc.resize(rows * cols, 0.0);
            }
            let input = planes[img * (c / 2) * plane..].as_ptr().cast::<u16>();
            for r0 in (o0..o1).step_by(ROWS) {
                let mut w = Window {
                    taps: std::array::from_fn(|t| {
                        // Past the kernel's taps: unread copies of the first.
                        let a = a_rows(if t < taps { t } else { 0 }, r0);
                        Tap {
                            // SAFETY (both): inside the weight or the tail copy (24 rows).
                            a: [a, unsafe { a.add(ROWS / 2 * c) }],
                            b: input,
                        }
                    }),
                    dst: acc.as_mut_ptr(),
                    rs: 4 * cols,
                };
                for win in w0..w1 {
                    for (t, tap) in w.taps.iter_mut().enumerate().take(taps) {
                        let shift = (t / k) * wp + t % k;
                        // SAFETY: pair column win·32 + shift + 31 < plane, in image img.
                        tap.b = unsafe { input.add(2 * (win * COLS + shift)) };
                    }
                    // SAFETY: each tap's A strips are 12 rows of c bf16 (24 rows from a_rows),
                    // its B c/2 pair-rows of the plane from that column on; the window is
                    // rows r0 - o0 .. + 24, columns (win - w0)·32 .. + 32 of acc.
                    unsafe {
                        w.dst = acc.as_mut_ptr().add((r0 - o0) * cols + (win - w0) * COLS);
                        amx::conv_window(&w, taps, c / COLS, [2 * c, 4 * plane]);
                    }
                }
            }
            let stage = Stage {
                acc,
                cols,
                q0: w0 * COLS,
                img,
                o0,
                o1,
                ohw: [o, h, wd],
                wp,
                bias: bs,
                add: adds,
                out: *out,
            };
            store(&stage);
        });
    // SAFETY: the tasks cover every (image, channel block, band of wide columns), and every
    // output pixel lies in one band.
    new_tensor(unsafe { out.filled() }, vec![n, o, h, wd])
}

/// `x` through `pro` as bf16 channel-pair planes zero-padded by `pad`, `plane` pairs per pair
/// of channels: pair column `(y + pad)·(W + 2·pad) + x + pad` of pair `p` holds channels
/// `2p`, `2p + 1` at (y, x).
fn convert(
    x: &FlexTensor,
    pro: Prologue<'_>,
    [n, c, h, wd, pad]: [usize; 5],
    plane: usize,
) -> Vec<u32> {
    let xs = slice(x);
    let in_plane = xs.len() / (n * c).max(1);
    let mut planes = Vec::<u32>::with_capacity(n * (c / 2) * plane);
    let ptr = SendPtr(planes.as_mut_ptr().cast());
    (0..n * (c / 2))
        .into_par_iter()
        .for_each_init(Vec::new, |rows: &mut Vec<f32>, t| {
            let ptr = &ptr;
            let (img, p) = (t / (c / 2), t % (c / 2));
            let pro = match pro {
                Prologue::Affine { scale, shift, silu } => Prologue::Affine {
                    scale: &scale[img * c..(img + 1) * c],
                    shift: &shift[img * c..(img + 1) * c],
                    silu,
                },
                p => p,
            };
            rows.resize(2 * wd, 0.0);
            let ci = 2 * p;
            let xc = |k: usize| &xs[(img * c + ci + k) * in_plane..][..in_plane];
            // SAFETY: this task alone writes plane t, inside the capacity.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(ptr.0.cast::<u32>().add(t * plane), plane)
            };
            fill_plane(pro, [xc(0), xc(1)], ci, [h, wd, pad], rows, dst);
        });
    // SAFETY: every plane was written whole.
    unsafe { planes.set_len(n * (c / 2) * plane) };
    planes
}

simd_dispatch! {
    /// One pair plane of [`convert`]: the borders and the slack zeroed, row y of channels
    /// `ci`, `ci + 1` (their planes `xc`) through `pro` into `rows`, then rounded and
    /// interleaved into the pair columns of padded row y + pad.
    #[allow(clippy::too_many_arguments)]
    fn fill_plane(
        pro: Prologue<'_>,
        xc: [&[f32]; 2],
        ci: usize,
        hwp: [usize; 3],
        rows: &mut [f32],
        dst: &mut [u32],
    ) {
        let [h, wd, pad] = hwp;
        let wp = wd + 2 * pad;
        dst.fill(0);
        let (r0, r1) = rows.split_at_mut(wd);
        for y in 0..h {
            pro.fill(xc[0], ci, y, r0);
            pro.fill(xc[1], ci + 1, y, r1);
            let at = (y + pad) * wp + pad;
            for x0 in (0..wd).step_by(COLS) {
                let nr = COLS.min(wd - x0);
                assert!(at + x0 + COLS <= dst.len());
                // SAFETY: the rows have nr values at x0; pack_b_pair_f32 writes 32 pairs
                // (the ones past nr zero) inside the plane (just checked; its slack is 32
                // pairs past the last row), and the next row's columns it overwrites are
                // written after.
                unsafe {
                    kernel::pack_b_pair_f32(
                        r0.as_ptr().add(x0),
                        Some(r1.as_ptr().add(x0)),
                        nr,
                        dst.as_mut_ptr().add(at + x0).cast(),
                    )
                };
            }
        }
    }
}

/// What a task stores: its accumulator `acc` (rows `o0..o1` rounded up to windows, `cols`
/// wide columns from `q0`), with bias and `add`, into image `img` of the output.
pub(super) struct Stage<'a> {
    acc: &'a [f32],
    cols: usize,
    q0: usize,
    img: usize,
    o0: usize,
    o1: usize,
    ohw: [usize; 3],
    /// Wide columns per output row.
    wp: usize,
    bias: Option<&'a [f32]>,
    add: Option<(&'a [f32], bool)>,
    out: SendPtr,
}

simd_dispatch! {
    /// The wide columns of `st`'s rows that are output pixels (x < W), plus bias and add,
    /// into the output, a row segment at a time.
    fn store(st: &Stage<'_>) {
        let [o, h, wd] = st.ohw;
        let wp = st.wp;
        let end = (st.q0 + st.cols).min(h * wp);
        for oi in st.o0..st.o1 {
            let row = &st.acc[(oi - st.o0) * st.cols..][..st.cols];
            let ch = st.img * o + oi;
            let mut b = st.bias.map_or(0.0, |b| b[oi]);
            if let Some((a, true)) = st.add {
                b += a[ch];
            }
            let mut q = st.q0;
            while q < end {
                let (y, x) = (q / wp, q % wp);
                if x < wd {
                    let len = (y * wp + wd).min(end) - q;
                    let src = &row[q - st.q0..][..len];
                    let at = (ch * h + y) * wd + x;
                    // SAFETY: each task owns channels o0..o1 of its band's pixels in image img.
                    let dst = unsafe { std::slice::from_raw_parts_mut(st.out.0.add(at), len) };
                    match st.add {
                        Some((a, false)) => {
                            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(&a[at..at + len]) {
                                *d = s + b + r;
                            }
                        }
                        _ => {
                            for (d, &s) in dst.iter_mut().zip(src) {
                                *d = s + b;
                            }
                        }
                    }
                }
                q = (y + 1) * wp;
            }
        }
    }
}
