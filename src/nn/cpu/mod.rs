//! Fused, multi-threaded f32 kernels for the CPU (Flex) backend.
//!
//! Flex runs element-wise ops on one thread with scalar `libm` math and its attention on one
//! thread too; in the UNet that left half of a step single-threaded. The layers in `nn` call
//! these kernels when the backend is Flex and the tensor is f32, and fall back to plain Burn
//! ops everywhere else (wgpu, cuda, f16), so model code stays generic over `B: Backend`.
//!
//! Each kernel does the same arithmetic as the Burn-op path (statistics accumulate in f64
//! lanes, `exp`/`erf` are ~1 ulp / 1.5e-7 polynomials); the parity tests run through them.

mod attention;
mod attention_amx;
mod attention_kq;
mod attention_one;
mod bf16;
mod conv;
mod conv_amx;
mod gemm_nt;
mod gemv;
mod math;
mod narrow;
mod norms;
mod operand;
mod rows;
mod team;
mod weight_rows;
mod winograd;

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};

pub(crate) use attention::attention;
pub(crate) use attention_one::attention_one;
pub(crate) use bf16::PackedA;
pub(crate) use conv::{Input, conv_same, conv_stride2, conv3x3_of};
pub(crate) use gemv::gemv_many;
pub(crate) use norms::{group_norm, layer_norm};
pub(crate) use operand::{GEMM_WEIGHTS, Mat, Product, Widen, gemm, mat, widened, widened_once};
pub(crate) use rows::{
    cat_channels, geglu, gelu_mul, linear, linear_geglu, quick_gelu, transpose_last2,
};
pub(crate) use team::with_team;

/// Whether `B` is the Flex backend (whose f32 tensors these kernels take).
pub(crate) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

/// `t` as a Flex tensor when `B` is Flex and `t` is f32; `None` sends the caller down the
/// generic path. Cheap: Flex tensors share their storage.
pub(crate) fn to_flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    to_flex_of(t, &[DType::F32])
}

/// [`to_flex`] for a tensor of any of `dtypes` (weights kept in f16, read by [`gemv_many`]).
pub(crate) fn to_flex_of<B: Backend, const D: usize>(
    t: &Tensor<B, D>,
    dtypes: &[DType],
) -> Option<FlexTensor> {
    if !is_flex::<B>() || !dtypes.contains(&t.dtype()) {
        return None;
    }
    into_flex(t.clone()).ok()
}

/// A bool tensor's Flex primitive (u8 storage, nonzero = true) when `B` is Flex.
pub(crate) fn to_flex_bool<B: Backend, const D: usize>(
    t: &Tensor<B, D, burn::tensor::Bool>,
) -> Option<FlexTensor> {
    let mut slot = Some(t.clone().into_primitive());
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()
        .and_then(Option::take)
}

/// `t`'s Flex primitive, taking the handle (so an unshared tensor stays unshared); `t` back
/// when `B` is not Flex.
fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    let mut slot = Some(t.into_primitive().tensor());
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()
        .and_then(Option::take)
    {
        Some(f) => Ok(f),
        None => Err(Tensor::from_primitive(TensorPrimitive::Float(
            slot.expect("not taken when the downcast fails"),
        ))),
    }
}

/// A Flex tensor's dimensions.
pub(crate) fn dims(t: &FlexTensor) -> Vec<usize> {
    let s = t.layout().shape();
    (0..s.num_dims()).map(|i| s[i]).collect()
}

/// Writes `value` `[R, H, 1, D]` into position `t` of the contiguous cache `[R, H, P, D]` in
/// place, when this handle is its only owner. Flex 0.21's `slice_assign` copies the whole
/// destination every time (it clones its handle before asking for exclusive storage), which
/// cost a decode step 2 × layers cache copies. Gives the cache back as `Err` where it does not
/// apply.
pub(crate) fn write_position<B: Backend>(
    cache: Tensor<B, 4>,
    t: usize,
    value: &Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [r, h, p, d] = cache.dims();
    let ok = t < p && value.dims() == [r, h, 1, d] && cache.dtype() == DType::F32;
    let Some(val) = to_flex(value).filter(|_| ok) else {
        return Err(cache);
    };
    let mut dst = into_flex(cache)?;
    let whole = dst.is_contiguous() && dst.layout().start_offset() == 0;
    let val = contiguous(&val);
    let src = slice(&val);
    match dst
        .try_storage_mut::<f32>()
        .filter(|s| whole && s.len() == r * h * p * d)
    {
        Some(storage) => {
            for (i, row) in src.chunks_exact(d).enumerate() {
                storage[(i * p + t) * d..(i * p + t + 1) * d].copy_from_slice(row);
            }
            Ok(from_flex(dst))
        }
        None => Err(from_flex(dst)),
    }
}

/// The f32, f16 or bf16 convolution weight `[O, C, k, k]` held as `[k, k, O, C]` in memory, seen through a
/// permuted view with the logical shape `[O, C, k, k]`: per kernel tap a contiguous O×C matrix
/// that gemm reads in place (1.5x faster on the 8×8 UNet level, where re-packing the weight
/// cost as much as the GEMM). Other dtypes are left as they are.
pub(crate) fn relayout_conv_weight<B: Backend>(w: Tensor<B, 4>) -> Tensor<B, 4> {
    if !GEMM_WEIGHTS.contains(&w.dtype()) {
        return w;
    }
    let (device, dtype) = (w.device(), w.dtype());
    Tensor::<B, 4>::from_data(w.permute([2, 3, 0, 1]).into_data(), (&device, dtype))
        .permute([2, 3, 0, 1])
}

/// The inverse of [`to_flex`]; only called with tensors `to_flex` accepted, so `B` is Flex.
pub(crate) fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let mut slot = Some(t);
    let prim = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()
        .and_then(Option::take)
        .expect("from_flex is only called when B is Flex");
    Tensor::from_primitive(TensorPrimitive::Float(prim))
}

/// A contiguous f32 view: the storage slice from the tensor's start offset.
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

pub(crate) fn slice(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// A convolution's epilogue operands, contiguous: the bias `[O]` and the fused add (shaped as
/// the output, or per channel when its flag is set), as the kernels (Winograd, AMX) read them
/// while they store their outputs.
pub(crate) struct Epilogue {
    bias: Option<FlexTensor>,
    add: Option<(FlexTensor, bool)>,
}

impl Epilogue {
    pub(crate) fn new(bias: Option<&FlexTensor>, add: Option<(&FlexTensor, bool)>) -> Self {
        Self {
            bias: bias.map(contiguous),
            add: add.map(|(a, per_channel)| (contiguous(a), per_channel)),
        }
    }

    pub(crate) fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(slice)
    }

    pub(crate) fn add(&self) -> Option<(&[f32], bool)> {
        self.add
            .as_ref()
            .map(|(a, per_channel)| (slice(a), *per_channel))
    }
}

/// A new contiguous f32 tensor owning `data`.
pub(crate) fn new_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

/// `dst = [dst +] scale · lhs · rhs` for an `m×n` row-major `dst` (row stride `dst_rs`) on
/// the calling thread: the kernels parallelise over tiles themselves. `lhs` (`m×k`) and
/// `rhs` (`k×n`) are `(pointer, column stride, row stride)`.
///
/// # Safety
/// Every element addressed through the pointers and strides must be in bounds, and `dst`
/// must not alias the operands or another thread's tile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_tile(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    scale: f32,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0f32,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Asks the CPU to bring the cache line at `p` into L1 (a hint: no effect on results, any
/// address allowed). Used where the hardware prefetcher alone keeps too few lines in flight.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching has no architectural effect, valid address or not.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The AVX-512 mask of the first `n` lanes (all 16 from `n` ≥ 16): where a row ends inside
/// a vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn low_lanes(n: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << n.min(16)) - 1) as std::arch::x86_64::__mmask16
}

/// The last three halvings of a lane tree (lane `l` += lane `l + w`, w = 4, 2, 1): 8 lanes
/// → 1, as the GEMV and the one-query attention sum their accumulators.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn reduce8(s8: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: only inlined into functions compiled with AVX enabled.
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

/// A raw pointer that may cross threads: each task writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// An output buffer that a kernel's tasks fill completely, every element written through
/// [`Unfilled::ptr`] before anything reads it, allocated without clearing: `vec![0.0; n]`
/// cleared it on the calling thread while the pool waited (the allocator keeps freed memory
/// for reuse, so a zeroed allocation is a memset), ~1% of an SD step's samples, all serial.
pub(crate) struct Unfilled(Vec<f32>, usize);

impl Unfilled {
    pub(crate) fn new(len: usize) -> Self {
        Self(Vec::with_capacity(len), len)
    }

    /// Cleared after all, for a kernel that may leave elements unwritten.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self(vec![0.0; len], len)
    }

    pub(crate) fn ptr(&mut self) -> SendPtr {
        SendPtr(self.0.as_mut_ptr())
    }

    /// The buffer, now filled.
    ///
    /// # Safety
    /// Every one of its elements has been written.
    pub(crate) unsafe fn filled(mut self) -> Vec<f32> {
        // SAFETY: `with_capacity` gave at least this length; the caller promises it written.
        unsafe { self.0.set_len(self.1) };
        self.0
    }

    /// `len` values made on the pool, `fill(i, piece)` writing piece `i` (values `i·chunk..`,
    /// `chunk` long but the last): the `par_chunks_mut` of an element-wise kernel's output,
    /// without clearing it first.
    ///
    /// # Safety
    /// `fill` writes every element of each piece it is given.
    pub(crate) unsafe fn par_chunks(
        len: usize,
        chunk: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let chunk = chunk.max(1);
        let mut out = Self::new(len);
        let ptr = out.ptr();
        (0..len.div_ceil(chunk)).into_par_iter().for_each(|i| {
            // The whole SendPtr, not its pointer field alone, into the closure.
            let ptr = &ptr;
            // SAFETY: piece i lies inside the buffer's capacity, and only this task has it.
            let piece = unsafe {
                std::slice::from_raw_parts_mut(ptr.0.add(i * chunk), chunk.min(len - i * chunk))
            };
            fill(i, piece);
        });
        // SAFETY: the pieces cover the buffer, and the caller promises each written.
        unsafe { out.filled() }
    }
}

/// `v` made `len` values long without clearing them (a kernel's scratch, grown once and then
/// reused: resized with zeros, each fresh scratch is a memset first).
///
/// # Safety
/// Every value the caller reads it writes first.
#[allow(clippy::uninit_vec)] // The point: the caller's promise stands for the clearing.
pub(crate) unsafe fn resize_unfilled(v: &mut Vec<f32>, len: usize) {
    v.clear();
    v.reserve(len);
    // SAFETY: the capacity holds `len` values; the caller writes before it reads.
    unsafe { v.set_len(len) };
}

/// Declares `pub(crate) fn $name` that runs `$body` compiled for AVX-512 or AVX2+FMA when the
/// CPU has them (release builds target baseline x86-64, so without this the loops stay SSE2
/// scalar math), and the baseline version otherwise. The loops spell out their lanes and Rust
/// never contracts `a*b+c` into an FMA, so every variant gives the same bits.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were detected just above.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were detected just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;
