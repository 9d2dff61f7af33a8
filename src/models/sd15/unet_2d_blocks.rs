//! UNet down, mid and up blocks (diffusers `unet_2d_blocks.py`). `CrossAttnDownBlock2D` and
//! `DownBlock2D` share one struct (the latter with no `attentions`), and likewise for up
//! blocks, so parameter paths carry no enum variant names.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::attention::{TextContext, Transformer2DModel};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use crate::nn::cat_channels;

/// What every block needs to build its layers.
#[derive(Clone, Copy)]
pub struct BlockSpec {
    pub temb: usize,
    pub groups: usize,
    pub eps: f64,
    pub heads: usize,
    pub context_dim: usize,
    pub transformer_layers: usize,
}

impl BlockSpec {
    fn resnet<B: Backend>(
        &self,
        c_in: usize,
        c_out: usize,
        device: &B::Device,
    ) -> ResnetBlock2D<B> {
        ResnetBlock2D::new(c_in, c_out, Some(self.temb), self.groups, self.eps, device)
    }

    fn transformer<B: Backend>(&self, c: usize, device: &B::Device) -> Transformer2DModel<B> {
        Transformer2DModel::new(
            c,
            self.context_dim,
            self.heads,
            self.transformer_layers,
            self.groups,
            device,
        )
    }
}

#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        attn: bool,
        downsample: bool,
        spec: &BlockSpec,
        device: &B::Device,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|j| spec.resnet(if j == 0 { c_in } else { c_out }, c_out, device))
                .collect(),
            attentions: if attn {
                (0..layers)
                    .map(|_| spec.transformer(c_out, device))
                    .collect()
            } else {
                Vec::new()
            },
            downsamplers: if downsample {
                vec![Downsample2D::new(c_out, true, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// Returns the block output and the skip states the up path consumes. With `copies` > 1,
    /// `x` holds the batch once (`temb` and `ctx` hold it `copies` times) and the copies are
    /// made inside the first attention (see `UNet2DConditionModel::forward_copies`); the block
    /// must have attentions then.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        ctx: &TextContext<B>,
        mut copies: usize,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            let n = x.dims()[0];
            x = resnet.forward(x, Some(&temb.clone().narrow(0, 0, n)));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward_copies(x, ctx, copies);
                copies = 1;
            }
            skips.push(x.clone());
        }
        debug_assert_eq!(copies, 1, "copies were asked of a block without attention");
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        (x, skips)
    }
}

#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock<B> {
    pub fn new(c: usize, spec: &BlockSpec, device: &B::Device) -> Self {
        Self {
            resnets: vec![spec.resnet(c, c, device), spec.resnet(c, c, device)],
            attentions: vec![spec.transformer(c, device)],
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        ctx: &TextContext<B>,
    ) -> Tensor<B, 4> {
        let x = self.resnets[0].forward(x, Some(temb));
        let x = self.attentions[0].forward(x, ctx);
        self.resnets[1].forward(x, Some(temb))
    }
}

#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock<B> {
    /// `c_prev`: channels coming from below; `c_skip_last`: channels of the deepest skip this
    /// block consumes (the previous down level's width), as in diffusers' constructor.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_prev: usize,
        c_out: usize,
        c_skip_last: usize,
        layers: usize,
        attn: bool,
        upsample: bool,
        spec: &BlockSpec,
        device: &B::Device,
    ) -> Self {
        let resnets = (0..layers)
            .map(|j| {
                let skip = if j == layers - 1 { c_skip_last } else { c_out };
                let c_in = if j == 0 { c_prev } else { c_out };
                spec.resnet(c_in + skip, c_out, device)
            })
            .collect();
        Self {
            resnets,
            attentions: if attn {
                (0..layers)
                    .map(|_| spec.transformer(c_out, device))
                    .collect()
            } else {
                Vec::new()
            },
            upsamplers: if upsample {
                vec![Upsample2D::new(c_out, device)]
            } else {
                Vec::new()
            },
        }
    }

    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        skips: &mut Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        ctx: &TextContext<B>,
    ) -> Tensor<B, 4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            if let Some(skip) = skips.pop() {
                x = cat_channels(x, skip);
            }
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, ctx);
            }
        }
        // Odd latent sizes (e.g. 65 at 520 px) shrink by flooring on the way down: upsample to the
        // size of the next skip rather than ×2, as diffusers does with `upsample_size`.
        let size = skips.last().map(|s| {
            let [_, _, h, w] = s.dims();
            [h, w]
        });
        for up in &self.upsamplers {
            x = up.forward(x, size);
        }
        x
    }
}
