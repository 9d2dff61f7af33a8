//! `kiln generate`: one-shot generation to image files. The flags fill the same [`JobParams`]
//! the server's request bodies do, and the job runs through the same family adapter
//! ([`pipeline::run`]), without the queue: the same options and seed give the same pixels as
//! `POST /v1/images/generations`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::backend::{DeviceList, DeviceSpec};
use kiln::engine::{
    DalleParams, EditInput, EngineError, JobExtras, JobParams, JobRules, loader_for,
    loras::parse_lora_arg, pipeline,
};
use kiln::image_io::{self, CLI_MAX_SIDE, ImageFormat, mask::MaskConvention};
use kiln::models::dalle_mini::Tokenization;
use kiln::models::sd15::NoiseOverrides;
use kiln::models::{Family, ModelKind};
use kiln::precision::{Placement, Precision};
use kiln::weights::TensorFile;

use super::addons::AddOnArgs;
use super::generate_out::write_outputs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: an SD 1.5 diffusers folder or single-file checkpoint (.safetensors / .ckpt), or a
    /// DALL·E Mini/Mega folder (flax_model.msgpack or min-dalle's encoder.pt/decoder.pt).
    #[arg(long, env = "KILN_MODEL_PATH")]
    pub model_path: PathBuf,
    /// Model family (sd15, dalle-mini, dalle-mega); detected from the files when absent, and
    /// checked against them when given.
    #[arg(long, value_parser = ["sd15", "dalle-mini", "dalle-mega"])]
    pub model: Option<String>,
    /// The text to draw (may be left out with --variation).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// What the image should not show (SD).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (SD; default 25).
    #[arg(long)]
    pub steps: Option<u32>,
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
    /// SD: a multiple of 8; default 512, or the init image's width rounded down to a multiple
    /// of 8. DALL·E renders 256 and resizes.
    #[arg(long)]
    pub width: Option<u32>,
    /// As --width.
    #[arg(long)]
    pub height: Option<u32>,
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
    /// Share of the init image to repaint, 0 < s ≤ 1 (default 0.8; 1.0 when inpainting).
    #[arg(long, requires = "image")]
    pub strength: Option<f64>,
    /// SD: a variation of --image (the API's /v1/images/variations): --prompt may be left
    /// out, and --strength defaults to 0.6.
    #[arg(long, requires = "image")]
    pub variation: bool,
    /// SD: how closely an edit keeps --image when --strength is not given: low (0.8, 1.0 when
    /// inpainting) or high (0.5); the API's `input_fidelity`.
    #[arg(long, requires = "image", value_parser = ["low", "high"])]
    pub input_fidelity: Option<String>,
    /// The API's `quality`: low, medium or high (SD: 12, 25 or 50 steps when --steps is not
    /// given; DALL·E: medium only). Not --quality, which is the JPEG quality.
    #[arg(long, value_parser = ["low", "medium", "high", "standard", "hd", "auto"])]
    pub quality_tier: Option<String>,
    /// With the safety checker on (--safety-checker): auto (its standard threshold) or low
    /// (less strict).
    #[arg(long, value_parser = ["auto", "low"])]
    pub moderation: Option<String>,
    /// Use the mean of the VAE's latent distribution for the init image instead of a sample.
    #[arg(long, requires = "image")]
    pub vae_mean: bool,
    /// Images per prompt.
    #[arg(long)]
    pub n: Option<u32>,
    /// 1 = last CLIP layer (default), 2 = the one before (A1111's "Clip skip"; diffusers'
    /// clip_skip=1 is 2 here).
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// cpu, wgpu[:N] or cuda[:N] (one device; a list is for `kiln serve`).
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// auto (f16 on wgpu/cuda, f32 on cpu), f32, f16 or bf16 (on the CPU: SD's weights held
    /// and multiplied in bf16, f32 between layers). The VAE stays f32 when its config says
    /// `force_upcast` (SD 1.5's does), as diffusers does.
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
    pub cond_scale: Option<f64>,
    /// DALL·E sampling temperature (default 1).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// DALL·E top-k (default 50; 1 = greedy; 0 = off).
    #[arg(long)]
    pub top_k: Option<u32>,
    /// DALL·E nucleus sampling (default 1 = off).
    #[arg(long)]
    pub top_p: Option<f64>,
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
    /// SD: apply a LoRA, `NAME[:WEIGHT]` (weight 1 by default); NAME is a file in the LoRA
    /// folder (without `.safetensors`) or a path. Repeatable. `<lora:NAME:WEIGHT>` in the
    /// prompt does the same.
    #[arg(long = "lora", value_name = "NAME_OR_PATH[:WEIGHT]")]
    pub loras: Vec<String>,
    /// SD: how prompts are read: a1111 (emphasis `(word:1.2)`, `[word]`, BREAK, no 77-token
    /// limit; the default) or plain (diffusers: the text as it is).
    #[arg(long, value_parser = ["a1111", "plain"])]
    pub prompt_syntax: Option<String>,
    /// SD: the final decoder: full (the model's VAE) or taesd (`kiln download taesd`; ~10×
    /// faster, slightly softer).
    #[arg(long, value_parser = ["full", "taesd"])]
    pub vae: Option<String>,
    /// Where the add-on folders are by default (loras/, embeddings/, taesd/).
    #[arg(long, env = "KILN_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    #[command(flatten)]
    pub addons: AddOnArgs,
}

/// The device of `--device`, which takes one here (`KILN_DEVICE` may hold the server's list).
fn one_device(s: &str) -> anyhow::Result<DeviceSpec> {
    let list: DeviceList = s.parse().with_context(|| format!("--device {s}"))?;
    list.single().ok_or_else(|| {
        anyhow::anyhow!(
            "--device {s}: `kiln generate` runs on one device, not {} (a list is for `kiln serve`)",
            list.len()
        )
    })
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let device = one_device(&args.device)?;
    let precision: Precision = args.precision.parse()?;
    let kind = model_kind(&args)?;
    let family = kind.family();
    refuse_other_family_extras(&args, family)?;
    let format = output_format(&args)?;
    let edit = edit_input(&args)?;
    let addons = args.addons.resolve(&args.models_dir);
    let rules = JobRules::cli(addons.loras.clone());
    let mut job = job_params(&args)?
        .into_job(family, &rules, edit)
        .map_err(flag_error)?;
    job.extras = extras(&args)?;

    let path = &args.model_path;
    let name = path.file_stem().and_then(|s| s.to_str());
    let name = name.unwrap_or(kind.as_str());
    let place = Placement { device, precision };
    let load = loader_for(kind, path, name, place, job.init.is_some(), &addons);
    let mut model = load().map_err(flag_error)?;
    let bar = progress_bar(match family {
        Family::Sd15 => "step",
        Family::DalleMini => "token",
    });
    let out = pipeline::run(model.as_mut(), &job, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        true
    })
    .map_err(flag_error)?;
    bar.finish_and_clear();
    for w in &out.withheld {
        eprintln!(
            "image {} (seed {}) withheld: the safety checker flagged it",
            w.index, w.seed
        );
    }
    write_outputs(&args, format, &out.images)
}

/// What --model-path holds (the catalog's detection), checked against --model when given.
fn model_kind(a: &GenerateArgs) -> anyhow::Result<ModelKind> {
    let path = &a.model_path;
    let kind = ModelKind::detect(path).with_context(|| {
        format!(
            "{}: not a model kiln recognises (an SD 1.5 diffusers folder or checkpoint, or a \
             DALL·E Mini/Mega folder)",
            path.display()
        )
    })?;
    match &a.model {
        Some(want) if want != kind.as_str() => {
            anyhow::bail!("--model {want}, but {} holds {kind}", path.display())
        }
        _ => Ok(kind),
    }
}

/// The CLI's own extras read one family's results; the other family's are refused by name
/// (the shared options are checked by `into_job`).
fn refuse_other_family_extras(a: &GenerateArgs, family: Family) -> anyhow::Result<()> {
    let extras = [
        ("--save-latents", a.save_latents.is_some(), Family::Sd15),
        ("--init-latents", a.init_latents.is_some(), Family::Sd15),
        ("--vae-mean", a.vae_mean, Family::Sd15),
        ("--save-tokens", a.save_tokens.is_some(), Family::DalleMini),
    ];
    match extras
        .iter()
        .find(|(_, given, owner)| *given && *owner != family)
    {
        Some((flag, _, owner)) => anyhow::bail!(
            "{flag} applies to {} only; {} is a {} model",
            owner.label(),
            a.model_path.display(),
            family.label()
        ),
        None => Ok(()),
    }
}

/// --image and --mask, decoded with the CLI's size bound.
fn edit_input(a: &GenerateArgs) -> anyhow::Result<Option<EditInput>> {
    let Some(p) = &a.image else {
        return Ok(None);
    };
    let image = image_io::open(p, CLI_MAX_SIDE)?;
    let mask = match &a.mask {
        Some(m) => Some(image_io::open(m, CLI_MAX_SIDE)?),
        None => {
            if image_io::mask::mask_from_transparency(&image).is_some() {
                tracing::info!(
                    "no --mask: inpainting the fully transparent pixels of {}",
                    p.display()
                );
            }
            None
        }
    };
    Ok(Some(EditInput {
        image,
        mask,
        convention: a.mask_convention.parse::<MaskConvention>()?,
    }))
}

fn extras(a: &GenerateArgs) -> anyhow::Result<JobExtras> {
    Ok(JobExtras {
        noise: NoiseOverrides {
            init_latents: match &a.init_latents {
                Some(p) => Some(TensorFile::open(p)?.read_f32("latents")?.1),
                None => None,
            },
            ..NoiseOverrides::default()
        },
        vae_mean: a.vae_mean,
        keep_latents: a.save_latents.is_some(),
        keep_tokens: a.save_tokens.is_some(),
        ..JobExtras::default()
    })
}

fn job_params(a: &GenerateArgs) -> anyhow::Result<JobParams> {
    let loras = a
        .loras
        .iter()
        .map(|l| parse_lora_arg(l))
        .collect::<Result<_, _>>();
    Ok(JobParams {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        n: a.n,
        width: a.width,
        height: a.height,
        seed: a.seed,
        steps: a.steps,
        guidance_scale: a.guidance_scale,
        scheduler: a.scheduler.clone(),
        strength: a.strength,
        eta: a.eta,
        clip_skip: a.clip_skip,
        loras: loras.map_err(flag_error)?,
        prompt_syntax: a.prompt_syntax.clone(),
        vae: a.vae.clone(),
        dalle: DalleParams {
            cond_scale: a.cond_scale,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            tokenization: a.tokenization.as_deref().map(|t| match t {
                "min-dalle" => Tokenization::MinDalle,
                _ => Tokenization::Normalized,
            }),
        },
        previews: 0,
        quality: a.quality_tier.clone(),
        input_fidelity: a.input_fidelity.clone(),
        moderation: a.moderation.clone(),
        variation: a.variation,
    })
}

/// An engine error in the CLI's words: the option it names becomes the flag.
fn flag_error(e: EngineError) -> anyhow::Error {
    match &e {
        EngineError::Invalid {
            param: Some(p),
            message,
        }
        | EngineError::Unsupported {
            param: Some(p),
            message,
        } => {
            let flag = match p.as_str() {
                "num_inference_steps" => "--steps".to_string(),
                "loras" => "--lora".to_string(),
                "size" => "--width/--height".to_string(),
                "quality" => "--quality-tier".to_string(),
                other => format!("--{}", other.replace('_', "-")),
            };
            anyhow::anyhow!("{}", message.replace(&format!("`{p}`"), &flag))
        }
        _ => e.into(),
    }
}

/// The output format: --format, else --output's extension, else PNG; --quality is JPEG's only.
fn output_format(a: &GenerateArgs) -> anyhow::Result<ImageFormat> {
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
fn progress_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let template =
        format!("{{spinner}} {what} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
