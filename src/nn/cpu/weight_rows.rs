//! The weight rows the GEMV (`gemv`) and the many-row GEMM (`gemm_nt`) read: `W` `[N, K]` in
//! PyTorch's layout, f32 or f16 as the checkpoint stores it, and how their parallel loops split
//! them into tasks. Shared by both kernels (`gemv` hands more than `GEMV_MAX_ROWS` rows to
//! `gemm_nt`), so neither imports the other's internals.

use super::Widen;

/// The weights of one task, rows `j0..j1` of W.
#[derive(Clone, Copy)]
pub(super) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl<'a> Rows<'a> {
    /// Rows of `k` weights held.
    pub(super) fn count(self, k: usize) -> usize {
        match self {
            Rows::F32(w) => w.len() / k,
            Rows::F16(w) => w.len() / k,
        }
    }

    /// Row `j` widened into `dst` (`k` long).
    pub(super) fn widen_row(self, k: usize, j: usize, dst: &mut [f32]) {
        match self {
            Rows::F32(w) => dst.copy_from_slice(&w[j * k..(j + 1) * k]),
            Rows::F16(w) => half::f16::widen(&w[j * k..(j + 1) * k], dst),
        }
    }

    /// Weight `i` of row `j`, widened.
    #[inline(always)]
    pub(super) fn at(self, k: usize, j: usize, i: usize) -> f32 {
        match self {
            Rows::F32(w) => w[j * k + i],
            Rows::F16(w) => w[j * k + i].to_f32(),
        }
    }

    /// Rows `j0..j1`.
    pub(super) fn rows(self, k: usize, j0: usize, j1: usize) -> Self {
        match self {
            Rows::F32(w) => Rows::F32(&w[j0 * k..j1 * k]),
            Rows::F16(w) => Rows::F16(&w[j0 * k..j1 * k]),
        }
    }
}

/// The parallel tasks over several weights: `(weight, first row)` for every block of `per`
/// rows (W rows = output features) of each.
pub(super) fn row_blocks(
    jobs: &[(Rows<'_>, Option<&[f32]>, usize)],
    per: usize,
) -> Vec<(usize, usize)> {
    jobs.iter()
        .enumerate()
        .flat_map(|(i, &(_, _, n))| (0..n).step_by(per).map(move |j0| (i, j0)))
        .collect()
}
