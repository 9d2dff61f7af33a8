//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D` (diffusers `resnet.py`, `downsampling.py`,
//! `upsampling.py`), shared by the UNet and the VAE.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::nn::{Conv2d, GroupNorm, Linear, WeightLayout, conv1x1, conv3x3, silu};

#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    /// Absent in the VAE, which has no time conditioning.
    pub time_emb_proj: Option<Linear<B>>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    /// A 1×1 conv when the block changes the channel count.
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            norm1: GroupNorm::new(groups, c_in, eps, device),
            conv1: conv3x3(c_in, c_out, device),
            time_emb_proj: temb.map(|t| Linear::new(t, c_out, true, WeightLayout::InOut, device)),
            norm2: GroupNorm::new(groups, c_out, eps, device),
            conv2: conv3x3(c_out, c_out, device),
            conv_shortcut: (c_in != c_out).then(|| conv1x1(c_in, c_out, device)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        // The norms run inside the convolutions' input pass, the time embedding and the
        // shortcut inside their output pass.
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => {
                Some(proj.forward(silu(t.clone())).unsqueeze_dims::<4>(&[2, 3]))
            }
            _ => None,
        };
        let h = self.conv1.forward_norm(&self.norm1, true, x.clone(), t);
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        self.conv2.forward_norm(&self.norm2, true, h, Some(x))
    }
}

#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// The UNet pads 1 on every side; the VAE encoder pads only right and bottom (`padding=0`
    /// in diffusers, which then pads (0, 1, 0, 1) by hand).
    pub fn new(c: usize, symmetric: bool, device: &B::Device) -> Self {
        let pad = if symmetric { [1; 4] } else { [0, 0, 1, 1] };
        Self {
            conv: Conv2d::new(c, c, 3, 2, pad, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            conv: conv3x3(c, c, device),
        }
    }

    /// Nearest-neighbour ×2, or to `size` when given.
    pub fn forward(&self, x: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        if size.is_none_or(|s| s == [h * 2, w * 2]) {
            return self.conv.forward_upsample2x(x);
        }
        let up = interpolate(
            x,
            size.unwrap_or([h * 2, w * 2]),
            InterpolateOptions::new(InterpolateMode::Nearest),
        );
        self.conv.forward(up)
    }
}
