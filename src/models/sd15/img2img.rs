//! Inputs of image-to-image and inpainting: the init image and its mask at the generation size
//! and as tensors. Masks are read from files and uploads by `image_io::mask`.

use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::image_io;

use crate::error::{Error, Result};
use crate::noise::BatchNoise;
use crate::schedulers::Scheduler;

/// An init image plus an optional repaint mask, both at the generation size.
#[derive(Debug, Clone)]
pub struct ImageCondition {
    pub image: RgbImage,
    /// 255 = repaint, 0 = keep (diffusers' convention, already binarised or not).
    pub mask: Option<GrayImage>,
}

/// Converts any mode (RGB, RGBA, gray, palette) to RGB and resizes to `width × height`
/// (Lanczos, as diffusers' image processor).
pub fn prepare(
    img: &DynamicImage,
    mask: Option<&GrayImage>,
    width: usize,
    height: usize,
) -> Result<ImageCondition> {
    if width == 0 || height == 0 {
        return Err(Error::Image("the image has no pixels".into()));
    }
    let (w, h) = (width as u32, height as u32);
    let image = image_io::resize(img.to_rgb8(), w, h);
    let mask = mask.map(|m| image_io::resize(m.clone(), w, h));
    Ok(ImageCondition { image, mask })
}

/// RGB8 → `[1, 3, H, W]` in [-1, 1], as `x / 255 · 2 − 1`.
pub fn image_tensor<B: Backend>(img: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut v = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            v[c * h * w + y as usize * w + x as usize] = (f32::from(p[c]) / 255.0) * 2.0 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 3, h, w]), device)
}

/// Binarised mask `[1, 1, H, W]`: 1 where the mask is ≥ 0.5 (repaint), else 0.
pub fn mask_tensor<B: Backend>(mask: &GrayImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let v: Vec<f32> = mask
        .pixels()
        .map(|p| {
            if f32::from(p[0]) / 255.0 >= 0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 1, h, w]), device)
}

/// The mask at latent resolution: nearest neighbour, i.e. latent cell (i, j) takes pixel
/// (f·i, f·j), as `F.interpolate(mode="nearest")`.
pub fn latent_mask<B: Backend>(mask: Tensor<B, 4>, h: usize, w: usize) -> Tensor<B, 4> {
    interpolate(
        mask,
        [h, w],
        InterpolateOptions::new(InterpolateMode::Nearest),
    )
}

/// Index of the first timestep img2img runs: `N − min(⌊N·strength⌋, N)` steps are skipped
/// (times the sampler's order), as diffusers' `get_timesteps`.
pub fn begin_index(steps: usize, strength: f64, order: usize) -> usize {
    let init = ((steps as f64 * strength) as usize).min(steps);
    (steps - init) * order
}

/// Everything the denoising loop needs from the init image.
pub struct Prepared<B: Backend> {
    /// Latents at the first step, already at the scheduler's noise level.
    pub latents: Tensor<B, 4>,
    /// The timestep index the loop starts at.
    pub begin: usize,
    /// 4-channel inpainting: re-noised image latents are blended back outside the mask.
    pub blend: Option<Blend<B>>,
    /// 9-channel inpainting: `[mask, masked-image latents]`, concatenated to the UNet input.
    pub extra_channels: Option<Tensor<B, 4>>,
}

pub struct Blend<B: Backend> {
    pub image_latents: Tensor<B, 4>,
    pub noise: Tensor<B, 4>,
    /// 1 = repaint, at latent resolution, `[n, 1, h, w]`.
    pub mask: Tensor<B, 4>,
}

impl<B: Backend> super::StableDiffusion<B> {
    /// VAE latents of `image` for `n` images: the posterior mean, or (diffusers' default) a sample
    /// `mean + std·z` with `z` from `draw`, times the scaling factor.
    pub(super) fn image_latents(
        &self,
        image: Tensor<B, 4>,
        n: usize,
        sample: bool,
        tiling: super::VaeTiling,
        draw: &mut dyn FnMut() -> Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>> {
        let (mean, logvar) = self.encode_image(image, tiling)?;
        let mean = mean.repeat_dim(0, n);
        let lat = if sample {
            mean + (logvar.repeat_dim(0, n) * 0.5).exp() * draw()
        } else {
            mean
        };
        Ok(lat * self.parts.vae_config.scaling_factor)
    }
}

impl<B: Backend> super::StableDiffusion<B> {
    /// Starting latents for text-to-image, img2img or inpainting, drawing from `rng` in the order
    /// diffusers does: VAE sample of the image, start noise, VAE sample of the masked image.
    pub(super) fn prepare_latents(
        &self,
        req: &super::GenerateRequest,
        scheduler: &dyn Scheduler<B>,
        rng: &mut BatchNoise,
    ) -> Result<Prepared<B>> {
        let n = req.n;
        let [c, h, w] = self.latent_shape(req.width, req.height);
        let dev = self.device().clone();
        let shaped =
            |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, h, w]), &dev);
        let mut injected_vae = req.noise.vae_noise.clone().unwrap_or_default().into_iter();
        let noise_values = |rng: &mut BatchNoise| {
            req.noise
                .init_latents
                .clone()
                .unwrap_or_else(|| rng.draw(c * h * w))
        };

        let Some(cond) = &req.condition else {
            let latents = shaped(noise_values(rng)) * scheduler.init_noise_sigma();
            return Ok(Prepared {
                latents,
                begin: 0,
                blend: None,
                extra_channels: None,
            });
        };
        let begin = begin_index(req.steps, req.strength, scheduler.order());
        let nine = self.parts.unet_config.in_channels == 2 * c + 1;
        let strength_max = req.strength >= 1.0;
        let image = image_tensor::<B>(&cond.image, &dev);
        let mut vae_draw = |rng: &mut BatchNoise| {
            shaped(injected_vae.next().unwrap_or_else(|| rng.draw(c * h * w)))
        };

        // diffusers encodes the image unless pure noise suffices (full-strength 9-channel inpainting).
        let need_image = !(strength_max && cond.mask.is_some() && nine);
        let image_latents = if need_image {
            Some(self.image_latents(
                image.clone(),
                n,
                req.sample_vae,
                req.vae_tiling,
                &mut || vae_draw(rng),
            )?)
        } else {
            None
        };
        let noise = shaped(noise_values(rng));
        let latents = match (&image_latents, cond.mask.is_some() && strength_max) {
            (Some(x0), false) => scheduler.add_noise(x0.clone(), noise.clone(), begin),
            _ => noise.clone() * scheduler.init_noise_sigma(),
        };
        let Some(mask) = &cond.mask else {
            return Ok(Prepared {
                latents,
                begin,
                blend: None,
                extra_channels: None,
            });
        };

        let full = mask_tensor::<B>(mask, &dev);
        let lat_mask = latent_mask(full.clone(), h, w).repeat_dim(0, n);
        if nine {
            let keep = full.lower_elem(0.5).float();
            let masked =
                self.image_latents(image * keep, n, req.sample_vae, req.vae_tiling, &mut || {
                    vae_draw(rng)
                })?;
            let extra = Tensor::cat(vec![lat_mask, masked], 1);
            return Ok(Prepared {
                latents,
                begin,
                blend: None,
                extra_channels: Some(extra),
            });
        }
        let image_latents = image_latents
            .ok_or_else(|| Error::invalid("internal: inpainting without image latents"))?;
        Ok(Prepared {
            latents,
            begin,
            blend: Some(Blend {
                image_latents,
                noise,
                mask: lat_mask,
            }),
            extra_channels: None,
        })
    }
}
