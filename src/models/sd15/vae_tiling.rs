//! Tiled VAE decode and encode: diffusers' `AutoencoderKL.enable_tiling()` (`tiled_decode`,
//! `_tiled_encode`, `blend_v`, `blend_h` in `autoencoders/autoencoder_kl.py`), so that a large
//! image costs the activation memory of one tile.
//!
//! The input is cut into overlapping tiles of the VAE's training size (`sample_size`, 512 px for
//! SD 1.5), each tile is run alone, and each output tile is blended linearly into the one above
//! and the one to its left before its overlap is cropped. Tiles are blended in diffusers' order
//! against the already-blended neighbours, as its in-place `blend_v`/`blend_h` do. Only two rows
//! of output tiles are kept.

use std::convert::Infallible;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::config::VaeConfig;
use super::vae::{AutoencoderKL, posterior};
use crate::error::{Error, Result};

/// Images of more pixels than this are decoded and encoded in tiles under [`VaeTiling::Auto`].
/// Peak RSS of a decode with SD 1.5's VAE (random weights, f32, CPU; `examples/vae_bench.rs`,
/// 227 MB of it the decoder's weights): whole, 960 MB at 512², 1476 MB at 768², 2714 MB at
/// 1024²; in tiles, 964 MB at 1024² and 970 MB at 2048×512. 768² is the largest size SD 1.5
/// fine-tunes are trained at: it decodes whole (no seams, no per-tile colour shift) for 1.5 GB,
/// and every larger image tiles in about 1 GB.
pub const AUTO_TILE_PIXELS: usize = 768 * 768;

/// When the full VAE works in tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tiles when the image has more than [`AUTO_TILE_PIXELS`] pixels (and is larger than one
    /// tile).
    #[default]
    Auto,
    /// diffusers' `enable_tiling()`: tiles whenever the input is larger than one tile.
    On,
    /// Never tiles.
    Off,
}

impl FromStr for VaeTiling {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(Error::invalid(format!(
                "VAE tiling must be auto, on or off, got `{s}`"
            ))),
        }
    }
}

/// diffusers' tile geometry: `tile_sample_min_size` (pixels), `tile_latent_min_size` (latent
/// cells) and `tile_overlap_factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileSizes {
    pub sample: usize,
    pub latent: usize,
    pub overlap_factor: f64,
}

/// One direction's geometry: tiles start every `stride` input cells, blend over `blend`
/// output cells and keep their first `keep` output rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSteps {
    pub stride: usize,
    pub blend: usize,
    pub keep: usize,
}

impl TileSizes {
    /// What diffusers derives from `vae/config.json`: the sample size, and the latent size
    /// `sample_size / 2^(levels − 1)`.
    pub fn of(cfg: &VaeConfig) -> Self {
        Self {
            sample: cfg.sample_size,
            latent: cfg.sample_size / cfg.scale_factor(),
            overlap_factor: 0.25,
        }
    }

    /// `tiled_decode`'s `overlap_size`, `blend_extent`, `row_limit` (Python's `int()` truncates).
    pub fn decode_steps(&self) -> TileSteps {
        self.steps(self.latent, self.sample)
    }

    /// `_tiled_encode`'s `overlap_size`, `blend_extent`, `row_limit`.
    pub fn encode_steps(&self) -> TileSteps {
        self.steps(self.sample, self.latent)
    }

    /// Tiles of `input` cells overlapping by the factor, giving tiles of `output` cells.
    fn steps(&self, input: usize, output: usize) -> TileSteps {
        let f = self.overlap_factor;
        let blend = (output as f64 * f) as usize;
        TileSteps {
            stride: (input as f64 * (1.0 - f)) as usize,
            blend,
            keep: output - blend,
        }
    }
}

impl VaeTiling {
    /// Whether an input of `h × w` cells (latent cells for a decode, pixels for an encode) whose
    /// image has `pixels` pixels is run in tiles of `tile` cells: diffusers' rule (a side longer
    /// than one tile) under `On`, and also more than [`AUTO_TILE_PIXELS`] under `Auto`.
    pub fn applies(self, [h, w]: [usize; 2], tile: usize, pixels: usize) -> bool {
        let larger = h > tile || w > tile;
        match self {
            Self::Off => false,
            Self::On => larger,
            Self::Auto => larger && pixels > AUTO_TILE_PIXELS,
        }
    }
}

impl<B: Backend> AutoencoderKL<B> {
    /// `decode` of `z` `[B, z, h, w]` in tiles (diffusers' `tiled_decode`).
    pub fn tiled_decode(&self, z: Tensor<B, 4>, tiles: &TileSizes) -> Tensor<B, 4> {
        let Ok(images) = self.tiled_decode_checked(z, tiles, &mut || Ok::<_, Infallible>(()));
        images
    }

    /// [`tiled_decode`](Self::tiled_decode) that runs `check` before each tile and stops at
    /// its first error (a cancel).
    pub fn tiled_decode_checked<E>(
        &self,
        z: Tensor<B, 4>,
        tiles: &TileSizes,
        check: &mut dyn FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Tensor<B, 4>, E> {
        tiled(z, tiles.latent, tiles.decode_steps(), |t| {
            check()?;
            Ok(self.decode(t))
        })
    }

    /// [`moments`](AutoencoderKL::moments) of `x` `[B, 3, H, W]` in tiles (diffusers'
    /// `_tiled_encode`). `None` when built without the encoder.
    pub fn tiled_moments(&self, x: Tensor<B, 4>, tiles: &TileSizes) -> Option<Tensor<B, 4>> {
        self.encoder.as_ref()?;
        let run = |t| Ok::<_, Infallible>(self.moments(t).expect("the encoder is there"));
        let Ok(moments) = tiled(x, tiles.sample, tiles.encode_steps(), run);
        Some(moments)
    }

    /// [`encode`](AutoencoderKL::encode) in tiles: (mean, logvar).
    pub fn tiled_encode(
        &self,
        x: Tensor<B, 4>,
        tiles: &TileSizes,
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.tiled_moments(x, tiles).map(posterior)
    }
}

/// Runs `run` on the `tile × tile` tiles of `x` that start every `steps.stride` cells, blends
/// and crops the outputs, and joins them; the first error of `run` ends it.
fn tiled<B: Backend, E>(
    x: Tensor<B, 4>,
    tile: usize,
    steps: TileSteps,
    mut run: impl FnMut(Tensor<B, 4>) -> std::result::Result<Tensor<B, 4>, E>,
) -> std::result::Result<Tensor<B, 4>, E> {
    let [_, _, h, w] = x.dims();
    let stride = steps.stride.max(1);
    let mut above: Vec<Tensor<B, 4>> = Vec::new();
    let mut rows = Vec::new();
    for i in (0..h).step_by(stride) {
        let mut row: Vec<Tensor<B, 4>> = Vec::new();
        for (col, j) in (0..w).step_by(stride).enumerate() {
            let part = x
                .clone()
                .narrow(2, i, tile.min(h - i))
                .narrow(3, j, tile.min(w - j));
            let mut out = run(part)?;
            if let Some(a) = above.get(col) {
                out = blend(a, out, steps.blend, 2);
            }
            if let Some(left) = row.last() {
                out = blend(left, out, steps.blend, 3);
            }
            row.push(out);
        }
        let kept = row.iter().map(|t| crop(t.clone(), steps.keep)).collect();
        rows.push(Tensor::cat(kept, 3));
        above = row;
    }
    Ok(Tensor::cat(rows, 2))
}

/// The first `keep` rows and columns (`tile[:, :, :keep, :keep]`).
fn crop<B: Backend>(t: Tensor<B, 4>, keep: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = t.dims();
    t.narrow(2, 0, keep.min(h)).narrow(3, 0, keep.min(w))
}

/// `blend_v` (`dim` 2) or `blend_h` (`dim` 3): the first `extent` rows of `b` fade in from the
/// last rows of `a`, weight `y / extent` on `b` at row `y`.
fn blend<B: Backend>(a: &Tensor<B, 4>, b: Tensor<B, 4>, extent: usize, dim: usize) -> Tensor<B, 4> {
    let (la, lb) = (a.dims()[dim], b.dims()[dim]);
    let e = extent.min(la).min(lb);
    if e == 0 {
        return b;
    }
    let mut shape = [1usize; 4];
    shape[dim] = e;
    // Python computes the weights in f64; PyTorch casts a scalar to the tensor's f32.
    let fade = |f: &dyn Fn(f64) -> f64| {
        let v: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        Tensor::<B, 4>::from_data(TensorData::new(v, shape), &b.device()).cast(b.dtype())
    };
    let (from_a, from_b) = (fade(&|r| 1.0 - r), fade(&|r| r));
    let head = a.clone().narrow(dim, la - e, e) * from_a + b.clone().narrow(dim, 0, e) * from_b;
    if lb == e {
        head
    } else {
        Tensor::cat(vec![head, b.narrow(dim, e, lb - e)], dim)
    }
}
