//! The Winograd kernel's output side: `Y = Aᵀ M A` per output channel, then bias and the fused
//! add as the rows are stored.

use super::super::SendPtr;
use super::input::tile_runs;

/// Where a task's products go. `M` holds output channels `o0..o0 + ob` (of `O`) for tiles
/// `t0..t0 + tb` of each of the images `img0..img0 + imgs`, the images' tiles side by side
/// (`M[ξ][oi][k·tb + t]`, `imgs·tb` columns); each goes to its `H`×`W` plane of the output
/// tensor's storage, plus bias `[O]` and the fused add (shaped as the output, or `[N·O]` when
/// per channel).
#[derive(Clone, Copy)]
pub(super) struct OutputStage<'a> {
    pub(super) ohw: [usize; 3],
    pub(super) o0: usize,
    pub(super) ob: usize,
    pub(super) img0: usize,
    pub(super) imgs: usize,
    pub(super) t0: usize,
    pub(super) tb: usize,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) add: Option<(&'a [f32], bool)>,
    pub(super) out: SendPtr,
}

impl OutputStage<'_> {
    /// What every pixel of output channel `oc` of image plane `ch` (= image·O + oc) gets added:
    /// its bias, and the add where that is per channel.
    #[inline]
    pub(super) fn bias_of(&self, oc: usize, ch: usize) -> f32 {
        let mut b = self.bias.map_or(0.0, |b| b[oc]);
        if let Some((a, true)) = self.add {
            b += a[ch];
        }
        b
    }

    /// The add when it is shaped as the output (a residual), else `None`.
    #[inline]
    pub(super) fn residual(&self) -> Option<&[f32]> {
        match self.add {
            Some((a, false)) => Some(a),
            _ => None,
        }
    }
}

/// A variant's output transform: `Y = Aᵀ M A` of row `oi` of `M` (`M[ξ][o][t]`, `o` rows per
/// position) for all `tb` columns into `y[(m·i + j)·tb + t]` for an m×m tile.
pub(super) trait OutputTransform {
    /// (A trait, not a closure or fn pointer: those were not inlined into the SIMD caller
    /// and ran as SSE code, 10% of a bf16 64×64 convolution.)
    fn apply(m: &[f32], o: usize, oi: usize, tb: usize, y: &mut [f32]);
}

/// The output stage with m×m tiles (`M` = m): per output channel, `T` makes `Y` (`y` holds
/// M²·imgs·tb values), then bias and add go on as the rows are stored.
#[inline(always)]
pub(super) fn output_stage_with<T: OutputTransform, const M: usize>(
    m: &[f32],
    y: &mut [f32],
    st: &OutputStage<'_>,
) {
    let OutputStage {
        ohw: [o, h, wd],
        o0,
        ob,
        img0,
        imgs,
        t0,
        tb,
        out,
        ..
    } = *st;
    let tw = wd.div_ceil(M);
    let width = imgs * tb;
    let residual = st.residual();
    for oi in 0..ob {
        let oc = o0 + oi;
        T::apply(m, ob, oi, width, y);
        for k in 0..imgs {
            let ch = (img0 + k) * o + oc;
            let b = st.bias_of(oc, ch);
            // A tile row's run of tiles at a time: M output rows, left to right, so the
            // stores vectorise (per tile, finding the row and column took two integer
            // divisions).
            for (t, ty, tx0, run) in tile_runs(t0, tb, tw) {
                for i in 0..M {
                    let yy = M * ty + i;
                    if yy >= h {
                        break;
                    }
                    // Columns M·tx0 .. M·(tx0 + run) of the row, the last tile cut off where
                    // the width is not a multiple of M.
                    let start = (ch * h + yy) * wd + M * tx0;
                    let len = (M * run).min(wd - M * tx0);
                    // SAFETY: tasks hold disjoint (image, channel, tile) sets, so each output
                    // pixel is written by exactly one task, and the columns are inside the row.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(start), len) };
                    let cols: [&[f32]; M] =
                        std::array::from_fn(|j| &y[(M * i + j) * width + k * tb + t..][..run]);
                    match residual {
                        Some(a) => {
                            let a = &a[start..start + len];
                            for (q, (d, a)) in dst.chunks_mut(M).zip(a.chunks(M)).enumerate() {
                                for (j, (d, &a)) in d.iter_mut().zip(a).enumerate() {
                                    *d = cols[j][q] + b + a;
                                }
                            }
                        }
                        None => {
                            for (q, d) in dst.chunks_mut(M).enumerate() {
                                for (j, d) in d.iter_mut().enumerate() {
                                    *d = cols[j][q] + b + 0.0;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
