//! TAESD, diffusers' `AutoencoderTiny` (`autoencoders/autoencoder_tiny.py`, with `EncoderTiny` /
//! `DecoderTiny` from `vae.py` and `AutoencoderTinyBlock` from `unet_2d_blocks.py`): a 2.4 M
//! parameter distilled VAE over the same latents as SD's, for cheap previews and, on request,
//! the final decode.
//!
//! diffusers keeps each half as one `nn.Sequential` (`decoder.layers.N…`); here every entry is
//! a [`TinyLayer`], and [`taesd_key`] maps the checkpoint keys onto its fields.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};
use tracing::info;

use super::config::TaesdConfig;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, conv3x3};
use crate::weights::{KeyTarget, TensorFile, load_into_as, require_complete};

/// `AutoencoderTinyBlock`: `relu(conv(x) + x)`, `conv` being conv–ReLU–conv–ReLU–conv
/// (`conv.0`, `conv.2`, `conv.4` in the checkpoint). TAESD's blocks keep their width, so the
/// skip is the identity.
#[derive(Module, Debug)]
pub struct AutoencoderTinyBlock<B: Backend> {
    pub conv: Vec<Conv2d<B>>,
}

impl<B: Backend> AutoencoderTinyBlock<B> {
    fn new(c: usize, device: &B::Device) -> Self {
        Self {
            conv: (0..3).map(|_| conv3x3(c, c, device)).collect(),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = relu(self.conv[0].forward(x.clone()));
        let h = relu(self.conv[1].forward(h));
        relu(self.conv[2].forward_add(h, x))
    }
}

/// One entry of diffusers' `layers`: a convolution, a block, or (neither) a ReLU or an
/// upsampling by `upsample`.
#[derive(Module, Debug)]
pub struct TinyLayer<B: Backend> {
    /// `layers.N.weight` / `.bias`.
    pub conv2d: Option<Conv2d<B>>,
    /// `layers.N.conv.M.*`.
    pub block: Option<AutoencoderTinyBlock<B>>,
    /// `nn.Upsample(scale_factor)`; 0 for the other kinds.
    pub upsample: usize,
}

impl<B: Backend> TinyLayer<B> {
    fn conv(conv: Conv2d<B>) -> Self {
        Self {
            conv2d: Some(conv),
            block: None,
            upsample: 0,
        }
    }

    fn block(c: usize, device: &B::Device) -> Self {
        Self {
            conv2d: None,
            block: Some(AutoencoderTinyBlock::new(c, device)),
            upsample: 0,
        }
    }

    fn other(upsample: usize) -> Self {
        Self {
            conv2d: None,
            block: None,
            upsample,
        }
    }
}

/// A 3×3 convolution without bias (TAESD's stage convolutions).
fn conv_no_bias<B: Backend>(c: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    let mut conv = Conv2d::new(c, c, 3, stride, [1; 4], device);
    conv.bias = None;
    conv
}

fn upsample<B: Backend>(x: Tensor<B, 4>, f: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let nearest = InterpolateOptions::new(InterpolateMode::Nearest);
    interpolate(x, [h * f, w * f], nearest)
}

/// Runs `layers` in order; an upsampling ×2 followed by a convolution is one fused call.
fn run_layers<B: Backend>(layers: &[TinyLayer<B>], mut x: Tensor<B, 4>) -> Tensor<B, 4> {
    let mut i = 0;
    while i < layers.len() {
        let layer = &layers[i];
        x = match (&layer.conv2d, &layer.block, layer.upsample) {
            (Some(conv), _, _) => conv.forward(x),
            (None, Some(block), _) => block.forward(x),
            (None, None, 0) => relu(x),
            (None, None, 2) => match layers.get(i + 1).and_then(|l| l.conv2d.as_ref()) {
                Some(conv) => {
                    i += 1;
                    conv.forward_upsample2x(x)
                }
                None => upsample(x, 2),
            },
            (None, None, f) => upsample(x, f),
        };
        i += 1;
    }
    x
}

/// `EncoderTiny`: image in [-1, 1] → latents (already at the UNet's scale).
#[derive(Module, Debug)]
pub struct EncoderTiny<B: Backend> {
    pub layers: Vec<TinyLayer<B>>,
}

/// `DecoderTiny`: latents → image in about [-1, 1].
#[derive(Module, Debug)]
pub struct DecoderTiny<B: Backend> {
    pub layers: Vec<TinyLayer<B>>,
}

#[derive(Module, Debug)]
pub struct AutoencoderTiny<B: Backend> {
    pub encoder: EncoderTiny<B>,
    pub decoder: DecoderTiny<B>,
    /// The pipeline divides latents by it before `decode` (1.0 for TAESD).
    pub scaling_factor: f64,
}

impl<B: Backend> AutoencoderTiny<B> {
    pub fn new(cfg: &TaesdConfig, device: &B::Device) -> Self {
        let mut enc = Vec::new();
        for (i, (&c, &n)) in cfg
            .encoder_block_out_channels
            .iter()
            .zip(&cfg.num_encoder_blocks)
            .enumerate()
        {
            enc.push(TinyLayer::conv(if i == 0 {
                conv3x3(cfg.in_channels, c, device)
            } else {
                conv_no_bias(c, 2, device)
            }));
            enc.extend((0..n).map(|_| TinyLayer::block(c, device)));
        }
        let last = *cfg.encoder_block_out_channels.last().unwrap_or(&0);
        enc.push(TinyLayer::conv(conv3x3(last, cfg.latent_channels, device)));

        let ch = &cfg.decoder_block_out_channels;
        let mut dec = vec![
            TinyLayer::conv(conv3x3(cfg.latent_channels, ch[0], device)),
            TinyLayer::other(0),
        ];
        let stages = cfg.num_decoder_blocks.len();
        for (i, (&c, &n)) in ch.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            dec.extend((0..n).map(|_| TinyLayer::block(c, device)));
            if i + 1 < stages {
                dec.push(TinyLayer::other(cfg.upsampling_scaling_factor));
                dec.push(TinyLayer::conv(conv_no_bias(c, 1, device)));
            } else {
                dec.push(TinyLayer::conv(conv3x3(c, cfg.out_channels, device)));
            }
        }
        Self {
            encoder: EncoderTiny { layers: enc },
            decoder: DecoderTiny { layers: dec },
            scaling_factor: cfg.scaling_factor,
        }
    }

    /// Loads a diffusers TAESD folder (`config.json`, optional, and
    /// `diffusion_pytorch_model.safetensors`) with the weights stored as `dtype`.
    pub fn load(dir: &Path, device: &B::Device, dtype: DType) -> Result<Self> {
        let t0 = Instant::now();
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                "no such folder (get TAESD with `kiln download taesd`)",
            ));
        }
        let config = dir.join("config.json");
        let cfg = if config.is_file() {
            TaesdConfig::load(&config)?
        } else {
            TaesdConfig::default()
        };
        let path = ["safetensors", "bin"]
            .iter()
            .map(|ext| dir.join(format!("diffusion_pytorch_model.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::io(
                    dir,
                    "no diffusion_pytorch_model.safetensors (a diffusers TAESD folder)",
                )
            })?;
        let file = TensorFile::open(&path)?;
        let (model, report) = load_into_as(Self::new(&cfg, device), &file, &taesd_key, dtype)?;
        require_complete(&report, &path)?;
        if let Some(key) = report.unused.first() {
            return Err(Error::Tensor {
                path,
                key: key.clone(),
                message: "not a TAESD (AutoencoderTiny) parameter for this config".into(),
            });
        }
        info!(path = %path.display(), ?dtype, secs = t0.elapsed().as_secs_f32(), "TAESD loaded");
        Ok(model)
    }

    fn dtype(&self) -> DType {
        self.decoder.layers[0]
            .conv2d
            .as_ref()
            .map_or(DType::F32, |c| c.compute_dtype())
    }

    /// `AutoencoderTiny.decode`: latents as the UNet sees them (divided by `scaling_factor`,
    /// which is 1) `[B, z, h, w]` → image `[B, 3, 8h, 8w]` in about [-1, 1].
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let out_dtype = latents.dtype();
        // diffusers' soft clamp of the latents to (-3, 3).
        let x = (latents.cast(self.dtype()) / 3.0).tanh() * 3.0;
        let x = run_layers(&self.decoder.layers, x);
        (x * 2.0 - 1.0).cast(out_dtype)
    }

    /// `AutoencoderTiny.encode`: image `[B, 3, H, W]` in [-1, 1] → latents at the UNet's scale.
    pub fn encode(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let out_dtype = image.dtype();
        let x = (image.cast(self.dtype()) + 1.0) / 2.0;
        run_layers(&self.encoder.layers, x).cast(out_dtype)
    }
}

/// Checkpoint key → module path: `layers.N.weight` is the entry's `conv2d`, and a block's
/// `conv.{0,2,4}` (the odd indices are its ReLUs) are `block.conv.{0,1,2}`.
pub fn taesd_key(key: &str) -> KeyTarget {
    let path = (|| {
        let (half, rest) = key.split_once(".layers.")?;
        let (n, rest) = rest.split_once('.')?;
        let rest = match rest.split_once('.') {
            Some(("conv", r)) => {
                let (m, param) = r.split_once('.')?;
                let m: usize = m.parse().ok().filter(|m| m % 2 == 0)?;
                format!("block.conv.{}.{param}", m / 2)
            }
            _ => format!("conv2d.{rest}"),
        };
        Some(format!("{half}.layers.{n}.{rest}"))
    })();
    KeyTarget::Param(path.unwrap_or_else(|| key.to_string()))
}
