//! The Winograd convolution for small planes (16×16 and 8×8: SD's 1280-channel levels), by
//! blocks of output channels: first `V` for every tile of every image, then each task makes
//! the `U` of its block of output channels, a piece of input channels at a time, multiplies
//! each piece by those rows of `V` while it is still in the core's cache, and writes its
//! channels' outputs.
//!
//! There are few tiles and many weights on these planes: the tile-parallel kernel
//! ([`super::conv3x3`]) wrote the whole `U` (105 MB at 1280 channels with F(2×2)) to memory on
//! every call and each task read it back, so streaming `U` set its pace. Here `U` stays in
//! cache; `V`, 16 or 36 rows of `C × tiles` (under 6 MB), is what every task re-reads.

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::super::{Epilogue, Product, Unfilled, contiguous, narrow, new_tensor, slice};
use super::output::OutputStage;
use super::weights::transform_block;
use super::{Prologue, Scratch, Variant};

/// A block task's scratch: its channels' `U` and `M`, the gathered taps of one channel, and
/// one channel's outputs `Y` for every tile.
#[derive(Default)]
struct BlockScratch {
    u: Vec<f32>,
    m: Vec<f32>,
    taps: Vec<f32>,
    y: Vec<f32>,
}

/// [`super::conv3x3`]'s contract, computed by output-channel blocks with `variant`'s tiles.
/// The weight is f32 or f16 (widened as its taps are gathered).
pub(super) fn conv3x3(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    add: Option<(&FlexTensor, bool)>,
    pro: Prologue<'_>,
    variant: Variant,
) -> FlexTensor {
    let s = x.layout().shape();
    let (n, c, in_plane) = (s[0], s[1], s[2] * s[3]);
    let (h, wd) = pro.plane(s[2], s[3]);
    let o = w.layout().shape()[0];
    let (mt, xis, per_task) = (variant.m(), variant.positions(), variant.tiles_per_task());
    let x = contiguous(x);
    let xs = slice(&x);
    let tiles = h.div_ceil(mt) * wd.div_ceil(mt);
    // V[ξ][c][k·tiles + t]: every image's tiles side by side, so one GEMM per position covers
    // the batch.
    let cols = n * tiles;
    let mut v = Unfilled::new(xis * c * cols);
    let v_ptr = v.ptr();
    let chunks = tiles.div_ceil(per_task);
    (0..n * chunks)
        .into_par_iter()
        .for_each_init(Scratch::default, |sc, task| {
            let v_ptr = v_ptr;
            let (img, chunk) = (task / chunks, task % chunks);
            let t0 = chunk * per_task;
            let tb = per_task.min(tiles - t0);
            sc.input(variant, xs, pro, [c, h, wd, in_plane], img, [t0, tb]);
            for (r, src) in sc.v.chunks_exact(tb).enumerate() {
                // SAFETY: row r of V, columns img·tiles + t0.. (tb of them): tasks hold
                // disjoint (image, tile) ranges, inside the row.
                unsafe {
                    let dst = v_ptr.0.add(r * cols + img * tiles + t0);
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst, tb);
                }
            }
        });
    // SAFETY: the tasks cover every (image, tile) column of every row.
    let v = unsafe { v.filled() };

    let epilogue = Epilogue::new(bias, add);
    let (bs, adds) = (epilogue.bias(), epilogue.add());
    let ob = block_channels(o);
    let cb = piece_channels(xis, ob, c);
    let mut out = Unfilled::new(n * o * h * wd);
    let out_ptr = out.ptr();
    let taps_of =
        |taps: &[f32], c: usize, out: &mut [&mut [f32]]| variant.transform_taps(taps, c, out);
    // Each thread a run of blocks, so its scratch is made once per call, not per block (made
    // and zeroed per block, it was ~9% of an 8×8 convolution's samples); it is freed when the
    // call ends (kept per thread, it pinned memory the VAE decode then could not
    // reuse: +28 MiB of peak RSS for an SD image).
    let blocks = o.div_ceil(ob);
    let per_thread = blocks.div_ceil(rayon::current_num_threads());
    (0..blocks)
        .into_par_iter()
        .with_min_len(per_thread)
        .for_each_init(BlockScratch::default, |sc, blk| {
            let o0 = blk * ob;
            let obn = ob.min(o - o0);
            sc.m.resize(xis * obn * cols, 0.0);
            // By pieces of the input channels, each piece's U (about 1.2 MB) still in this
            // core's cache when the GEMMs read it; the products add up in M.
            for c0 in (0..c).step_by(cb) {
                let cl = cb.min(c - c0);
                // Rows of cl + 16 values: with a power-of-two stride (cl = 128 or 256) every
                // eighth or fourth row would fall on the same cache set.
                let ld = cl + 16;
                let (taps, u) = (&mut sc.taps, &mut sc.u);
                transform_block(w, [o0, obn], c0..c0 + cl, [xis, ld], taps_of, taps, u);
                for xi in 0..xis {
                    // SAFETY: M_ξ is obn×cols row-major, the piece's U_ξ obn×cl with rows
                    // xis·ld apart (of its first obn·xis·ld values), V_ξ C×cols row-major
                    // (rows c0.. of it).
                    unsafe {
                        let p = Product {
                            mnk: [obn, cols, cl],
                            dst: sc.m.as_mut_ptr().add(xi * obn * cols),
                            dst_rs: cols,
                            accumulate: c0 > 0,
                            scale: 1.0,
                        };
                        let lhs = narrow::Lhs::Rows(sc.u.as_ptr().add(xi * ld), xis * ld);
                        let rhs = (v.as_ptr().add((xi * c + c0) * cols), cols);
                        narrow::product(p, lhs, rhs);
                    }
                }
            }
            sc.y.resize(mt * mt * cols, 0.0);
            let st = OutputStage {
                ohw: [o, h, wd],
                o0,
                ob: obn,
                img0: 0,
                imgs: n,
                t0: 0,
                tb: tiles,
                bias: bs,
                add: adds,
                out: out_ptr,
            };
            variant.output_stage(&sc.m, &mut sc.y, &st);
        });
    // SAFETY: the blocks cover every output channel, each writing every pixel of every image.
    new_tensor(unsafe { out.filled() }, vec![n, o, h, wd])
}

/// Output channels per task: 64, fewer where that leaves under four tasks per thread.
fn block_channels(o: usize) -> usize {
    let want = 4 * rayon::current_num_threads();
    let mut b = 64;
    while o.div_ceil(b) < want && b > 16 {
        b /= 2;
    }
    b
}

/// Input channels per piece of a block's `U`: about 1.2 MB of it (288 at F2, 128 at F4 for 64
/// output channels), so it stays in a core's L2 between its transform and its GEMMs (1280
/// channels at 16×16 with F4, f16 weights: 30.3 ms in 256-channel pieces, 27.5 in 128).
fn piece_channels(positions: usize, ob: usize, c: usize) -> usize {
    const PIECE_BYTES: usize = 1200 << 10;
    let cb = PIECE_BYTES / (4 * positions * ob) / 16 * 16;
    cb.clamp(16, c.max(16))
}
