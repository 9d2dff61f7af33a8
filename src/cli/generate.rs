//! `kiln generate`: one-shot text-to-image to PNG files.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{BackendTask, DeviceSpec, dispatch};
use kiln::image_io::{self, ImageFormat, params::Parameters};
use kiln::models::sd15::{
    GenerateRequest, ImageCondition, MaskConvention, StableDiffusion, img2img,
};
use kiln::precision::Precision;
use kiln::schedulers::SchedulerKind;
use kiln::weights::{TensorFile, write_f32};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: an SD 1.5 diffusers folder or single-file checkpoint (.safetensors / .ckpt), or a
    /// DALL·E Mini/Mega folder (flax_model.msgpack or min-dalle's encoder.pt/decoder.pt).
    #[arg(long, env = "KILN_MODEL_PATH")]
    pub model_path: PathBuf,
    /// Model family (sd15, dalle-mini, dalle-mega); detected from the files when absent.
    #[arg(long, value_parser = ["sd15", "dalle-mini", "dalle-mega"])]
    pub model: Option<String>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps (SD; default 50).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (SD; default 7.5; ≤ 1 turns guidance off).
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    /// pndm (SD 1.5's default), ddim, euler, euler_karras, euler_a, heun, lms, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde_karras, unipc, ddpm or lcm; diffusers class names and A1111 labels ("Euler a", "DPM++ 2M Karras", …) work too.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// DDIM's eta in [0, 1]: 0 is deterministic, > 0 adds noise each step. DDIM only.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Seed of image 0 (image k uses seed + k); random when absent, and printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Multiple of 8; default 512, or the init image's width rounded down to a multiple of 8.
    #[arg(long)]
    pub width: Option<usize>,
    /// Multiple of 8; default 512, or the init image's height rounded down to a multiple of 8.
    #[arg(long)]
    pub height: Option<usize>,
    /// Init image for image-to-image (any size and mode; converted to RGB and resized).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Inpainting mask for --image. Without it, fully transparent pixels of --image are the mask.
    #[arg(long, requires = "image")]
    pub mask: Option<PathBuf>,
    /// How to read --mask: white (white repaints, diffusers/A1111), alpha (fully transparent
    /// repaints, OpenAI), or auto (alpha when the mask has transparent pixels).
    #[arg(long, default_value = "auto", value_parser = ["auto", "white", "alpha"])]
    pub mask_convention: String,
    /// Share of the init image to repaint, 0 < s ≤ 1.
    #[arg(long, default_value_t = 0.8, requires = "image")]
    pub strength: f64,
    /// Use the mean of the VAE's latent distribution for the init image instead of a sample.
    #[arg(long, requires = "image")]
    pub vae_mean: bool,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// 1 = last CLIP layer, 2 = the one before (A1111's "Clip skip"; diffusers' clip_skip=1 is 2 here).
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// cpu, wgpu[:N] or cuda[:N].
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// auto (f16 on wgpu/cuda, f32 on cpu), f32 or f16. The VAE stays f32 when its config
    /// says `force_upcast` (SD 1.5's does), as diffusers does.
    #[arg(long, env = "KILN_PRECISION", default_value = "auto")]
    pub precision: String,
    /// Output file (PNG, or JPEG/WebP by extension or --format); with n > 1, out-0.png, out-1.png, …
    #[arg(long, short)]
    pub output: PathBuf,
    /// Start from these latents (tensor `latents`, [n, 4, H/8, W/8]) instead of seeded noise.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// png, jpeg or webp (lossless); default from --output's extension, else png.
    #[arg(long)]
    pub format: Option<String>,
    /// JPEG quality 1–100 (default 90).
    #[arg(long)]
    pub quality: Option<u8>,
    /// Leave out the A1111 `parameters` text chunk (prompt, seed, sampler, …) of PNG files.
    #[arg(long)]
    pub no_metadata: bool,
    /// DALL·E super-conditioning scale (default 10, as dalle-mini's notebook; min-dalle uses 16).
    #[arg(long)]
    pub cond_scale: Option<f32>,
    /// DALL·E sampling temperature (default 1).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// DALL·E top-k (default 50; 1 = greedy; 0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// DALL·E nucleus sampling (default 1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// DALL·E text handling: normalized (dalle-mini's TextNormalizer) or min-dalle (its simpler
    /// lower-casing tokenisation, for min-dalle's images).
    #[arg(long, value_parser = ["normalized", "min-dalle"])]
    pub tokenization: Option<String>,
    /// DALL·E: write the 256 image token ids of every image as JSON ([[…], …]).
    #[arg(long)]
    pub save_tokens: Option<PathBuf>,
    /// Write the final latents (tensor `latents`, before the VAE) to this safetensors file.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let spec: DeviceSpec = args.device.parse()?;
    let precision: Precision = args.precision.parse()?;
    let dalle = match args.model.as_deref() {
        Some(m) => m.starts_with("dalle"),
        None => kiln::models::dalle_mini::detect(&args.model_path).is_some(),
    };
    if dalle {
        return super::dalle::run(args, spec, precision);
    }
    let dalle_only = [
        ("--cond-scale", args.cond_scale.is_some()),
        ("--temperature", args.temperature.is_some()),
        ("--top-k", args.top_k.is_some()),
        ("--top-p", args.top_p.is_some()),
        ("--tokenization", args.tokenization.is_some()),
        ("--save-tokens", args.save_tokens.is_some()),
    ];
    if let Some((flag, _)) = dalle_only.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "{flag} applies to DALL·E models; {} is Stable Diffusion",
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
        let dtype = self.precision.resolve::<B>(self.spec, &device)?;
        let scheduler: SchedulerKind = a.scheduler.as_deref().unwrap_or("pndm").parse()?;
        let init_latents = match &a.init_latents {
            Some(p) => {
                let (_, values) = TensorFile::open(p)?.read_f32("latents")?;
                Some(values)
            }
            None => None,
        };
        let seed = a.seed.unwrap_or_else(kiln::noise::random_seed);
        let format = output_format(&a)?;
        let (width, height, condition) = image_condition(&a)?;
        let req = GenerateRequest {
            prompt: a.prompt.clone(),
            negative_prompt: a.negative_prompt.clone(),
            steps: a.steps.unwrap_or(50),
            guidance_scale: a.guidance_scale.unwrap_or(7.5),
            scheduler,
            width,
            height,
            n: a.n,
            seed,
            init_latents,
            clip_skip: a.clip_skip,
            eta: a.eta,
            strength: a.strength,
            sample_vae: !a.vae_mean,
            condition,
            ..Default::default()
        };
        let with_encoder = req.condition.is_some();
        let model = StableDiffusion::<B>::load_as(&a.model_path, with_encoder, &device, dtype)?;
        model.validate(&req)?;

        let bar = progress_bar("step");
        let out = model.generate(&req, &mut |step, total| {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            true
        })?;
        bar.finish_and_clear();

        if let Some(p) = &a.save_latents {
            let shape = out.latents.dims().to_vec();
            let data = out.latents.clone().into_data().convert_dtype(DType::F32);
            let values = data
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading latents: {e:?}"))?;
            write_f32(p, "latents", &shape, &values)?;
        }
        let images = image_io::to_rgb8(out.images)?;
        let model_name = a
            .model_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("sd15")
            .to_string();
        for (k, img) in images.iter().enumerate() {
            let path = image_io::numbered_path(&a.output, k, images.len());
            let params = Parameters {
                prompt: req.prompt.clone(),
                negative_prompt: req.negative_prompt.clone(),
                steps: req.steps,
                sampler: req.scheduler.a1111_label().to_string(),
                cfg_scale: req.guidance_scale,
                seed: out.seeds[k],
                width: req.width,
                height: req.height,
                model: model_name.clone(),
                clip_skip: req.clip_skip,
                denoising_strength: req.condition.as_ref().map(|_| req.strength),
            };
            let bytes =
                image_io::encode(img, format, a.quality, (!a.no_metadata).then_some(&params))?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("{} (seed {})", path.display(), out.seeds[k]);
        }
        Ok(())
    }
}

/// Size and init image/mask from the arguments: the image's size (rounded down to 8) is the
/// default size; a mask comes from --mask or from the image's transparent pixels.
fn image_condition(a: &GenerateArgs) -> anyhow::Result<(usize, usize, Option<ImageCondition>)> {
    let Some(path) = &a.image else {
        return Ok((a.width.unwrap_or(512), a.height.unwrap_or(512), None));
    };
    let img = open_image(path)?;
    let (dw, dh) = img2img::default_size(&img);
    let (width, height) = (a.width.unwrap_or(dw), a.height.unwrap_or(dh));
    let convention = match a.mask_convention.as_str() {
        "white" => MaskConvention::White,
        "alpha" => MaskConvention::Transparent,
        _ => MaskConvention::Auto,
    };
    let mask = match &a.mask {
        Some(p) => Some(img2img::mask_from_image(&open_image(p)?, convention)),
        None => {
            let m = img2img::mask_from_transparency(&img);
            if m.is_some() {
                tracing::info!(
                    "no --mask: inpainting the fully transparent pixels of {}",
                    path.display()
                );
            }
            m
        }
    };
    if width == 0 || height == 0 || width % 8 != 0 || height % 8 != 0 {
        anyhow::bail!(
            "width and height must be positive multiples of 8, got {width}x{height} (from {})",
            path.display()
        );
    }
    let cond = img2img::prepare(&img, mask.as_ref(), width, height)?;
    Ok((width, height, Some(cond)))
}

/// Opens an image, checking its dimensions before decoding the pixels.
fn open_image(path: &std::path::Path) -> anyhow::Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("opening {}", path.display()))?;
    let (w, h) = reader
        .into_dimensions()
        .with_context(|| format!("reading {}", path.display()))?;
    if u64::from(w) * u64::from(h) > 64 * 1024 * 1024 {
        anyhow::bail!("{}: {w}x{h} is too large", path.display());
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("opening {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {}", path.display()))
}

/// The output format: --format, else --output's extension, else PNG; --quality is JPEG's only.
pub(super) fn output_format(a: &GenerateArgs) -> anyhow::Result<ImageFormat> {
    let format = match &a.format {
        Some(f) => f.parse::<ImageFormat>()?,
        None => ImageFormat::from_path(&a.output).unwrap_or(ImageFormat::Png),
    };
    if a.quality.is_some() && format != ImageFormat::Jpeg {
        anyhow::bail!(
            "--quality applies to JPEG only ({} output is lossless)",
            format.extension()
        );
    }
    Ok(format)
}

/// A terminal progress bar over `what` steps (hidden when stderr is not a terminal).
pub(super) fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let template =
        format!("{{spinner}} {what} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
