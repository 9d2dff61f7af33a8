//! GEGLU, GELU·mul, QuickGELU, Linear+bias, transposes and channel concatenation as single
//! parallel passes over contiguous rows (the norms are in `norms.rs`).

use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{
    Mat, PackedA, Product, Unfilled, contiguous, dims, gemm, mat, math, new_tensor, simd_dispatch,
    slice, widened_once,
};

/// Output tile of one Linear task: 256×256 f32 = 256 KiB, half a 512 KiB per-core L2.
const TILE_ROWS: usize = 256;
const TILE_COLS: usize = 256;

/// Rows per parallel task: enough work per task (~64k values) to amortise scheduling.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (65_536 / row_len.max(1)).max(1)
}

/// `value · gelu(gate)` element-wise (DALL·E's GLU), for two tensors of one shape.
pub(crate) fn gelu_mul(gate: &FlexTensor, value: &FlexTensor) -> Option<FlexTensor> {
    let (gate, value) = (contiguous(gate), contiguous(value));
    let shape = dims(&gate);
    if dims(&value) != shape {
        return None;
    }
    let (vs, gs) = (slice(&value), slice(&gate));
    let chunk = rows_per_task(1);
    // SAFETY: `gelu_mul_run` writes each value of its piece.
    let out = unsafe {
        Unfilled::par_chunks(gs.len(), chunk, |i, o| {
            gelu_mul_run(&vs[i * chunk..][..o.len()], &gs[i * chunk..][..o.len()], o)
        })
    };
    Some(new_tensor(out, shape))
}

simd_dispatch! {
    fn gelu_mul_run(value: &[f32], gate: &[f32], out: &mut [f32]) {
        geglu_pair(value, gate, out);
    }
}

#[inline(always)]
fn geglu_pair(value: &[f32], gate: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * math::gelu(g);
    }
}

simd_dispatch! {
    fn geglu_rows(h: &[f32], out: &mut [f32], inner: usize) {
        for (hr, or) in h.chunks_exact(2 * inner).zip(out.chunks_exact_mut(inner)) {
            let (value, gate) = hr.split_at(inner);
            geglu_pair(value, gate, or);
        }
    }
}

simd_dispatch! {
    /// Rows of `value` and `gate` tiles (row length `cols`) into `out` rows `out_rs` apart.
    fn geglu_tile(value: &[f32], gate: &[f32], out: *mut f32, out_rs: usize, cols: usize) {
        for (r, (v, g)) in value.chunks_exact(cols).zip(gate.chunks_exact(cols)).enumerate() {
            // SAFETY: the caller owns `cols` values at each of these rows of `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_rs), cols) };
            geglu_pair(v, g, o);
        }
    }
}

simd_dispatch! {
    fn quick_gelu_rows(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v / (1.0 + math::exp(-1.702 * v));
        }
    }
}

/// CLIP's `x · σ(1.702 x)`, in parallel (Burn's Flex runs it on one thread through libm).
pub(crate) fn quick_gelu(x: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let xs = slice(&x);
    const CHUNK: usize = 65_536;
    // SAFETY: `quick_gelu_rows` writes each value of its piece.
    let out = unsafe {
        Unfilled::par_chunks(xs.len(), CHUNK, |i, o| {
            quick_gelu_rows(&xs[i * CHUNK..][..o.len()], o)
        })
    };
    new_tensor(out, dims(&x))
}

/// GEGLU: `[…, 2I]` → `value · gelu(gate)` `[…, I]` (value first, as diffusers splits).
pub(crate) fn geglu(h: &FlexTensor) -> FlexTensor {
    let h = contiguous(h);
    let mut shape = dims(&h);
    let last = shape.len() - 1;
    let inner = shape[last] / 2;
    shape[last] = inner;
    let hs = slice(&h);
    let rows = rows_per_task(inner);
    // SAFETY: `geglu_rows` writes each value of its rows (pieces of whole rows: `h` holds
    // rows of 2·inner).
    let out = unsafe {
        Unfilled::par_chunks(hs.len() / 2, rows * inner, |i, o| {
            geglu_rows(&hs[i * rows * 2 * inner..][..2 * o.len()], o, inner)
        })
    };
    new_tensor(out, shape)
}

/// The output tiles of an `m×n` Linear, one parallel task each.
struct Tiles {
    m: usize,
    n: usize,
    tr: usize,
    tc: usize,
    nc: usize,
}

impl Tiles {
    fn new(m: usize, n: usize) -> Self {
        let tr = TILE_ROWS.min(m.max(1));
        // Few rows (CLIP's 77 tokens, a decoder step's 2): narrower column tiles, so every
        // thread gets several.
        let want_cols = (2 * rayon::current_num_threads()).div_ceil(m.div_ceil(tr));
        let tc = TILE_COLS
            .min(n.div_ceil(want_cols).next_multiple_of(16).max(64))
            .min(n.max(1));
        // Columns shared out evenly: 320 as 160 + 160, not 256 + 64, whose narrow tile ran at
        // a fraction of the GEMM rate.
        let tc = n
            .div_ceil(n.div_ceil(tc).max(1))
            .next_multiple_of(16)
            .min(n.max(1));
        let nc = n.div_ceil(tc);
        Self { m, n, tr, tc, nc }
    }

    fn count(&self) -> usize {
        self.m.div_ceil(self.tr) * self.nc
    }

    /// Rows `r0..r1` and columns `c0..c1` of tile `t`.
    fn get(&self, t: usize) -> [usize; 4] {
        let (r0, c0) = ((t / self.nc) * self.tr, (t % self.nc) * self.tc);
        [
            r0,
            (r0 + self.tr).min(self.m),
            c0,
            (c0 + self.tc).min(self.n),
        ]
    }
}

/// Rows `r0..r1` of `x` (`k` wide) as a tile's left operand. Where `bf16` (the weight operand
/// is bf16, so the GEMM takes its bf16 kernel) they are packed for that kernel once and kept in
/// `held` while the task goes on through the row tile's other column tiles (rayon hands a task
/// neighbouring tiles, which share rows): converted per GEMM, a GEGLU's rows were packed for
/// each of its 10 column tiles (a bf16 SD UNet step's Linears on AMX: 0.64 -> 0.54 s).
fn tile_rows(
    held: &mut Option<(usize, PackedA)>,
    bf16: bool,
    xs: &[f32],
    k: usize,
    [r0, r1]: [usize; 2],
) -> Mat {
    let x = Mat::F32(xs[r0 * k..].as_ptr(), 1, k as isize);
    if !bf16 {
        return x;
    }
    match held {
        Some((at, packed)) if *at == r0 => packed.mat(),
        _ => held.insert((r0, PackedA::new(x, r1 - r0, k))).1.mat(),
    }
}

/// Contiguous `x` `[…, K]` and `Wt` `[K, N]`, the shape of `x`, and `[M, K, N]`.
fn operands(x: &FlexTensor, wt: &FlexTensor) -> (FlexTensor, FlexTensor, Vec<usize>, [usize; 3]) {
    let (x, wt) = (contiguous(x), contiguous(wt));
    let shape = dims(&x);
    let k = shape[shape.len() - 1];
    let n = dims(&wt)[1];
    let m = x.layout().num_elements() / k.max(1);
    (x, wt, shape, [m, k, n])
}

/// GEGLU of a Linear, `value · gelu(gate)` where `[value | gate] = x Wt + b` and `Wt` is
/// `[K, 2I]`: each task computes the value and the gate tile of its `[rows, I]` output tile
/// into L2 scratch and writes their product, so the `2I`-wide projection (84 MB per UNet
/// feed-forward at 64×64) is never written out and read back.
pub(crate) fn linear_geglu(
    x: &FlexTensor,
    wt: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> FlexTensor {
    let (x, wt, mut shape, [m, k, n2]) = operands(x, wt);
    let wt = widened_once(&wt, m.div_ceil(TILE_ROWS)).unwrap_or(wt);
    let inner = n2 / 2;
    *shape.last_mut().expect("rank >= 1") = inner;
    let b = bias.map(contiguous);
    let bs = b.as_ref().map(slice);
    let (xs, ws) = (slice(&x), mat(&wt, 1, n2 as isize));
    let mut out = Unfilled::new(m * inner);
    let out_ptr = out.ptr();
    let tiles = Tiles::new(m, inner);
    let bf16 = matches!(ws, Mat::Bf16(..));
    (0..tiles.count()).into_par_iter().for_each_init(
        || (Vec::new(), None),
        |(scratch, held), t| {
            let out_ptr = out_ptr;
            let [r0, r1, c0, c1] = tiles.get(t);
            let (rows, cols) = (r1 - r0, c1 - c0);
            let x = tile_rows(held, bf16, xs, k, [r0, r1]);
            scratch.resize(2 * rows * cols, 0.0);
            let (value, gate) = scratch.split_at_mut(rows * cols);
            for (half, buf) in [(0, &mut *value), (inner, &mut *gate)] {
                if let Some(b) = bs {
                    for row in buf.chunks_exact_mut(cols) {
                        row.copy_from_slice(&b[half + c0..half + c1]);
                    }
                }
                // SAFETY: buf is rows×cols; `x` rows r0..r1 (stride k) and `wt` columns
                // half+c0..half+c1 (stride n2) are in bounds.
                unsafe {
                    let p = Product {
                        mnk: [rows, cols, k],
                        dst: buf.as_mut_ptr(),
                        dst_rs: cols,
                        accumulate: bs.is_some(),
                        scale: 1.0,
                    };
                    gemm(p, x, ws.at(0, half + c0));
                }
            }
            // SAFETY: this task alone owns columns c0..c1 of rows r0..r1 of `out`.
            geglu_tile(
                value,
                gate,
                unsafe { out_ptr.0.add(r0 * inner + c0) },
                inner,
                cols,
            );
        },
    );
    // SAFETY: the tiles cover the output, and `geglu_tile` writes each tile whole.
    new_tensor(unsafe { out.filled() }, shape)
}

/// `x Wt + b (+ r)` with `Wt` `[K, N]` contiguous, as parallel tiles of the output, each a
/// single-threaded GEMM: a tile first receives its bias (and residual `r`, shaped as the
/// output) and the GEMM accumulates onto it while it is still in L2, so neither the bias nor
/// the residual costs a pass over memory. On 2 cores this beats gemm's own threading by up
/// to 1.5x on the UNet's 320-wide projections.
pub(crate) fn linear(
    x: &FlexTensor,
    wt: &FlexTensor,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
) -> FlexTensor {
    let (x, wt, mut shape, [m, k, n]) = operands(x, wt);
    let wt = widened_once(&wt, m.div_ceil(TILE_ROWS)).unwrap_or(wt);
    *shape.last_mut().expect("rank >= 1") = n;
    let (b, r) = (bias.map(contiguous), residual.map(contiguous));
    let (bs, rs) = (b.as_ref().map(slice), r.as_ref().map(slice));
    let (xs, ws) = (slice(&x), mat(&wt, 1, n as isize));
    // A GEMM over k = 0 writes nothing: cleared then.
    let mut out = Unfilled::new(m * n);
    if k == 0 {
        out = Unfilled::zeroed(m * n);
    }
    let out_ptr = out.ptr();
    let tiles = Tiles::new(m, n);
    let bf16 = matches!(ws, Mat::Bf16(..)) && tiles.nc > 1;
    (0..tiles.count()).into_par_iter().for_each_init(
        || None,
        |held, t| {
            let out_ptr = out_ptr;
            let [r0, r1, c0, c1] = tiles.get(t);
            let x = tile_rows(held, bf16, xs, k, [r0, r1]);
            for row in r0..r1 {
                // SAFETY: this task alone owns columns c0..c1 of rows r0..r1 of `out`.
                let o =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * n + c0), c1 - c0) };
                match (bs, rs) {
                    (Some(b), Some(r)) => {
                        for ((o, &r), &b) in o
                            .iter_mut()
                            .zip(&r[row * n + c0..row * n + c1])
                            .zip(&b[c0..c1])
                        {
                            *o = r + b;
                        }
                    }
                    (Some(b), None) => o.copy_from_slice(&b[c0..c1]),
                    (None, Some(r)) => o.copy_from_slice(&r[row * n + c0..row * n + c1]),
                    (None, None) => {}
                }
            }
            // SAFETY: the tile is (r1-r0)×(c1-c0) inside `out` (row stride n); `x` rows r0..r1
            // (stride k) and `wt` columns c0..c1 (stride n) are in bounds.
            unsafe {
                let p = Product {
                    mnk: [r1 - r0, c1 - c0, k],
                    dst: out_ptr.0.add(r0 * n + c0),
                    dst_rs: n,
                    accumulate: bs.is_some() || rs.is_some(),
                    scale: 1.0,
                };
                gemm(p, x, ws.at(0, c0));
            }
        },
    );
    // SAFETY: the tiles cover the output, and each tile's GEMM (k > 0) writes all of it.
    new_tensor(unsafe { out.filled() }, shape)
}

/// `x` `[B, M, N]` → contiguous `[B, N, M]` (NCHW ↔ tokens), parallel over 64×64 tiles. Flex
/// makes a transposed view contiguous on one thread, element by element; in the UNet that
/// happened inside the first LayerNorm and the residual add of every transformer block.
pub(crate) fn transpose_last2(x: &FlexTensor) -> Option<FlexTensor> {
    const T: usize = 64;
    let shape = dims(x);
    let &[b, m, n] = shape.as_slice() else {
        return None;
    };
    let x = contiguous(x);
    let xs = slice(&x);
    let mut out = Unfilled::new(b * m * n);
    let out_ptr = out.ptr();
    let (tm, tn) = (m.div_ceil(T), n.div_ceil(T));
    (0..b * tm * tn).into_par_iter().for_each(|task| {
        let out_ptr = out_ptr;
        let (bi, rest) = (task / (tm * tn), task % (tm * tn));
        let (i0, j0) = ((rest / tn) * T, (rest % tn) * T);
        let src = &xs[bi * m * n..(bi + 1) * m * n];
        for j in j0..(j0 + T).min(n) {
            for i in i0..(i0 + T).min(m) {
                // SAFETY: this task alone writes rows j0..j0+T, columns i0..i0+T of image bi.
                unsafe { *out_ptr.0.add(bi * m * n + j * m + i) = src[i * n + j] };
            }
        }
    });
    // SAFETY: the tasks' tiles cover every (j, i) of every image.
    Some(new_tensor(unsafe { out.filled() }, vec![b, n, m]))
}

/// `[N, Ca, H, W]` and `[N, Cb, H, W]` f32 → `[N, Ca + Cb, H, W]` (the UNet's skip joins) in
/// parallel pieces; `None` for other shapes. Flex copies on the calling thread while the pool
/// waits: 0.5% of an SD step.
pub(crate) fn cat_channels(a: &FlexTensor, b: &FlexTensor) -> Option<FlexTensor> {
    let (da, db) = (dims(a), dims(b));
    let (&[n, ca, h, w], &[nb, cb, hb, wb]) = (da.as_slice(), db.as_slice()) else {
        return None;
    };
    if [n, h, w] != [nb, hb, wb] {
        return None;
    }
    let (a, b) = (contiguous(a), contiguous(b));
    let (sa, sb) = (slice(&a), slice(&b));
    let (la, lb) = (ca * h * w, cb * h * w);
    const CHUNK: usize = 65_536;
    let fill = |i: usize, piece: &mut [f32]| {
        // Output values p.. of image p / (la + lb): from `a`, then from `b`, in runs.
        let mut p = i * CHUNK;
        let mut rest = piece;
        while !rest.is_empty() {
            let (img, r) = (p / (la + lb), p % (la + lb));
            let src = if r < la {
                &sa[img * la + r..(img + 1) * la]
            } else {
                &sb[img * lb + r - la..(img + 1) * lb]
            };
            let len = src.len().min(rest.len());
            let (head, tail) = rest.split_at_mut(len);
            head.copy_from_slice(&src[..len]);
            rest = tail;
            p += len;
        }
    };
    // SAFETY: `fill` copies a value into each place of its piece.
    let out = unsafe { Unfilled::par_chunks(n * (la + lb), CHUNK, fill) };
    Some(new_tensor(out, vec![n, ca + cb, h, w]))
}
