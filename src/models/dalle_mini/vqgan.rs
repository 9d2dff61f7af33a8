//! VQGAN f16-16384 decoder (taming-transformers `Decoder`, min-dalle `vqgan_detokenizer.py`):
//! image tokens → codebook vectors → post_quant_conv → decoder → RGB in [0, 1].
//!
//! Field names follow the taming / min-dalle state dict (`decoder.up.4.block.0.norm1.weight`);
//! the flax names (`up_4.block_0`, `kernel` HWIO) are mapped in `weights.rs`.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::{GROUPS, VqganConfig};
use crate::nn::{Conv2d, Embedding, GroupNorm, Linear, WeightLayout, conv1x1, conv3x3, sdpa};

#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    /// 1×1 projection of the input when the channel count changes.
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    pub fn new(cin: usize, cout: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            norm1: GroupNorm::new(GROUPS, cin, eps, device),
            conv1: conv3x3(cin, cout, device),
            norm2: GroupNorm::new(GROUPS, cout, eps, device),
            conv2: conv3x3(cout, cout, device),
            nin_shortcut: (cin != cout).then(|| conv1x1(cin, cout, device)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // The norms run inside the convolutions' input pass, the residual inside conv2's
        // output pass.
        let h = self.conv1.forward_norm(&self.norm1, true, x.clone(), None);
        let x = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        self.conv2.forward_norm(&self.norm2, true, h, Some(x))
    }
}

/// Single-head self-attention over all positions; the 1×1 convs are stored as `[C, C, 1, 1]`
/// and loaded into `[C, C]` linears.
#[derive(Module, Debug)]
pub struct AttnBlock<B: Backend> {
    pub norm: GroupNorm<B>,
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub proj_out: Linear<B>,
}

impl<B: Backend> AttnBlock<B> {
    pub fn new(c: usize, eps: f64, device: &B::Device) -> Self {
        let lin = || Linear::new(c, c, true, WeightLayout::OutIn, device);
        Self {
            norm: GroupNorm::new(GROUPS, c, eps, device),
            q: lin(),
            k: lin(),
            v: lin(),
            proj_out: lin(),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        // [N, C, H, W] → [N, HW, C]: one token per pixel
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2);
        let heads = |t: Tensor<B, 3>| t.unsqueeze_dim::<4>(1);
        let out = sdpa(
            heads(self.q.forward(tokens.clone())),
            heads(self.k.forward(tokens.clone())),
            heads(self.v.forward(tokens)),
            false,
        );
        let out = self.proj_out.forward(out.squeeze_dim::<3>(1));
        x + out.swap_dims(1, 2).reshape([n, c, h, w])
    }
}

#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward_upsample2x(x)
    }
}

/// One resolution level: `num_res_blocks + 1` ResnetBlocks (each followed by attention at the
/// attention resolutions), then a nearest ×2 upsample except at level 0.
#[derive(Module, Debug)]
pub struct UpLevel<B: Backend> {
    pub block: Vec<ResnetBlock<B>>,
    pub attn: Vec<AttnBlock<B>>,
    pub upsample: Option<Upsample<B>>,
}

impl<B: Backend> UpLevel<B> {
    pub fn forward(&self, mut h: Tensor<B, 4>) -> Tensor<B, 4> {
        for (j, block) in self.block.iter().enumerate() {
            h = block.forward(h);
            if let Some(attn) = self.attn.get(j) {
                h = attn.forward(h);
            }
        }
        match &self.upsample {
            Some(up) => up.forward(h),
            None => h,
        }
    }
}

#[derive(Module, Debug)]
pub struct Mid<B: Backend> {
    pub block_1: ResnetBlock<B>,
    pub attn_1: AttnBlock<B>,
    pub block_2: ResnetBlock<B>,
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid: Mid<B>,
    pub up: Vec<UpLevel<B>>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    pub fn new(cfg: &VqganConfig, device: &B::Device) -> Self {
        let eps = cfg.groupnorm_eps;
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut res = cfg.grid();
        let mid = Mid {
            block_1: ResnetBlock::new(block_in, block_in, eps, device),
            attn_1: AttnBlock::new(block_in, eps, device),
            block_2: ResnetBlock::new(block_in, block_in, eps, device),
        };
        let conv_in = conv3x3(cfg.z_channels, block_in, device);
        let mut up: Vec<Option<UpLevel<B>>> = (0..levels).map(|_| None).collect();
        for i in (0..levels).rev() {
            let cout = cfg.ch * cfg.ch_mult[i];
            let n = cfg.num_res_blocks + 1;
            let block = (0..n)
                .map(|j| ResnetBlock::new(if j == 0 { block_in } else { cout }, cout, eps, device))
                .collect();
            let attn = if cfg.attn_resolutions.contains(&res) {
                (0..n).map(|_| AttnBlock::new(cout, eps, device)).collect()
            } else {
                Vec::new()
            };
            let upsample = (i != 0).then(|| Upsample {
                conv: conv3x3(cout, cout, device),
            });
            up[i] = Some(UpLevel {
                block,
                attn,
                upsample,
            });
            block_in = cout;
            if i != 0 {
                res *= 2;
            }
        }
        Self {
            conv_in,
            mid,
            up: up.into_iter().flatten().collect(),
            norm_out: GroupNorm::new(GROUPS, block_in, eps, device),
            conv_out: conv3x3(block_in, cfg.out_ch, device),
        }
    }

    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv_in.forward(z);
        let h = self
            .mid
            .block_2
            .forward(self.mid.attn_1.forward(self.mid.block_1.forward(h)));
        let h = self.up.iter().rev().fold(h, |h, level| level.forward(h));
        self.conv_out.forward_norm(&self.norm_out, true, h, None)
    }
}

/// The decoding half of the VQGAN (what min-dalle calls the detokenizer).
#[derive(Module, Debug)]
pub struct Vqgan<B: Backend> {
    /// The codebook `[n_embed, embed_dim]`; row = image token id.
    pub embedding: Embedding<B>,
    pub post_quant_conv: Conv2d<B>,
    pub decoder: Decoder<B>,
}

impl<B: Backend> Vqgan<B> {
    pub fn new(cfg: &VqganConfig, device: &B::Device) -> Self {
        Self {
            embedding: Embedding::new(cfg.n_embed, cfg.embed_dim, device),
            post_quant_conv: conv1x1(cfg.embed_dim, cfg.z_channels, device),
            decoder: Decoder::new(cfg, device),
        }
    }

    pub fn codebook_size(&self) -> usize {
        self.embedding.weight.dims()[0]
    }

    /// Codebook vectors of `tokens` (`n` images × grid², row-major) as `[n, C, grid, grid]`.
    pub fn codes(&self, tokens: &[Vec<u32>], device: &B::Device) -> Tensor<B, 4> {
        let n = tokens.len();
        let s = tokens.first().map_or(0, Vec::len);
        let g = (s as f64).sqrt() as usize;
        let ids: Vec<i64> = tokens.iter().flatten().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, s]), device);
        let z = self.embedding.forward(ids); // [n, s, C]
        let c = z.dims()[2];
        z.reshape([n, g, g, c]).permute([0, 3, 1, 2])
    }

    /// Raw decoder output `[n, 3, H, W]` (roughly [0, 1], not clipped).
    pub fn decode_raw(&self, tokens: &[Vec<u32>], device: &B::Device) -> Tensor<B, 4> {
        self.decoder
            .forward(self.post_quant_conv.forward(self.codes(tokens, device)))
    }

    /// Images `[n, 3, H, W]` clipped to [0, 1].
    pub fn decode(&self, tokens: &[Vec<u32>], device: &B::Device) -> Tensor<B, 4> {
        self.decode_raw(tokens, device).clamp(0.0, 1.0)
    }
}

/// `[n, 3, H, W]` in [0, 1] → one HWC RGB8 buffer per image, truncating like dalle-mini and
/// min-dalle (`uint8(x · 255)`).
pub fn to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Vec<Vec<u8>> {
    let [n, c, h, w] = images.dims();
    let hwc = images.permute([0, 2, 3, 1]).reshape([n, h * w * c]);
    let values = crate::nn::host_f32(hwc).unwrap_or_default();
    values
        .chunks(h * w * c)
        .map(|img| {
            img.iter()
                .map(|&x| (x.clamp(0.0, 1.0) * 255.0) as u8)
                .collect()
        })
        .collect()
}
