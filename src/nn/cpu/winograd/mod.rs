//! 3×3 stride-1 "same" convolutions by Winograd's minimal filtering (Lavin & Gray, 2015), in
//! two variants ([`Variant`]): F(2×2, 3×3) (`f2`) and F(4×4, 3×3) (`f4`).
//!
//! Each m×m block of outputs comes from an (m+2)×(m+2) input tile: in the transformed domain
//! the 9 multiply-adds per output and input channel become (m+2)² per m² outputs, so the
//! GEMMs, which are the whole cost, do 2.25x (F2) or 4x (F4) fewer FLOPs than the shifted
//! GEMMs of `conv_same`. Per transform position ξ a task multiplies `U_ξ` `[O, C]` by `V_ξ`
//! `[C, tiles]`.
//!
//! The weight transform `U = G g Gᵀ` is redone on every call instead of being kept: kept, it
//! would cost 16/9 (F2) or 4x (F4) of the convolution weights in RAM (1.5 GB more for an SD
//! UNet with F2). It costs one pass over the weights, small against the convolution on the
//! large planes where this kernel is used ([`worth_it`]); on small planes every task would
//! stream all of `U`.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod f2;
mod f4;
mod input;
mod weights;

pub(crate) use input::Prologue;
use input::tile_runs;
use weights::{transform_weights, transform_weights_packed};

use super::{Mat, PackedA, Product, SendPtr, Unfilled, contiguous, gemm, new_tensor, slice};

/// The two tile sizes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    F2,
    F4,
}

impl Variant {
    /// The variant for an `h`×`w` output, `None` where the shifted GEMMs of `conv_same` are
    /// faster: there the weight transform and the per-task reads of `U` are not amortised
    /// over enough tiles. f32 takes F2 from 16×16 (1280 channels at 16×16: 53 ms against 78
    /// direct, 2 cores) and F4 from 32×32 (640 at 32×32: 43 -> 29 ms; 320 at 64×64: 39 -> 26
    /// ms); at 16×16 F4's 4x larger `U` (236 MB at 1280 channels) costs more than its
    /// GEMMs save. A bf16 weight takes F2 from 32×32: its direct GEMMs run at twice the rate
    /// while the transform costs the same (16×16: 52 ms against 46), and F4's transforms
    /// would scale the bf16 rounding of the transformed operands by up to 8. (On AMX CPUs
    /// `conv_amx` takes bf16 3×3 convolutions before this is asked.)
    fn of(h: usize, w: usize, bf16: bool) -> Option<Self> {
        let plane = h * w;
        match bf16 {
            true if plane >= 32 * 32 => Some(Self::F2),
            false if plane >= 32 * 32 => Some(Self::F4),
            false if plane >= 16 * 16 => Some(Self::F2),
            _ => None,
        }
    }

    /// Output tile side m.
    fn m(self) -> usize {
        match self {
            Self::F2 => 2,
            Self::F4 => 4,
        }
    }

    /// Transform positions (m+2)².
    fn positions(self) -> usize {
        (self.m() + 2) * (self.m() + 2)
    }

    /// Output tiles per task: 512 (F2) or 1024 (F4) output pixels, so the GEMMs get 128 or
    /// 64 columns and the task's `V` and `M` scratch stay within a few MB.
    fn tiles_per_task(self) -> usize {
        match self {
            Self::F2 => 128,
            Self::F4 => 64,
        }
    }
}

/// Whether the Winograd kernel beats `conv_same` for an `h`×`w` output plane.
pub(crate) fn worth_it(h: usize, w: usize, bf16: bool) -> bool {
    Variant::of(h, w, bf16).is_some()
}

/// `U` as the GEMMs read it: f32, or for a bf16 weight (the layer computes in bf16) each
/// `U_ξ` rounded to bf16 and packed once for the bf16 kernel, which every task then reads.
enum Transformed {
    F32(Vec<f32>),
    Bf16(Vec<PackedA>),
}

impl Transformed {
    /// `U[ξ][o][c]` from the `[O, C, 3, 3]` weight (f32, f16 or bf16) read through its
    /// strides, transformed in f32 either way.
    fn of(w: &FlexTensor, o: usize, c: usize, v: Variant) -> Self {
        let taps_of = |taps: &[f32], c: usize, out: &mut [&mut [f32]]| match v {
            Variant::F2 => f2::transform_taps(taps, c, out),
            Variant::F4 => f4::transform_taps(taps, c, out),
        };
        match w.dtype() {
            // Packing rounds the f32 rows to bf16 (nearest-even) as it converts them.
            DType::BF16 => Self::Bf16(transform_weights_packed(w, o, c, v.positions(), taps_of)),
            _ => Self::F32(transform_weights(w, o, c, v.positions(), taps_of)),
        }
    }

    /// `U_ξ` as the GEMM's `O×C` left operand.
    fn at(&self, xi: usize, o: usize, c: usize) -> Mat {
        match self {
            Self::F32(u) => Mat::F32(u[xi * o * c..].as_ptr(), 1, c as isize),
            Self::Bf16(u) => u[xi].mat(),
        }
    }
}

/// Scratch of one task: transformed input `V[ξ][c][t]`, products `M[ξ][o][t]`, the combined
/// rows of one tile row, and one channel's outputs `Y[ij][t]`.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
    ring: Vec<f32>,
    y: Vec<f32>,
}

/// Where a task's outputs go: `O` channels of an `H`×`W` plane of image `img`, its tiles
/// `t0..t0 + tb`, plus bias `[O]` and the fused add (shaped as the output, or `[N·O]` when
/// per channel), into the output tensor's storage.
#[derive(Clone, Copy)]
struct OutputStage<'a> {
    ohw: [usize; 3],
    img: usize,
    t0: usize,
    tb: usize,
    bias: Option<&'a [f32]>,
    add: Option<(&'a [f32], bool)>,
    out: SendPtr,
}

/// A variant's output transform: `Y = Aᵀ M A` of output channel `oi` for all `tb` tiles of
/// `M` (`M[ξ][o][t]`, `O` channels) into `y[(m·i + j)·tb + t]` for an m×m tile.
trait OutputTransform {
    /// (A trait, not a closure or fn pointer: those were not inlined into the SIMD caller
    /// and ran as SSE code, 10% of a bf16 64×64 convolution.)
    fn apply(m: &[f32], o: usize, oi: usize, tb: usize, y: &mut [f32]);
}

/// The output stage with m×m tiles (`M` = m): per output channel, `T` makes `Y`, then bias
/// and add go on as the rows are stored.
#[inline(always)]
fn output_stage_with<T: OutputTransform, const M: usize>(
    m: &[f32],
    y: &mut [f32],
    st: &OutputStage<'_>,
) {
    let OutputStage {
        ohw: [o, h, wd],
        img,
        t0,
        tb,
        bias,
        add,
        out,
    } = *st;
    let tw = wd.div_ceil(M);
    let residual = match add {
        Some((a, false)) => Some(a),
        _ => None,
    };
    for oi in 0..o {
        let ch = img * o + oi;
        let mut b = bias.map_or(0.0, |b| b[oi]);
        if let Some((a, true)) = add {
            b += a[ch];
        }
        T::apply(m, o, oi, tb, y);
        // A tile row's run of tiles at a time: M output rows, left to right, so the stores
        // vectorise (per tile, finding the row and column took two integer divisions).
        for (t, ty, tx0, run) in tile_runs(t0, tb, tw) {
            for i in 0..M {
                let yy = M * ty + i;
                if yy >= h {
                    break;
                }
                // Columns M·tx0 .. M·(tx0 + run) of the row, the last tile cut off where the
                // width is not a multiple of M.
                let start = (ch * h + yy) * wd + M * tx0;
                let len = (M * run).min(wd - M * tx0);
                // SAFETY: tiles are disjoint, so each output pixel of image img is written by
                // exactly one task, and the columns are inside the row.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(start), len) };
                let cols: [&[f32]; M] = std::array::from_fn(|j| &y[(M * i + j) * tb + t..][..run]);
                match residual {
                    Some(a) => {
                        let a = &a[start..start + len];
                        for (k, (d, a)) in dst.chunks_mut(M).zip(a.chunks(M)).enumerate() {
                            for (j, (d, &a)) in d.iter_mut().zip(a).enumerate() {
                                *d = cols[j][k] + b + a;
                            }
                        }
                    }
                    None => {
                        for (k, d) in dst.chunks_mut(M).enumerate() {
                            for (j, d) in d.iter_mut().enumerate() {
                                *d = cols[j][k] + b + 0.0;
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
/// Only for planes where [`worth_it`] holds.
pub(crate) fn conv3x3(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<(&FlexTensor, bool)>,
    pro: Prologue<'_>,
) -> FlexTensor {
    let s = x.layout().shape();
    let (n, c, in_plane) = (s[0], s[1], s[2] * s[3]);
    let (h, wd) = pro.plane(s[2], s[3]);
    let o = w.layout().shape()[0];
    let variant = Variant::of(h, wd, w.dtype() == DType::BF16).unwrap_or(Variant::F2);
    let (mt, xis, per_task) = (variant.m(), variant.positions(), variant.tiles_per_task());
    let x = contiguous(x);
    let xs = slice(&x);
    let u = Transformed::of(w, o, c, variant);
    let bias = bias.map(contiguous);
    let bs = bias.as_ref().map(slice);
    let add = add.map(|(a, per_channel)| (contiguous(a), per_channel));
    let adds = add.as_ref().map(|(a, pc)| (slice(a), *pc));

    let tiles = h.div_ceil(mt) * wd.div_ceil(mt);
    let chunks = tiles.div_ceil(per_task);
    let mut out = Unfilled::new(n * o * h * wd);
    let out_ptr = out.ptr();
    (0..n * chunks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let (img, chunk) = (task / chunks, task % chunks);
            let t0 = chunk * per_task;
            let tb = per_task.min(tiles - t0);
            sc.v.resize(xis * c * tb, 0.0);
            sc.m.resize(xis * o * tb, 0.0);
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
            match variant {
                Variant::F2 => f2::input_transform(plane, pro, dims, t0, tb, rows, ring, &mut sc.v),
                Variant::F4 => f4::input_transform(plane, pro, dims, t0, tb, rows, ring, &mut sc.v),
            }
            for xi in 0..xis {
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
            sc.y.resize(mt * mt * tb, 0.0);
            let st = OutputStage {
                ohw: [o, h, wd],
                img,
                t0,
                tb,
                bias: bs,
                add: adds,
                out: out_ptr,
            };
            match variant {
                Variant::F2 => f2::output_stage(&sc.m, &mut sc.y, &st),
                Variant::F4 => f4::output_stage(&sc.m, &mut sc.y, &st),
            }
        });
    // SAFETY: the tasks cover every tile of every image, and each tile every output channel
    // and pixel of its block (cut at the edges).
    new_tensor(unsafe { out.filled() }, vec![n, o, h, wd])
}
