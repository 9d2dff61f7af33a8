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
//! large planes; on small ones, where every task would stream all of `U`, tasks take blocks of
//! output channels instead and make their part of `U` in cache ([`Kernel`], [`blocked`]).

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

mod blocked;
mod f2;
mod f4;
#[cfg(target_arch = "x86_64")]
mod f4_x86;
mod input;
mod output;
mod weights;
#[cfg(target_arch = "x86_64")]
mod weights_x86;

pub(crate) use input::Prologue;
use output::{OutputStage, OutputTransform, output_stage_with};
use weights::{transform_weights, transform_weights_packed};

use super::{
    Epilogue, Mat, PackedA, Product, Unfilled, contiguous, gemm, new_tensor, resize_unfilled, slice,
};

/// The two tile sizes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    F2,
    F4,
}

/// How a plane is computed: its tiles, and whether tasks take tiles (all output channels
/// of some tiles, `U` made whole first) or blocks of output channels (all tiles of a few
/// channels, each block's `U` made by its task: [`blocked`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Tiles(Variant),
    Blocks(Variant),
}

impl Kernel {
    /// The kernel for an `h`×`w` output, `None` where the shifted GEMMs of `conv_same` are
    /// faster. Kernel bench, SD's 3×3 convolutions at batch 2, f32 / f16 weights, 2 Xeon
    /// cores, medians of alternated runs:
    /// - from 32×32, F4 by tiles (640 at 32×32: 43 -> 29 ms against direct; 320 at 64×64:
    ///   39 -> 26 ms); by blocks there, each task re-reads a `V` of up to 12 MB: 19.3 -> 21.5
    ///   ms at 32×32.
    /// - from 16×16, F4 by blocks: 1280 at 16×16 30.5 / 29.1 ms with F2 by tiles (whose
    ///   105 MB `U` went out to memory and back), 28.2 / 27.5.
    /// - from 8×8, F2 by blocks where the batch has 32 tiles or more: 1280 at 8×8, batch 2,
    ///   16.9 / 20.3 ms direct, 13.5 / 12.6 (f16 weights read at half the bytes). At batch 1
    ///   (16 tiles) the weight transform is paid for half the products: 9.0–10.2 ms direct,
    ///   12.6–13.4 by blocks. (F4 by blocks at 16×16 still wins at batch 1: 39 -> 23 ms.)
    ///
    /// A bf16 weight takes F2 by tiles from 32×32: its direct GEMMs run at twice the rate
    /// while the transform costs the same (16×16: 52 ms against 46), and F4's transforms
    /// would scale the bf16 rounding of the transformed operands by up to 8. (On AMX CPUs
    /// `conv_amx` takes bf16 3×3 convolutions before this is asked.)
    fn of(n: usize, h: usize, w: usize, bf16: bool) -> Option<Self> {
        let plane = h * w;
        let f2_tiles = n * h.div_ceil(2) * w.div_ceil(2);
        match bf16 {
            true if plane >= 32 * 32 => Some(Self::Tiles(Variant::F2)),
            false if plane >= 32 * 32 => Some(Self::Tiles(Variant::F4)),
            false if plane >= 16 * 16 => Some(Self::Blocks(Variant::F4)),
            false if plane >= 8 * 8 && f2_tiles >= 32 => Some(Self::Blocks(Variant::F2)),
            _ => None,
        }
    }
}

impl Variant {
    /// This variant's input transform (`f2::input_transform` or `f4::input_transform`).
    #[allow(clippy::too_many_arguments)]
    fn input_transform(
        self,
        plane: &[f32],
        pro: Prologue<'_>,
        chw: [usize; 3],
        [t0, tb]: [usize; 2],
        rows: &mut Vec<f32>,
        ring: &mut Vec<f32>,
        v: &mut [f32],
    ) {
        match self {
            Self::F2 => f2::input_transform(plane, pro, chw, t0, tb, rows, ring, v),
            Self::F4 => f4::input_transform(plane, pro, chw, t0, tb, rows, ring, v),
        }
    }

    /// This variant's weight transform of one output channel's taps ([`weights`]).
    fn transform_taps(self, taps: &[f32], c: usize, out: &mut [&mut [f32]]) {
        match self {
            Self::F2 => f2::transform_taps(taps, c, out),
            Self::F4 => f4::transform_taps(taps, c, out),
        }
    }

    /// This variant's output stage ([`output::output_stage_with`]).
    fn output_stage(self, m: &[f32], y: &mut [f32], st: &OutputStage<'_>) {
        match self {
            Self::F2 => f2::output_stage(m, y, st),
            Self::F4 => f4::output_stage(m, y, st),
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

/// Whether the Winograd kernel beats `conv_same` for `n` `h`×`w` output planes.
pub(crate) fn worth_it(n: usize, h: usize, w: usize, bf16: bool) -> bool {
    Kernel::of(n, h, w, bf16).is_some()
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
        let taps_of =
            |taps: &[f32], c: usize, out: &mut [&mut [f32]]| v.transform_taps(taps, c, out);
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

impl Scratch {
    /// `V` (`[ξ][c][tb]`) of tiles `t0..t0 + tb` of image `img` of the batch `xs` (`C`
    /// channels of `in_plane` values each, read through `pro`, for an `h`×`w` output) into
    /// `self.v`.
    fn input(
        &mut self,
        variant: Variant,
        xs: &[f32],
        pro: Prologue<'_>,
        [c, h, w, in_plane]: [usize; 4],
        img: usize,
        [t0, tb]: [usize; 2],
    ) {
        let len = variant.positions() * c * tb;
        // SAFETY: the input transform writes every value (each position ξ, channel and tile)
        // before anything reads them. Resized with zeros, a task's fresh scratch was cleared
        // first: 0.6% of an SD step's samples.
        unsafe { resize_unfilled(&mut self.v, len) };
        let plane = &xs[img * c * in_plane..(img + 1) * c * in_plane];
        let (rows, ring) = (&mut self.rows, &mut self.ring);
        let pro = pro.for_image(img, c);
        variant.input_transform(plane, pro, [c, h, w], [t0, tb], rows, ring, &mut self.v);
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
    let variant = match Kernel::of(n, h, wd, w.dtype() == DType::BF16) {
        Some(Kernel::Blocks(v)) => return blocked::conv3x3(x, w, bias, add, pro, v),
        Some(Kernel::Tiles(v)) => v,
        None => Variant::F2,
    };
    let (mt, xis, per_task) = (variant.m(), variant.positions(), variant.tiles_per_task());
    let x = contiguous(x);
    let xs = slice(&x);
    let u = Transformed::of(w, o, c, variant);
    let epilogue = Epilogue::new(bias, add);
    let (bs, adds) = (epilogue.bias(), epilogue.add());

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
            sc.input(variant, xs, pro, [c, h, wd, in_plane], img, [t0, tb]);
            sc.m.resize(xis * o * tb, 0.0);
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
                o0: 0,
                ob: o,
                img0: img,
                imgs: 1,
                t0,
                tb,
                bias: bs,
                add: adds,
                out: out_ptr,
            };
            variant.output_stage(&sc.m, &mut sc.y, &st);
        });
    // SAFETY: the tasks cover every tile of every image, and each tile every output channel
    // and pixel of its block (cut at the edges).
    new_tensor(unsafe { out.filled() }, vec![n, o, h, wd])
}
