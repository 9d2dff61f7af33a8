//! Kernels for the GPU backends (wgpu, cuda), written in Burn ops: where a cubecl kernel's
//! arithmetic is not good enough, the same operation through kernels that are. Chosen by
//! `nn::kernels`, like the CPU's.

mod conv_gemm;

pub(crate) use conv_gemm::conv2d_gemm;
