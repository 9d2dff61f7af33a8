//! 3×3 stride-1 "same" convolutions by Winograd F(2×2, 3×3) (Lavin & Gray, 2015).
//!
//! Each 2×2 block of outputs comes from a 4×4 input tile: in the transformed domain the 9
//! multiply-adds per output and input channel become 16 per 4 outputs, so the GEMMs, which are
//! the whole cost, do 2.25x fewer FLOPs than the shifted GEMMs of `conv_same`. Per transform
//! position ξ (16 of them) a task multiplies `U_ξ` `[O, C]` by `V_ξ` `[C, tiles]`.
//!
//! The weight transform `U = G g Gᵀ` is redone on every call instead of being kept: kept, it
//! would cost 16/9 of the convolution weights in RAM (1.5 GB more for an SD UNet). It costs one
//! pass over the weights, small against the convolution on the large planes where this kernel
//! is used ([`worth_it`]); on small planes every task would stream all of `U`.
//!
//! The transforms only add, subtract and halve, so the error stays at f32 rounding of the
//! GEMM sums (checked against Burn's convolution in the tests, within 1e-5 relative).

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod input;

pub(crate) use input::Prologue;
use input::{input_transform, tile_runs};

use super::{Mat, PackedA, Product, SendPtr, contiguous, gemm, new_tensor, simd_dispatch, slice};

/// Output tiles (2×2 pixels each) per task: the GEMMs get 128 columns, and the task's `V`
/// and `M` scratch stay within a few MB.
const TILES_PER_TASK: usize = 128;

/// Whether the Winograd kernel beats `conv_same` for this plane, where the weight transform
/// and the per-task reads of `U` are amortised over enough tiles: from 16×16 in f32 (1280
/// channels at 16×16: 53 ms against 78 direct, 2 cores), from 32×32 for a bf16 weight, whose
/// direct GEMMs run at twice the rate while the transform costs the same (16×16: 52 ms
/// against 46).
pub(crate) fn worth_it(h: usize, w: usize, bf16: bool) -> bool {
    h * w >= if bf16 { 32 * 32 } else { 16 * 16 }
}

/// `G` applied to three values.
#[inline(always)]
fn g3(v: [f32; 3]) -> [f32; 4] {
    [
        v[0],
        0.5 * (v[0] + v[1] + v[2]),
        0.5 * (v[0] - v[1] + v[2]),
        v[2],
    ]
}

/// `Aᵀ` applied to four values.
#[inline(always)]
fn at(v: [f32; 4]) -> [f32; 2] {
    [v[0] + v[1] + v[2], v[1] - v[2] - v[3]]
}

/// `U` as the GEMMs read it: f32, or for a bf16 weight (the layer computes in bf16) each
/// `U_ξ` rounded to bf16 and packed once for the bf16 kernel, which every task then reads.
enum Transformed {
    F32(Vec<f32>),
    Bf16(Vec<PackedA>),
}

impl Transformed {
    /// `U[ξ][o][c]` from the `[O, C, 3, 3]` weight (f32 or bf16) read through its strides,
    /// transformed in f32 either way.
    fn of(w: &FlexTensor, o: usize, c: usize) -> Self {
        let u = transform_weights(w, o, c);
        if w.dtype() != DType::BF16 {
            return Self::F32(u);
        }
        let packed = (0..16)
            .into_par_iter()
            // Packing rounds the f32 rows to bf16 (nearest-even) as it converts them.
            .map(|xi| PackedA::new(Mat::F32(u[xi * o * c..].as_ptr(), 1, c as isize), o, c))
            .collect();
        Self::Bf16(packed)
    }

    /// `U_ξ` as the GEMM's `O×C` left operand.
    fn at(&self, xi: usize, o: usize, c: usize) -> Mat {
        match self {
            Self::F32(u) => Mat::F32(u[xi * o * c..].as_ptr(), 1, c as isize),
            Self::Bf16(u) => u[xi].mat(),
        }
    }
}

/// `U[ξ][o][c]` from the `[O, C, 3, 3]` weight `w` (f32, f16 or bf16, any strides): per output
/// channel, its 9 taps are gathered as rows over the input channels, then transformed 16
/// channels at a time. (Transforming channel by channel, with 16 scattered stores each, cost
/// as much as the bf16 GEMMs of a 640-channel 32×32 convolution.)
fn transform_weights(w: &FlexTensor, o: usize, c: usize) -> Vec<f32> {
    let st = w.layout().strides();
    let (so, sc, sh, sw) = (st[0], st[1], st[2], st[3]);
    let w0 = w.layout().start_offset() as isize;
    let dtype = w.dtype();
    let mut u = vec![0.0f32; 16 * o * c];
    let u_ptr = SendPtr(u.as_mut_ptr());
    (0..o)
        .into_par_iter()
        .for_each_init(Vec::new, |taps: &mut Vec<f32>, oi| {
            let u_ptr = u_ptr;
            taps.resize(9 * c, 0.0);
            for (t, row) in taps.chunks_exact_mut(c).enumerate() {
                let base = w0 + oi as isize * so + (t / 3) as isize * sh + (t % 3) as isize * sw;
                let at = |ci: usize| (base + ci as isize * sc) as usize;
                match dtype {
                    DType::BF16 => {
                        let ws = w.storage::<half::bf16>();
                        row.iter_mut()
                            .enumerate()
                            .for_each(|(ci, r)| *r = ws[at(ci)].to_f32());
                    }
                    DType::F16 if sc == 1 => {
                        use half::slice::HalfFloatSliceExt;
                        let ws = &w.storage::<half::f16>()[at(0)..at(0) + c];
                        ws.convert_to_f32_slice(row);
                    }
                    DType::F16 => {
                        let ws = w.storage::<half::f16>();
                        row.iter_mut()
                            .enumerate()
                            .for_each(|(ci, r)| *r = ws[at(ci)].to_f32());
                    }
                    _ => {
                        let ws = w.storage::<f32>();
                        row.iter_mut()
                            .enumerate()
                            .for_each(|(ci, r)| *r = ws[at(ci)]);
                    }
                }
            }
            // SAFETY: rows (ξ, oi) of u, c long each; each oi is written by one task.
            let out: [&mut [f32]; 16] = std::array::from_fn(|xi| unsafe {
                std::slice::from_raw_parts_mut(u_ptr.0.add((xi * o + oi) * c), c)
            });
            transform_taps(taps, c, out);
        });
    u
}

simd_dispatch! {
    /// `U = G g Gᵀ` for `c` channels at once: `taps` holds the 9 taps `g[kh][kw]` as rows of
    /// `c`, `out[4i + j]` receives `U[i][j]` per channel. The arithmetic of `g3` applied to
    /// columns then rows, in lanes of 16 channels.
    fn transform_taps(taps: &[f32], c: usize, out: [&mut [f32]; 16]) {
        const L: usize = 16;
        #[allow(unused_mut)] // the macro's signature cannot say `mut out`
        let mut out = out;
        for c0 in (0..c).step_by(L) {
            let len = L.min(c - c0);
            let g: [[f32; L]; 9] = std::array::from_fn(|t| {
                let mut v = [0.0f32; L];
                v[..len].copy_from_slice(&taps[t * c + c0..t * c + c0 + len]);
                v
            });
            // G g: each column kw of g through G (4 rows of lanes per column).
            let cols: [[[f32; L]; 4]; 3] = std::array::from_fn(|kw| {
                let [a, b, d] = [&g[kw], &g[3 + kw], &g[6 + kw]];
                let mut r = [[0.0f32; L]; 4];
                for l in 0..L {
                    let v = g3([a[l], b[l], d[l]]);
                    for i in 0..4 {
                        r[i][l] = v[i];
                    }
                }
                r
            });
            for i in 0..4 {
                for l in 0..len {
                    let row = g3([cols[0][i][l], cols[1][i][l], cols[2][i][l]]);
                    for j in 0..4 {
                        out[4 * i + j][c0 + l] = row[j];
                    }
                }
            }
        }
    }
}

/// Scratch of one task: transformed input `V[ξ][c][t]`, products `M[ξ][o][t]`, the four
/// row combinations of one tile row, and one channel's outputs `Y[ij][t]`.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
    ring: Vec<f32>,
    y: Vec<f32>,
}

/// `Y = Aᵀ M A` of output channel `oi` for all `tb` tiles: `y` holds `Y[00]`, `Y[01]`,
/// `Y[10]`, `Y[11]`, each `tb` long (lanes over tiles, so it vectorises).
#[inline(always)]
fn output_transform(m: &[f32], o: usize, oi: usize, tb: usize, y: &mut [f32]) {
    let mm: [&[f32]; 16] = std::array::from_fn(|xi| &m[(xi * o + oi) * tb..][..tb]);
    let (y00, rest) = y.split_at_mut(tb);
    let (y01, rest) = rest.split_at_mut(tb);
    let (y10, y11) = rest.split_at_mut(tb);
    for t in 0..tb {
        // Aᵀ over rows (ξ = 4a + b, a the row), then · A over the columns.
        let c: [[f32; 2]; 4] =
            std::array::from_fn(|b| at([mm[b][t], mm[4 + b][t], mm[8 + b][t], mm[12 + b][t]]));
        let [a00, a01] = at([c[0][0], c[1][0], c[2][0], c[3][0]]);
        let [a10, a11] = at([c[0][1], c[1][1], c[2][1], c[3][1]]);
        y00[t] = a00;
        y01[t] = a01;
        y10[t] = a10;
        y11[t] = a11;
    }
}

simd_dispatch! {
    /// Output transform `Y = Aᵀ M A` of every channel of one task's tiles (image `img`, tiles
    /// `t0..t0 + tb`), plus bias and the fused add, stored into the output.
    #[allow(clippy::too_many_arguments)]
    fn output_stage(
        m: &[f32],
        y: &mut [f32],
        ohw: [usize; 3],
        img: usize,
        t0: usize,
        tb: usize,
        bs: Option<&[f32]>,
        adds: Option<(&[f32], bool)>,
        out_ptr: SendPtr,
    ) {
        let [o, h, wd] = ohw;
        let tw = wd.div_ceil(2);
        let residual = match adds {
            Some((a, false)) => Some(a),
            _ => None,
        };
        for oi in 0..o {
            let ch = img * o + oi;
            let mut b = bs.map_or(0.0, |b| b[oi]);
            if let Some((a, true)) = adds {
                b += a[ch];
            }
            output_transform(m, o, oi, tb, y);
            let (y00, rest) = y.split_at(tb);
            let (y01, rest) = rest.split_at(tb);
            let (y10, y11) = rest.split_at(tb);
            // A tile row's run of tiles at a time: two output rows, left to right, so the
            // stores vectorise (per tile, finding the row and column took two integer
            // divisions).
            for (t, ty, tx0, run) in tile_runs(t0, tb, tw) {
                for (i, left, right) in [(0, y00, y01), (1, y10, y11)] {
                    let yy = 2 * ty + i;
                    if yy >= h {
                        continue;
                    }
                    // Columns 2·tx0 .. 2·(tx0 + run) of the row, the last one cut off when
                    // the width is odd.
                    let start = (ch * h + yy) * wd + 2 * tx0;
                    let len = (2 * run).min(wd - 2 * tx0);
                    // SAFETY: tiles are disjoint, so each output pixel of image img is
                    // written by exactly one task, and the columns are inside the row.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(start), len) };
                    let (l, r) = (&left[t..t + run], &right[t..t + run]);
                    match residual {
                        Some(a) => {
                            let a = &a[start..start + len];
                            for (((d, a), &l), &r) in
                                dst.chunks_mut(2).zip(a.chunks(2)).zip(l).zip(r)
                            {
                                d[0] = l + b + a[0];
                                if let (Some(d1), Some(&a1)) = (d.get_mut(1), a.get(1)) {
                                    *d1 = r + b + a1;
                                }
                            }
                        }
                        None => {
                            for ((d, &l), &r) in dst.chunks_mut(2).zip(l).zip(r) {
                                d[0] = l + b + 0.0;
                                if let Some(d1) = d.get_mut(1) {
                                    *d1 = r + b + 0.0;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Same contract as `conv_same` for k = 3: `x` `[N, C, H, W]`, `w` `[O, C, 3, 3]` (any
/// positive strides), optional bias `[O]`, optional `add` (residual shaped as the output, or
/// `[N, O, 1, 1]` when `per_channel`); the convolution's input is `x` through `pro` (with
/// `Affine`, `scale`/`shift` are `[N·C]`; with `Upsample2x` the output is `[N, O, 2H, 2W]`).
pub(crate) fn conv3x3(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<(&FlexTensor, bool)>,
    pro: Prologue<'_>,
) -> FlexTensor {
    let s = x.layout().shape();
    let (n, c, in_plane) = (s[0], s[1], s[2] * s[3]);
    let (h, wd) = match pro {
        Prologue::Upsample2x => (2 * s[2], 2 * s[3]),
        _ => (s[2], s[3]),
    };
    let o = w.layout().shape()[0];
    let x = contiguous(x);
    let xs = slice(&x);
    let u = Transformed::of(w, o, c);
    let bias = bias.map(contiguous);
    let bs = bias.as_ref().map(slice);
    let add = add.map(|(a, per_channel)| (contiguous(a), per_channel));
    let adds = add.as_ref().map(|(a, pc)| (slice(a), *pc));

    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = th * tw;
    let chunks = tiles.div_ceil(TILES_PER_TASK);
    let mut out = vec![0.0f32; n * o * h * wd];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n * chunks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let out_ptr = out_ptr;
            let (img, chunk) = (task / chunks, task % chunks);
            let t0 = chunk * TILES_PER_TASK;
            let tb = TILES_PER_TASK.min(tiles - t0);
            sc.v.resize(16 * c * tb, 0.0);
            sc.m.resize(16 * o * tb, 0.0);
            let plane = &xs[img * c * in_plane..(img + 1) * c * in_plane];
            let pro = match pro {
                Prologue::Affine { scale, shift, silu } => Prologue::Affine {
                    scale: &scale[img * c..(img + 1) * c],
                    shift: &shift[img * c..(img + 1) * c],
                    silu,
                },
                p => p,
            };
            let (dims, rows, ring) = ([c, h, wd], &mut sc.rows, &mut sc.ring);
            input_transform(plane, pro, dims, t0, tb, rows, ring, &mut sc.v);
            for xi in 0..16 {
                // SAFETY: M_ξ is O×tb row-major, U_ξ O×C row-major, V_ξ C×tb row-major.
                unsafe {
                    let p = Product {
                        mnk: [o, tb, c],
                        dst: sc.m.as_mut_ptr().add(xi * o * tb),
                        dst_rs: tb,
                        accumulate: false,
                        scale: 1.0,
                    };
                    let v = Mat::F32(sc.v.as_ptr().add(xi * c * tb), 1, tb as isize);
                    gemm(p, u.at(xi, o, c), v);
                }
            }
            sc.y.resize(4 * tb, 0.0);
            let dims = [o, h, wd];
            output_stage(&sc.m, &mut sc.y, dims, img, t0, tb, bs, adds, out_ptr);
        });
    new_tensor(out, vec![n, o, h, wd])
}
