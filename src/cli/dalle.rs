//! `kiln generate` for DALL·E Mini/Mega: 256 image tokens per image, VQGAN-decoded to 256×256.

use anyhow::Context;
use burn::tensor::backend::Backend;
use kiln::backend::{BackendTask, DeviceSpec, dispatch};
use kiln::image_io;
use kiln::models::dalle_mini::{DalleMini, DalleRequest, Tokenization};
use kiln::precision::Precision;

use super::generate::{GenerateArgs, output_format, progress_bar};

pub fn run(args: GenerateArgs, spec: DeviceSpec, precision: Precision) -> anyhow::Result<()> {
    // Stable Diffusion's knobs mean nothing here: refuse them rather than ignore them.
    let sd_only = [
        ("--negative-prompt", !args.negative_prompt.is_empty()),
        ("--steps", args.steps.is_some()),
        ("--guidance-scale", args.guidance_scale.is_some()),
        ("--scheduler", args.scheduler.is_some()),
        ("--eta", args.eta.is_some()),
        ("--width", args.width.is_some()),
        ("--height", args.height.is_some()),
        ("--image", args.image.is_some()),
        ("--init-latents", args.init_latents.is_some()),
        ("--save-latents", args.save_latents.is_some()),
        ("--clip-skip", args.clip_skip != 1),
    ];
    if let Some((flag, _)) = sd_only.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "{flag} applies to Stable Diffusion; {} is a DALL·E model (256×256 output)",
            args.model_path.display()
        );
    }
    dispatch(
        spec,
        Job {
            args,
            spec,
            precision,
        },
    )?
}

struct Job {
    args: GenerateArgs,
    spec: DeviceSpec,
    precision: Precision,
}

impl BackendTask for Job {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.args;
        let format = output_format(&a)?;
        let defaults = DalleRequest::default();
        let req = DalleRequest {
            prompt: a.prompt.clone(),
            n: a.n,
            seed: a.seed.unwrap_or_else(kiln::noise::random_seed),
            cond_scale: a.cond_scale.unwrap_or(defaults.cond_scale),
            temperature: a.temperature.unwrap_or(defaults.temperature),
            top_k: a.top_k.unwrap_or(defaults.top_k),
            top_p: a.top_p.unwrap_or(defaults.top_p),
            tokenization: match a.tokenization.as_deref() {
                Some("min-dalle") => Tokenization::MinDalle,
                _ => Tokenization::Normalized,
            },
        };
        let dtype = self.precision.resolve::<B>(self.spec, &device)?;
        let model = DalleMini::<B>::load_as(&a.model_path, None, &device, dtype)?;
        if let Some(want) = &a.model {
            if want != model.name() {
                anyhow::bail!(
                    "--model {want}, but {} holds {}",
                    a.model_path.display(),
                    model.name()
                );
            }
        }
        let bar = progress_bar("token");
        let out = model.generate(&req, &mut |step, total| {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            true
        })?;
        bar.finish_and_clear();
        if let Some(p) = &a.save_tokens {
            std::fs::write(p, serde_json::to_string(&out.tokens)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        for (k, rgb) in out.rgb8.iter().enumerate() {
            let img = image::RgbImage::from_raw(out.width as u32, out.height as u32, rgb.clone())
                .context("the decoder returned a buffer of the wrong size")?;
            let path = image_io::numbered_path(&a.output, k, out.rgb8.len());
            let bytes = image_io::encode(&img, format, a.quality, None)?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("{} (seed {})", path.display(), out.seeds[k]);
        }
        Ok(())
    }
}
