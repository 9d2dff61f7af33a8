//! The AMX micro-kernel: `tdpbf16ps` multiplies a 12×32 bf16 tile of A by a 32×16 tile of B
//! (as k-pairs) into a 12×16 f32 tile in one instruction, where `vdpbf16ps` does 16 columns × 2
//! k of one row. On Intel Xeons with AMX-BF16, whose `vdpbf16ps` is slower than their f32 FMA
//! (kernel bench, 2 Xeon cores: Linear 320→320 [8192] 195 GFLOP/s in bf16 against 318 in f32),
//! this is what makes `--precision bf16` worth having there.
//!
//! It reads the same packed strips as [`super::kernel`] (A: per row, k-pairs as u32; B: per
//! k-pair, 32 columns of pairs, i.e. AMX's VNNI layout), with one difference: a packed block's
//! k-pairs are padded with zeros to a multiple of 16 ([`super::kc_pairs`]), a tile's depth.
//! Two A strips by one B strip (four accumulator tiles) per call, so each loaded tile is used
//! twice.
//!
//! The instructions are written with `asm!` (Rust's AMX intrinsics are unstable). Tile
//! registers are only touched inside one `asm!` block: zeroed (or loaded from a whole output
//! window), accumulated, stored.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;

use super::{MR, kernel};

/// A whole window of [`window`] and [`conv_window`]: two A tiles of `MR` rows by two B tiles
/// of 16 columns (and 32 bf16 values, 16 pairs, of k per step).
pub(in crate::nn::cpu) const WINDOW_ROWS: usize = 2 * MR;
pub(in crate::nn::cpu) const WINDOW_COLS: usize = 32;

/// Tile configuration (palette 1): tiles 0–3 accumulators (`MR` rows × 16 f32), 4–5 A
/// (`MR` rows × 16 k-pairs), 6–7 B (16 k-pairs × 16 columns of pairs); 64 bytes per row.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            // colsb[t] (u16 at 16 + 2t), rows[t] (u8 at 48 + t)
            c[16 + 2 * t] = 64;
            c[48 + t] = if t >= 6 { 16 } else { MR as u8 };
        }
        Self(c)
    }
}

/// Whether this process may run [`kernel`]: the CPU has AMX-BF16 (and the AVX512-BF16 the
/// packing uses), Linux granted this process the tile state, and `KILN_AMX` is not `off`
/// (read once: the packed layouts depend on it, so it never changes within a process).
pub(in crate::nn::cpu) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var("KILN_AMX").is_ok_and(|v| v == "off" || v == "0") {
            return false;
        }
        // CPUID leaf 7 (present on every CPU with AVX-512, checked first): EDX bit 22
        // AMX-BF16, bit 24 AMX-TILE.
        let has = super::kernel::available() && {
            let r = __cpuid_count(7, 0);
            r.edx & (1 << 22) != 0 && r.edx & (1 << 24) != 0
        };
        has && granted()
    })
}

/// Linux hands out the large tile state only on request (`ARCH_REQ_XCOMP_PERM` for
/// `XFEATURE_XTILEDATA`, process-wide); without it the first tile instruction is killed.
#[cfg(target_os = "linux")]
fn granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        tracing::debug!("AMX present but not granted by the kernel: bf16 GEMMs use AVX512-BF16");
    }
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn granted() -> bool {
    false
}

/// The k loop of both kernels, `{n}` steps of 16 pairs: the A strips' tiles into tmm4/tmm5, the
/// B strip's two halves into tmm6/tmm7, their four products added into tmm0–3.
macro_rules! k_steps {
    () => {
        concat!(
            "2:\n",
            "tileloadd tmm4, [{a0} + {sa}*1]\n",
            "tileloadd tmm6, [{b} + {sb}*1]\n",
            "tileloadd tmm7, [{b} + {sb}*1 + 64]\n",
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm4, tmm7\n",
            "tileloadd tmm5, [{a1} + {sa}*1]\n",
            "tdpbf16ps tmm2, tmm5, tmm6\n",
            "tdpbf16ps tmm3, tmm5, tmm7\n",
            "add {a0}, 64\n",
            "add {a1}, 64\n",
            "add {b}, 2048\n",
            "dec {n}\n",
            "jnz 2b",
        )
    };
}

thread_local! {
    /// Whether `ldtilecfg` has run on this thread (every call uses the same configuration).
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads this thread's tile configuration unless done already (every call uses the same).
///
/// # Safety
/// [`available`].
unsafe fn configure() {
    if !CONFIGURED.get() {
        let cfg = TileConfig::new();
        // SAFETY: a valid palette-1 configuration; this thread was granted the tile state.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        CONFIGURED.set(true);
    }
}

/// One tap of a [`conv_window`]: its two A strips (rows of weights, `MR` each) and its B
/// rows (the input's channel pairs at the tap's shift).
#[repr(C)]
pub(in crate::nn::cpu) struct Tap {
    pub a: [*const u16; 2],
    pub b: *const u16,
}

/// A [`conv_window`]'s operands: the taps of a 3×3 kernel (or the first of them), and where the window goes
/// (`dst`, rows `rs` bytes apart), read by the kernel from memory (its registers are taken).
#[repr(C)]
pub(in crate::nn::cpu) struct Window {
    pub taps: [Tap; 9],
    pub dst: *mut f32,
    pub rs: usize,
}

/// A whole 2·`MR` × 32 window of a convolution, `dst = Σ_steps Σ_taps a·b` (overwritten):
/// `steps` k-steps of 16 channel pairs, each through the first `taps` (1 to 9); A rows `sa`
/// bytes apart advancing 64 bytes a step, B pair-rows `sb` bytes apart (columns 0–15 at `b`,
/// 16–31 at `b + 64`) advancing 16 pair-rows a step. The accumulators stay in the tiles
/// through every step and tap and are stored once, where one GEMM per tap loaded and stored
/// them per tap and k block (27 times at 640 channels) and packed its B operand from the
/// input each time. Taps inside steps: the three taps of a kernel row read B tiles one
/// column apart, so the second and third find the first's lines in L1.
///
/// # Safety
/// [`available`]; `steps > 0`; every tap's A strips have `MR` rows of `32·steps` readable
/// bf16 (`sa` bytes apart), its B `16·steps` pair-rows of 32 readable pairs (`sb` bytes
/// apart); `dst` rows `0..2·MR` (`rs` bytes apart) have 32 writable f32.
#[target_feature(enable = "avx512f")]
pub(in crate::nn::cpu) unsafe fn conv_window(
    w: &Window,
    taps: usize,
    steps: usize,
    [sa, sb]: [usize; 2],
) {
    // The offsets the assembly below reads (`[{w} + 216]`, `[{t} + 24·i]`) and its `imul 12`.
    const _: () = assert!(
        MR == 12
            && size_of::<Tap>() == 24
            && std::mem::offset_of!(Window, dst) == 216
            && std::mem::offset_of!(Window, rs) == 224
    );
    debug_assert!(steps > 0 && (1..=9).contains(&taps));
    // SAFETY: the caller checked `available`; the loads stay inside the taps' operands as the
    // caller promises, the stores inside dst's window.
    unsafe {
        configure();
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "xor {oa:e}, {oa:e}",
            "xor {ob:e}, {ob:e}",
            "2:",
            "mov {t}, {w}",
            "3:",
            "mov {a0}, [{t}]",
            "add {a0}, {oa}",
            "mov {a1}, [{t} + 8]",
            "add {a1}, {oa}",
            "mov {b}, [{t} + 16]",
            "add {b}, {ob}",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm6, [{b} + {sb}*1]",
            "tileloadd tmm7, [{b} + {sb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {t}, 24",
            "cmp {t}, {tend}",
            "jne 3b",
            "add {oa}, 64",
            "add {ob}, {bstep}",
            "dec {n}",
            "jnz 2b",
            // dst and its row stride follow the taps; the second strip's rows start MR down.
            "mov {a0}, [{w} + 216]",
            "mov {a1}, [{w} + 224]",
            "tilestored [{a0} + {a1}*1], tmm0",
            "tilestored [{a0} + {a1}*1 + 64], tmm1",
            "imul {b}, {a1}, 12",
            "add {a0}, {b}",
            "tilestored [{a0} + {a1}*1], tmm2",
            "tilestored [{a0} + {a1}*1 + 64], tmm3",
            w = in(reg) w as *const Window,
            tend = in(reg) w.taps.as_ptr().add(taps),
            t = out(reg) _,
            oa = out(reg) _,
            ob = out(reg) _,
            n = inout(reg) steps => _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            b = out(reg) _,
            sa = in(reg) sa,
            sb = in(reg) sb,
            bstep = in(reg) 16 * sb,
            options(nostack),
        );
    }
}

/// `dst[i][j] = scale · Σ_p a·b (+ dst[i][j] if load)` for rows `i < mr[0]` of A strip `a[0]`
/// then `i < mr[1]` of `a[1]` (`mr[1] == 0`: one strip), `j < nr` of the B strip `b`, over
/// `kc2` k-pairs (a multiple of 16). Row `i` of the second strip is `dst` row `MR + i`.
///
/// # Safety
/// [`available`]; each A strip holds `MR` rows of `kc2` u32, `b` holds `kc2 · 64` u16; `dst`
/// rows `0..MR + mr[1]` (stride `dst_rs`) have `nr ≤ 32` writable values each.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
    kc2: usize,
    a: [*const u32; 2],
    b: *const u16,
    dst: *mut f32,
    dst_rs: usize,
    mr: [usize; 2],
    nr: usize,
    load: bool,
    scale: f32,
) {
    debug_assert!(kc2.is_multiple_of(16) && kc2 > 0);
    // SAFETY: the caller checked `available`.
    unsafe { configure() };
    if mr == [MR, MR] && nr == 32 && scale == 1.0 {
        // SAFETY: forwarded; the window is whole; a strip's rows are kc2 pairs apart.
        unsafe { window(kc2, a.map(|p| p.cast()), kc2 * 4, b, dst, dst_rs, load) };
        return;
    }
    // The second strip's rows go to accumulators 2–3; with one strip they repeat the first
    // (computed, not stored).
    let a1 = if mr[1] > 0 { a[1] } else { a[0] };
    let mut c = [0f32; 2 * MR * 32];
    // SAFETY: every tile load reads 16 pairs (64 bytes) of MR rows of an A strip, or 16
    // pair-rows of 128 bytes of the B strip, inside the strips for the `kc2 / 16` steps;
    // the stores write `c`'s 2·MR rows of 32 f32.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            k_steps!(),
            "tilestored [{c} + {sc}*1], tmm0",
            "tilestored [{c} + {sc}*1 + 64], tmm1",
            "tilestored [{c1} + {sc}*1], tmm2",
            "tilestored [{c1} + {sc}*1 + 64], tmm3",
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a1 => _,
            b = inout(reg) b => _,
            n = inout(reg) kc2 / 16 => _,
            sa = in(reg) kc2 * 4,
            sb = in(reg) 128usize,
            c = in(reg) c.as_mut_ptr(),
            c1 = in(reg) c.as_mut_ptr().add(MR * 32),
            sc = in(reg) 128usize,
            options(nostack),
        );
    }
    let (masks, s) = (kernel::column_masks(nr), _mm512_set1_ps(scale));
    for i in (0..mr[0]).chain(MR..MR + mr[1]) {
        // SAFETY: row i of dst has nr writable values (masked); c row i has 32.
        unsafe {
            let row = c.as_ptr().add(i * 32);
            let v = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))];
            kernel::store_row(dst.add(i * dst_rs), v, masks, s, load);
        }
    }
}

/// [`kernel`] for a whole 2·`MR` × 32 window at scale 1, `dst = Σ a·b (+ dst if load)`: the
/// accumulator tiles start from `dst` (or zero) and are stored back to it, with no pass of
/// vector loads, adds and stores through a scratch copy (that epilogue's adds were a fifth of
/// the kernel's samples, waiting on the tile stores). Kernel bench, 2 Xeon cores, medians of 4
/// alternated pairs: conv3x3 bf16 320 at 64×64 13.3 -> 12.6 ms, 1280 at 16×16 15.1 -> 14.0
/// ms, Linear 640→5120 [2048] 11.0 -> 10.2 ms, 5120→1280 [512] 7.0 -> 6.3 ms; an SD UNet step
/// within its noise (±3%).
///
/// A's rows are `sa` bytes apart from `a[0]` (rows `0..MR`) and `a[1]` (rows `MR..2·MR`): a
/// packed strip's (`kc2 · 4`), or rows of bf16 k-pairs read in place (attention's queries and
/// probabilities, written row by row as bf16 where they are made).
///
/// # Safety
/// [`available`]; `kc2` a positive multiple of 16; each A row has `kc2` readable pairs, `b`
/// (a B strip as [`kernel`]'s) `kc2 · 64` u16; `dst` rows `0..2·MR` (stride `dst_rs`) have 32
/// writable (and, if `load`, readable) f32.
#[target_feature(enable = "avx512f")]
pub(in crate::nn::cpu) unsafe fn window(
    kc2: usize,
    a: [*const u16; 2],
    sa: usize,
    b: *const u16,
    dst: *mut f32,
    dst_rs: usize,
    load: bool,
) {
    debug_assert!(kc2.is_multiple_of(16) && kc2 > 0);
    // SAFETY: the caller checked `available`.
    unsafe { configure() };
    // SAFETY: tile loads read 16 pairs of MR rows of each A strip or 16 pair-rows of the B
    // strip for the `kc2 / 16` steps; the accumulators load and store the 2·MR × 32 window of
    // dst (rows dst_rs apart), which the caller owns.
    unsafe {
        asm!(
            "test {load:e}, {load:e}",
            "jz 3f",
            "tileloadd tmm0, [{d0} + {sd}*1]",
            "tileloadd tmm1, [{d0} + {sd}*1 + 64]",
            "tileloadd tmm2, [{d1} + {sd}*1]",
            "tileloadd tmm3, [{d1} + {sd}*1 + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            k_steps!(),
            "tilestored [{d0} + {sd}*1], tmm0",
            "tilestored [{d0} + {sd}*1 + 64], tmm1",
            "tilestored [{d1} + {sd}*1], tmm2",
            "tilestored [{d1} + {sd}*1 + 64], tmm3",
            load = in(reg) load as u32,
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a[1] => _,
            b = inout(reg) b => _,
            n = inout(reg) kc2 / 16 => _,
            sa = in(reg) sa,
            sb = in(reg) 128usize,
            d0 = in(reg) dst,
            d1 = in(reg) dst.add(MR * dst_rs),
            sd = in(reg) dst_rs * 4,
            options(nostack),
        );
    }
}
