//! `AutoencoderKL` (diffusers `autoencoders/autoencoder_kl.py`, `vae.py`): the encoder for
//! img2img and the decoder that turns latents into pixels.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::config::VaeConfig;
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::nn::{
    Conv2d, GroupNorm, Linear, WeightLayout, conv1x1, conv3x3, merge_heads, sdpa, split_heads,
};

const EPS: f64 = 1e-6;

/// Single-head self-attention over the H·W positions of the mid block.
#[derive(Module, Debug)]
pub struct VaeAttention<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Vec<Linear<B>>,
}

impl<B: Backend> VaeAttention<B> {
    fn new(c: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            group_norm: GroupNorm::new(groups, c, EPS, device),
            to_q: Linear::new(c, c, true, WeightLayout::InOut, device),
            to_k: Linear::new(c, c, true, WeightLayout::InOut, device),
            to_v: Linear::new(c, c, true, WeightLayout::InOut, device),
            to_out: vec![Linear::new(c, c, true, WeightLayout::InOut, device)],
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        // Contiguous tokens: q, k and v each read them (a strided view was copied three times).
        let t = crate::nn::nchw_to_tokens(self.group_norm.forward(x.clone()));
        let q = split_heads(self.to_q.forward(t.clone()), 1);
        let k = split_heads(self.to_k.forward(t.clone()), 1);
        let v = split_heads(self.to_v.forward(t), 1);
        let o = self.to_out[0].forward(merge_heads(sdpa(q, k, v, false)));
        crate::nn::tokens_to_nchw(o, [h, w]) + x
    }
}

#[derive(Module, Debug)]
pub struct VaeMidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<VaeAttention<B>>,
}

impl<B: Backend> VaeMidBlock<B> {
    fn new(c: usize, groups: usize, device: &B::Device) -> Self {
        Self {
            resnets: (0..2)
                .map(|_| ResnetBlock2D::new(c, c, None, groups, EPS, device))
                .collect(),
            attentions: vec![VaeAttention::new(c, groups, device)],
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnets[0].forward(x, None);
        let x = self.attentions[0].forward(x);
        self.resnets[1].forward(x, None)
    }
}

#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub downsamplers: Vec<Downsample2D<B>>,
}

#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub upsamplers: Vec<Upsample2D<B>>,
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    pub mid_block: VaeMidBlock<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: VaeMidBlock<B>,
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    /// `None` when the caller only decodes (text-to-image): saves the encoder's memory.
    pub encoder: Option<Encoder<B>>,
    pub decoder: Decoder<B>,
    pub quant_conv: Option<Conv2d<B>>,
    pub post_quant_conv: Conv2d<B>,
}

impl<B: Backend> AutoencoderKL<B> {
    pub fn new(cfg: &VaeConfig, with_encoder: bool, device: &B::Device) -> Self {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let l = cfg.layers_per_block;
        let z = cfg.latent_channels;
        let encoder = with_encoder.then(|| Encoder {
            conv_in: conv3x3(cfg.in_channels, ch[0], device),
            down_blocks: (0..n)
                .map(|i| {
                    let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                    DownEncoderBlock2D {
                        resnets: (0..l)
                            .map(|j| {
                                ResnetBlock2D::new(
                                    if j == 0 { c_in } else { ch[i] },
                                    ch[i],
                                    None,
                                    g,
                                    EPS,
                                    device,
                                )
                            })
                            .collect(),
                        downsamplers: if i + 1 < n {
                            vec![Downsample2D::new(ch[i], false, device)]
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
            mid_block: VaeMidBlock::new(ch[n - 1], g, device),
            conv_norm_out: GroupNorm::new(g, ch[n - 1], EPS, device),
            conv_out: conv3x3(ch[n - 1], 2 * z, device),
        });
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let decoder = Decoder {
            conv_in: conv3x3(z, rev[0], device),
            mid_block: VaeMidBlock::new(rev[0], g, device),
            up_blocks: (0..n)
                .map(|i| {
                    let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                    UpDecoderBlock2D {
                        resnets: (0..=l)
                            .map(|j| {
                                ResnetBlock2D::new(
                                    if j == 0 { c_in } else { rev[i] },
                                    rev[i],
                                    None,
                                    g,
                                    EPS,
                                    device,
                                )
                            })
                            .collect(),
                        upsamplers: if i + 1 < n {
                            vec![Upsample2D::new(rev[i], device)]
                        } else {
                            Vec::new()
                        },
                    }
                })
                .collect(),
            conv_norm_out: GroupNorm::new(g, ch[0], EPS, device),
            conv_out: conv3x3(ch[0], cfg.out_channels, device),
        };
        Self {
            encoder,
            decoder,
            quant_conv: with_encoder.then(|| conv1x1(2 * z, 2 * z, device)),
            post_quant_conv: conv1x1(z, z, device),
        }
    }

    /// Latents (already divided by the scaling factor) `[B, z, h, w]` → image in about [-1, 1].
    pub fn decode(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = &self.decoder;
        let (dtype, out_dtype) = (self.post_quant_conv.compute_dtype(), z.dtype());
        let mut x = d
            .conv_in
            .forward(self.post_quant_conv.forward(z.cast(dtype)));
        x = d.mid_block.forward(x);
        for block in &d.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for u in &block.upsamplers {
                x = u.forward(x, None);
            }
        }
        d.conv_out
            .forward_norm(&d.conv_norm_out, true, x, None)
            .cast(out_dtype)
    }

    /// Image `[B, 3, H, W]` in [-1, 1] → (mean, logvar) of the latent distribution, logvar
    /// clamped to [-30, 20] as diffusers does. `None` when built without the encoder.
    pub fn encode(&self, x: Tensor<B, 4>) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.moments(x).map(posterior)
    }

    /// Encoder and `quant_conv`: the `[B, 2z, H/8, W/8]` moments diffusers' `_encode` returns
    /// (and its tiled encode blends).
    pub fn moments(&self, x: Tensor<B, 4>) -> Option<Tensor<B, 4>> {
        let (e, quant) = (self.encoder.as_ref()?, self.quant_conv.as_ref()?);
        let (dtype, out_dtype) = (e.conv_in.compute_dtype(), x.dtype());
        let mut h = e.conv_in.forward(x.cast(dtype));
        for block in &e.down_blocks {
            for r in &block.resnets {
                h = r.forward(h, None);
            }
            for d in &block.downsamplers {
                h = d.forward(h);
            }
        }
        h = e.mid_block.forward(h);
        Some(
            quant
                .forward(e.conv_out.forward_norm(&e.conv_norm_out, true, h, None))
                .cast(out_dtype),
        )
    }
}

/// `DiagonalGaussianDistribution`: moments → (mean, logvar clamped to [-30, 20]).
pub fn posterior<B: Backend>(moments: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let z = moments.dims()[1] / 2;
    let mean = moments.clone().narrow(1, 0, z);
    let logvar = moments.narrow(1, z, z).clamp(-30.0, 20.0);
    (mean, logvar)
}
