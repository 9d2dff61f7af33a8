//! Timestep embeddings (diffusers `embeddings.py`: `get_timestep_embedding`, `TimestepEmbedding`).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::nn::{Linear, WeightLayout, silu};

/// Sinusoidal embedding of `timesteps` into `dim` channels, computed on the host in f32 as
/// diffusers does, then uploaded: `[cos | sin]` when `flip_sin_to_cos`.
pub fn timestep_embedding<B: Backend>(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let t = t as f32;
        let args: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - shift as f32);
                t * exponent.exp()
            })
            .collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(out, [timesteps.len(), dim]), device)
}

#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn new(d_in: usize, d: usize, device: &B::Device) -> Self {
        Self {
            linear_1: Linear::new(d_in, d, true, WeightLayout::InOut, device),
            linear_2: Linear::new(d, d, true, WeightLayout::InOut, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
