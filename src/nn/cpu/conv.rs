//! Stride-1 "same" convolutions (odd kernel k, padding k/2) as k² shifted GEMMs, and stride-2
//! ones as the same GEMMs over the padded input's four phases ([`conv_stride2`]).
//!
//! Flex lowers convolutions through a single-threaded NCHW→NHWC copy and a 512-pixel im2col
//! tile of `C·k²` rows that falls out of L2. Here the input is zero-padded once (rows of
//! `W+2p`), and in that padded plane the window offset (kh, kw) is a constant shift, so
//! `out[:, j] += W[:, :, kh, kw] · x_pad[:, j + kh·(W+2p) + kw]` is a plain strided GEMM over
//! "wide" output columns `j` (the 2p columns per row that wrap around are computed and
//! dropped). Tasks are (image, band of output rows, block of output channels); each keeps its
//! accumulator in cache across the k² GEMMs.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::winograd::{self, Prologue};
use super::{
    Mat, PackedA, Product, Unfilled, contiguous, dims, gemm, mat, new_tensor, norms, slice,
    widened_once,
};

/// `KILN_CONV=direct` turns the Winograd path off (for A/B timing and for bisecting).
fn direct_only() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| std::env::var("KILN_CONV").is_ok_and(|v| v == "direct"))
}

/// Wide output columns a task aims for: accumulator `C_out × ~512` stays in L2.
const COLS_PER_TASK: usize = 512;

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// `add` made contiguous, with whether it is per channel (`[N, O, 1, 1]`); `None` when it is
/// neither that nor shaped as the output `out`.
fn check_add(add: Option<&FlexTensor>, out: [usize; 4]) -> Option<Option<(FlexTensor, bool)>> {
    let [n, o, h, wd] = out;
    match add.map(|a| (dims4(a), a)) {
        None => Some(None),
        Some((d, a)) if d == out || d == [n, o, 1, 1] => {
            Some(Some((contiguous(a), d[2] == 1 && (h, wd) != (1, 1))))
        }
        Some(_) => None,
    }
}

/// Whether a 3×3 convolution with `n` `h`×`w` outputs goes to the Winograd kernel.
fn winograd(w: &FlexTensor, n: usize, h: usize, wd: usize) -> bool {
    let bf16 = w.dtype() == burn::tensor::DType::BF16;
    winograd::worth_it(n, h, wd, bf16) && !direct_only() && w.layout().has_positive_strides()
}

/// What [`conv3x3_of`] applies to its input on the way in.
pub(crate) enum Input<'a> {
    /// GroupNorm (`groups`, `eps`, affine `gamma`/`beta`), then SiLU if `silu`.
    Norm {
        groups: usize,
        eps: f64,
        gamma: &'a FlexTensor,
        beta: &'a FlexTensor,
        silu: bool,
    },
    /// Nearest-neighbour ×2 upsampling.
    Upsample2x,
}

/// `conv_same` (k = 3) of `input` applied to `x`, computed inside the Winograd kernel's input
/// pass so the normalised or upsampled tensor is never made; `add` is shaped as the output or
/// per channel. `None` where the Winograd kernel does not take the case: the caller then makes
/// the input and calls `conv_same`.
pub(crate) fn conv3x3_of(
    input: Input<'_>,
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let [n, c, hi, wi] = dims4(x);
    let [o, wc, k, k2] = dims4(w);
    let (h, wd) = match input {
        Input::Upsample2x => (2 * hi, 2 * wi),
        Input::Norm { .. } => (hi, wi),
    };
    let amx = amx_takes(w, c);
    if wc != c || (k, k2) != (3, 3) || n * c * h * wd == 0 || o == 0 {
        return None;
    }
    if !amx && !winograd(w, n, h, wd) {
        return None;
    }
    let add = check_add(add, [n, o, h, wd])?;
    let add = add.as_ref().map(|(a, per_channel)| (a, *per_channel));
    let conv = |pro| {
        #[cfg(target_arch = "x86_64")]
        if amx {
            return super::conv_amx::conv(x, w, bias, add, pro);
        }
        winograd::conv3x3(x, w, bias, add, pro)
    };
    Some(match input {
        Input::Norm {
            groups,
            eps,
            gamma,
            beta,
            silu,
        } => {
            if groups == 0 || c % groups != 0 || dims(gamma) != [c] || dims(beta) != [c] {
                return None;
            }
            let (scale, shift) = norms::group_norm_affine(x, groups, eps, gamma, beta);
            conv(Prologue::Affine {
                scale: &scale,
                shift: &shift,
                silu,
            })
        }
        Input::Upsample2x => conv(Prologue::Upsample2x),
    })
}

/// Whether the AMX kernel (`conv_amx`) takes a 3×3 or 1×1 convolution of `c` input channels
/// with weight `w`.
fn amx_takes(w: &FlexTensor, c: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::conv_amx::takes(w, c);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` `[N, C, H, W]`, `w` `[O, C, k, k]` (PyTorch layout), optional bias `[O]`; stride 1,
/// padding `k/2` on every side; plus `add` if given, either shaped as the output (a residual)
/// or `[N, O, 1, 1]` (a per-image bias such as a time embedding), folded into the final
/// write. `None` when the shapes are not that case.
pub(crate) fn conv_same(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let [n, c, h, wd] = dims4(x);
    let [o, wc, k, k2] = dims4(w);
    if wc != c || k != k2 || k % 2 == 0 || n * c * h * wd == 0 || o == 0 {
        return None;
    }
    let add = check_add(add, [n, o, h, wd])?;
    #[cfg(target_arch = "x86_64")]
    if (k == 3 || k == 1) && amx_takes(w, c) {
        let add = add.as_ref().map(|(a, per_channel)| (a, *per_channel));
        return Some(super::conv_amx::conv(x, w, bias, add, Prologue::Plain));
    }
    if k == 3 && winograd(w, n, h, wd) {
        let add = add.as_ref().map(|(a, per_channel)| (a, *per_channel));
        return Some(winograd::conv3x3(x, w, bias, add, Prologue::Plain));
    }
    let x = contiguous(x);
    let p = k / 2;
    let wp = wd + 2 * p;
    // Slack of k-1 so the last row's rightmost shifted view stays inside the plane.
    let plane = (h + 2 * p) * wp + k - 1;
    // A 1×1 kernel's padded plane is the input itself: no copy (at SD's VAE decoder's last
    // level the copy was 256 MB on top of the peak).
    let xp = (k > 1).then(|| {
        let mut xp = vec![0.0f32; n * c * plane];
        xp.par_chunks_mut(plane)
            .zip(slice(&x).par_chunks(h * wd))
            .for_each(|(dst, src)| {
                for (y, row) in src.chunks_exact(wd).enumerate() {
                    let at = (y + p) * wp + p;
                    dst[at..at + wd].copy_from_slice(row);
                }
            });
        xp
    });
    let input = Shifted {
        data: xp.as_deref().unwrap_or(slice(&x)),
        chan: plane,
        wide: wp,
        tap: |img: usize, kh: usize, kw: usize| img * c * plane + kh * wp + kw,
    };
    Some(shifted_gemms(&input, w, bias, add, [n, c, o, h, wd]))
}

/// A convolution with stride 2 (odd kernel k, `padding` `[top, left, bottom, right]`), same
/// contract as [`conv_same`] otherwise. The zero-padded input is split into its four
/// phases (even/odd rows × even/odd columns); tap (kh, kw) reads phase (kh mod 2, kw mod 2)
/// shifted by (kh/2, kw/2), which makes it the shifted GEMMs of [`conv_same`] over planes of
/// the output's size. Burn's convolution took an SD UNet step's three stride-2 convolutions
/// at ~0.1 s, on one thread for its layout copies and in f32 for a bf16 weight.
pub(crate) fn conv_stride2(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<&FlexTensor>,
    [top, left, bottom, right]: [usize; 4],
) -> Option<FlexTensor> {
    let [n, c, hi, wi] = dims4(x);
    let [o, wc, k, k2] = dims4(w);
    let (ph, pw) = (hi + top + bottom, wi + left + right);
    if wc != c || k != k2 || k % 2 == 0 || n * c * hi * wi == 0 || o == 0 || ph < k || pw < k {
        return None;
    }
    let (h, wd) = ((ph - k) / 2 + 1, (pw - k) / 2 + 1);
    let add = check_add(add, [n, o, h, wd])?;
    // A phase plane holds the rows and columns the taps reach: k/2 past the output's.
    let (hq, wq) = (h + k / 2, wd + k / 2);
    let plane = hq * wq + k / 2;
    let x = contiguous(x);
    let xs = slice(&x);
    let mut xq = vec![0.0f32; n * 4 * c * plane];
    // Phase (a, b) of channel ci of image img: plane ((img·4 + 2a + b)·C + ci), whose (i, j) is
    // the padded input's (2i + a, 2j + b).
    xq.par_chunks_mut(plane).enumerate().for_each(|(t, dst)| {
        let (img, phase, ci) = (t / (4 * c), (t / c) % 4, t % c);
        let src = &xs[(img * c + ci) * hi * wi..][..hi * wi];
        for i in 0..hq {
            let Some(r) = (2 * i + phase / 2).checked_sub(top).filter(|&r| r < hi) else {
                continue;
            };
            let row = &src[r * wi..][..wi];
            for (j, d) in dst[i * wq..(i + 1) * wq].iter_mut().enumerate() {
                if let Some(&v) = (2 * j + phase % 2)
                    .checked_sub(left)
                    .and_then(|s| row.get(s))
                {
                    *d = v;
                }
            }
        }
    });
    let input = Shifted {
        data: &xq,
        chan: plane,
        wide: wq,
        tap: |img: usize, kh: usize, kw: usize| {
            (img * 4 + 2 * (kh % 2) + kw % 2) * c * plane + (kh / 2) * wq + kw / 2
        },
    };
    Some(shifted_gemms(&input, w, bias, add, [n, c, o, h, wd]))
}

/// The input of [`shifted_gemms`], zero-padded: for tap (kh, kw) of image `img`, channel `ci`'s
/// plane starts at `data[tap(img, kh, kw) + ci·chan..]`, and output row y's `wide` columns
/// (its `W` pixels, then columns computed and dropped) at `y·wide` in it.
struct Shifted<'a, F> {
    data: &'a [f32],
    chan: usize,
    wide: usize,
    tap: F,
}

/// `out[:, y·wide + j] = Σ_taps W[:, :, kh, kw] · plane_tap[:, y·wide + j]` as parallel tasks,
/// then bias and `add` folded into writing the first `W` of every wide row: `w` is `[O, C, k,
/// k]` through its strides, the output `[N, O, H, W]`.
fn shifted_gemms<F: Fn(usize, usize, usize) -> usize + Sync>(
    input: &Shifted<'_, F>,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<(FlexTensor, bool)>,
    [n, c, o, h, wd]: [usize; 5],
) -> FlexTensor {
    let k = dims4(w)[2];
    // Any positive-stride weight layout works: the GEMM reads it through strides. `Conv2d`
    // keeps it as [k, k, O, C] in memory (see `relayout_conv_weight`), which spares gemm a
    // repack.
    let w = if w.layout().has_positive_strides() {
        w.clone()
    } else {
        contiguous(w)
    };
    let ws_ = w.layout().strides();
    let (so, sc, sh, sw) = (ws_[0], ws_[1], ws_[2], ws_[3]);
    let bias = bias.map(contiguous);
    let wp = input.wide;
    // Row bands per image, then split output channels until there is work for every thread.
    let rows = (COLS_PER_TASK / wp).clamp(1, h);
    let bands = h.div_ceil(rows);
    let want = 4 * rayon::current_num_threads();
    let mut oblk = o;
    while n * bands * o.div_ceil(oblk) < want && oblk > 64 {
        oblk = (oblk / 2).next_multiple_of(8);
    }
    let oblocks = o.div_ceil(oblk);
    // Each (image, band) task widens its f16 taps: widen once where that is many times over
    // (a 64×64-level 1×1 convolution has 16 such tasks). Same layout, so the strides hold.
    let w = widened_once(&w, n * bands).unwrap_or(w);

    let mut out = Unfilled::new(n * o * h * wd);
    let out_ptr = out.ptr();
    let (xs, ws) = (input.data, mat(&w, sc, so));
    // The tap's O-block × C matrix: rows o0.. of the weight at offset kh·sh + kw·sw.
    let tap =
        |kh: usize, kw: usize, o0: usize| ws.at(o0, 0).shifted(kh as isize * sh + kw as isize * sw);
    // A bf16 weight is packed once per (tap, channel block) for the bf16 kernel instead of
    // by every task: at the 8×8 level a task's 80 columns made packing a third of the work.
    let packed: Vec<PackedA> = if w.dtype() == burn::tensor::DType::BF16 {
        (0..k * k * oblocks)
            .into_par_iter()
            .map(|t| {
                let (kh, kw, ob) = (t / (k * oblocks), (t / oblocks) % k, t % oblocks);
                let (o0, o1) = (ob * oblk, ((ob + 1) * oblk).min(o));
                PackedA::new(tap(kh, kw, o0), o1 - o0, c)
            })
            .collect()
    } else {
        Vec::new()
    };
    let bs = bias.as_ref().map(slice);
    let adds = add
        .as_ref()
        .map(|(a, per_channel)| (slice(a), *per_channel));
    // Each worker's accumulator is reused as is: the first tap's GEMM overwrites all of it.
    (0..n * bands * oblocks)
        .into_par_iter()
        .for_each_init(Vec::new, |acc, t| {
            let out_ptr = out_ptr;
            let (img, band, ob) = (t / (bands * oblocks), (t / oblocks) % bands, t % oblocks);
            let (y0, y1) = (band * rows, ((band + 1) * rows).min(h));
            let (o0, o1) = (ob * oblk, ((ob + 1) * oblk).min(o));
            let (m, cols) = (o1 - o0, (y1 - y0) * wp);
            acc.resize(m * cols, 0.0);
            for kh in 0..k {
                for kw in 0..k {
                    let first = kh == 0 && kw == 0;
                    let rhs = &xs[(input.tap)(img, kh, kw) + y0 * wp..];
                    let lhs = match packed.get((kh * k + kw) * oblocks + ob) {
                        Some(p) => p.mat(),
                        None => tap(kh, kw, o0),
                    };
                    // SAFETY: acc is m×cols row-major; lhs element (r, ci) is at r·so + ci·sc
                    // past `lhs` (the weight's own layout), rhs element (ci, j) at ci·chan + j
                    // within `data`: every index is in bounds by the plane's slack and o1 ≤ O.
                    unsafe {
                        let p = Product {
                            mnk: [m, cols, c],
                            dst: acc.as_mut_ptr(),
                            dst_rs: cols,
                            accumulate: !first,
                            scale: 1.0,
                        };
                        gemm(p, lhs, Mat::F32(rhs.as_ptr(), 1, input.chan as isize));
                    }
                }
            }
            // Keep the first W of every wide row, adding the bias.
            for (r, acc_row) in acc.chunks_exact(cols).enumerate() {
                let ch = o0 + r;
                let mut b = bs.map_or(0.0, |b| b[ch]);
                if let Some((a, true)) = adds {
                    b += a[img * o + ch];
                }
                for y in y0..y1 {
                    let src = &acc_row[(y - y0) * wp..(y - y0) * wp + wd];
                    let at = ((img * o + ch) * h + y) * wd;
                    // SAFETY: each task owns channels o0..o1 of rows y0..y1 of image img.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(at), wd) };
                    match adds {
                        Some((a, false)) => {
                            for ((d, &s), &r) in dst.iter_mut().zip(src).zip(&a[at..at + wd]) {
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
            }
        });
    // SAFETY: the tasks cover every (image, row band, channel block), each all its pixels.
    new_tensor(unsafe { out.filled() }, vec![n, o, h, wd])
}
