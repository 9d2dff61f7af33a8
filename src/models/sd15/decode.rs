//! Latents → pixels for a loaded model: the full VAE (in tiles above a size, see
//! [`vae_tiling`](super::vae_tiling)) or TAESD, the VAE encode of init images, and the
//! streamed previews.

use std::convert::Infallible;
use std::time::Instant;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use tracing::info;

use super::StableDiffusion;
use super::autoencoder_tiny::AutoencoderTiny;
use super::request::VaeChoice;
use super::vae_tiling::{TileSizes, VaeTiling};
use crate::error::{Error, Result};

impl<B: Backend> StableDiffusion<B> {
    /// Installs (or removes) TAESD, used for previews and for `vae: taesd` requests.
    pub fn set_taesd(&mut self, taesd: Option<AutoencoderTiny<B>>) {
        self.parts.taesd = taesd;
    }

    /// The full VAE's tile geometry (from `vae/config.json`'s `sample_size`).
    pub fn vae_tiles(&self) -> TileSizes {
        TileSizes::of(&self.parts.vae_config)
    }

    /// Fails for a request whose decoder is not loaded.
    pub(super) fn check_vae(&self, vae: VaeChoice) -> Result<()> {
        if vae == VaeChoice::Tiny && self.parts.taesd.is_none() {
            return Err(Error::invalid(
                "vae \"taesd\" needs TAESD, which is not loaded (get it with `kiln download taesd`)",
            ));
        }
        Ok(())
    }

    /// Latents → images with the full VAE, tiled as [`VaeTiling::Auto`] says.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut nothing_stops = || Ok::<_, Infallible>(());
        let Ok(images) = self.decode_images(
            latents,
            VaeChoice::Full,
            VaeTiling::Auto,
            &mut nothing_stops,
        );
        images
    }

    /// Latents `[n, C, h, w]` (as the UNet sees them) → images `[n, 3, H, W]` in about [-1, 1],
    /// decoded by `vae`; `tiling` applies to the full VAE.
    pub fn decode_with(
        &self,
        latents: Tensor<B, 4>,
        vae: VaeChoice,
        tiling: VaeTiling,
    ) -> Result<Tensor<B, 4>> {
        self.decode_checked(latents, vae, tiling, &mut || true)
    }

    /// [`decode_with`](Self::decode_with) that asks `keep_going` before each image (each tile
    /// when the VAE tiles) and stops with [`Error::Cancelled`] when it says no: a cancel
    /// reaches the decode too, within one image or tile.
    pub fn decode_checked(
        &self,
        latents: Tensor<B, 4>,
        vae: VaeChoice,
        tiling: VaeTiling,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Tensor<B, 4>> {
        self.check_vae(vae)?;
        self.decode_images(latents, vae, tiling, &mut || {
            if keep_going() {
                Ok(())
            } else {
                Err(Error::Cancelled)
            }
        })
    }

    /// One image at a time (to bound the VAE's activation memory), running `check` before each
    /// image or tile and stopping at its first error. TAESD when `vae` asks for it and it is
    /// loaded, else the full VAE.
    fn decode_images<E>(
        &self,
        latents: Tensor<B, 4>,
        vae: VaeChoice,
        tiling: VaeTiling,
        check: &mut dyn FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<Tensor<B, 4>, E> {
        let t0 = Instant::now();
        let [n, _, h, w] = latents.dims();
        let (scale, f) = (
            self.parts.vae_config.scaling_factor,
            self.parts.vae_config.scale_factor(),
        );
        let tiles = self.vae_tiles();
        let taesd = self.parts.taesd.as_ref().filter(|_| vae == VaeChoice::Tiny);
        let tiled = taesd.is_none() && tiling.applies([h, w], tiles.latent, h * w * f * f);
        let full = &self.parts.vae;
        let mut images = Vec::with_capacity(n);
        for k in 0..n {
            let z = latents.clone().narrow(0, k, 1);
            images.push(match taesd {
                Some(taesd) => {
                    check()?;
                    taesd.decode(z / taesd.scaling_factor)
                }
                None if tiled => full.tiled_decode_checked(z / scale, &tiles, check)?,
                None => {
                    check()?;
                    full.decode(z / scale)
                }
            });
        }
        info!(
            images = n,
            taesd = taesd.is_some(),
            tiled,
            secs = t0.elapsed().as_secs_f32(),
            "decoded"
        );
        Ok(Tensor::cat(images, 0))
    }

    /// VAE (mean, logvar) of an image `[1, 3, H, W]` in [-1, 1], tiled as `tiling` says.
    pub(super) fn encode_image(
        &self,
        image: Tensor<B, 4>,
        tiling: VaeTiling,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let [_, _, h, w] = image.dims();
        let tiles = self.vae_tiles();
        let vae = &self.parts.vae;
        let encoded = if tiling.applies([h, w], tiles.sample, h * w) {
            vae.tiled_encode(image, &tiles)
        } else {
            vae.encode(image)
        };
        encoded.ok_or_else(|| {
            Error::invalid("this model was loaded without the VAE encoder, which image inputs need")
        })
    }

    /// A preview of image `k` of `latents`: TAESD's decode when it is loaded, else the cheap
    /// [`latent_preview`] at the same size.
    pub fn preview(&self, latents: &Tensor<B, 4>, k: usize) -> Result<image::RgbImage> {
        let [n, ..] = latents.dims();
        match &self.parts.taesd {
            Some(taesd) if k < n => {
                let z = latents.clone().narrow(0, k, 1) / taesd.scaling_factor;
                let mut images = crate::image_io::to_rgb8(taesd.decode(z))?;
                images
                    .pop()
                    .ok_or_else(|| Error::Image("TAESD decoded no image".into()))
            }
            _ => latent_preview(latents, k, self.parts.vae_config.scale_factor() as u32),
        }
    }
}

/// SD 1.x latent → RGB linear map (the "approximate cheap" preview A1111 uses): no VAE, so a
/// preview costs a few multiply-adds per latent cell.
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// A rough picture of image `k` of `latents` `[n, 4, h, w]`, upscaled ×`scale` (nearest).
pub fn latent_preview<B: Backend>(
    latents: &Tensor<B, 4>,
    k: usize,
    scale: u32,
) -> Result<image::RgbImage> {
    let [n, c, h, w] = latents.dims();
    if k >= n || c != 4 {
        return Err(Error::invalid(format!(
            "no preview for image {k} of latents shaped [{n}, {c}, {h}, {w}]"
        )));
    }
    let v = crate::nn::host_f32(latents.clone().narrow(0, k, 1))?;
    let small = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let p = y as usize * w + x as usize;
        let mut rgb = [0f32; 3];
        for (ch, row) in LATENT_RGB.iter().enumerate() {
            for (o, f) in rgb.iter_mut().zip(row) {
                *o += v[ch * h * w + p] * f;
            }
        }
        image::Rgb(rgb.map(|x| (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8))
    });
    Ok(image::imageops::resize(
        &small,
        w as u32 * scale,
        h as u32 * scale,
        image::imageops::FilterType::Nearest,
    ))
}
