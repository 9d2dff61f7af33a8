//! `kiln generate`: one-shot text-to-image to PNG files.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendTask, DeviceSpec, dispatch};
use kiln::image_io;
use kiln::models::sd15::{GenerateRequest, StableDiffusion};
use kiln::schedulers::SchedulerKind;
use kiln::weights::{TensorFile, write_f32};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a diffusers folder, or a single-file checkpoint (.safetensors / .ckpt).
    #[arg(long, env = "KILN_MODEL_PATH")]
    pub model_path: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = 7.5)]
    pub guidance_scale: f64,
    /// pndm (SD 1.5's default), ddim, euler, euler_a, heun, lms, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde_karras, unipc, ddpm or lcm; diffusers class names and A1111 labels ("Euler a", "DPM++ 2M Karras", …) work too.
    #[arg(long, default_value = "pndm")]
    pub scheduler: String,
    /// DDIM's eta in [0, 1]: 0 is deterministic, > 0 adds noise each step. DDIM only.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Seed of image 0 (image k uses seed + k); random when absent, and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// 1 = last CLIP layer, 2 = the one before (A1111's "Clip skip").
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Output PNG; with n > 1, out-0.png, out-1.png, …
    #[arg(long, short)]
    pub output: PathBuf,
    /// Start from these latents (tensor `latents`, [n, 4, H/8, W/8]) instead of seeded noise.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Write the final latents (tensor `latents`, before the VAE) to this safetensors file.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let spec: DeviceSpec = args.device.parse()?;
    dispatch(spec, Job(args))?
}

struct Job(GenerateArgs);

impl BackendTask for Job {
    type Output = anyhow::Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.0;
        let scheduler: SchedulerKind = a.scheduler.parse()?;
        let init_latents = match &a.init_latents {
            Some(p) => {
                let (_, values) = TensorFile::open(p)?.read_f32("latents")?;
                Some(values)
            }
            None => None,
        };
        let seed = a.seed.unwrap_or_else(kiln::noise::random_seed);
        let req = GenerateRequest {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            steps: a.steps,
            guidance_scale: a.guidance_scale,
            scheduler,
            width: a.width,
            height: a.height,
            n: a.n,
            seed,
            init_latents,
            clip_skip: a.clip_skip,
            eta: a.eta,
            step_noise: None,
        };
        let model = StableDiffusion::<B>::load(&a.model_path, false, &device)?;
        model.validate(&req)?;

        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let out = model.generate(&req, &mut |step, total| {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            true
        })?;
        bar.finish_and_clear();

        if let Some(p) = &a.save_latents {
            let shape = out.latents.dims().to_vec();
            let data = out.latents.clone().into_data().convert_dtype(DType::F32);
            let values = data.to_vec::<f32>().map_err(|e| anyhow::anyhow!("reading latents: {e:?}"))?;
            write_f32(p, "latents", &shape, &values)?;
        }
        let images = image_io::to_rgb8(out.images)?;
        for (k, img) in images.iter().enumerate() {
            let path = image_io::numbered_path(&a.output, k, images.len());
            image_io::save(img, &path).with_context(|| format!("writing {}", path.display()))?;
            println!("{} (seed {})", path.display(), out.seeds[k]);
        }
        Ok(())
    }
}
