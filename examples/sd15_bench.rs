//! Timing of one SD 1.5 component, loaded from a full-size diffusers folder (random weights are
//! fine: `models/make_sd15_fixtures.py --full`). Driven by `benches/compare.py`, which runs this
//! and diffusers (or stable-diffusion.cpp) alternately and collects peak RSS.
//!
//! ```text
//! cargo run --release --example sd15_bench -- <model-dir> <unet|vae|clip|image|unet-profile> [timed] [warmup]
//! ```
//! `image` also takes an ldm single file as `<model-dir>`; `BENCH_IMAGE_STEPS` (default 20) and
//! `BENCH_IMAGE_SCHEDULER` (default ddim; any kiln scheduler id, e.g. euler) set its sampling.
//! `BENCH_IMAGE_SIZE` (default 512) is the pixel size of `image`, `unet` and `vae` (tiny models
//! on a slow device take e.g. 64). `BENCH_DEVICE` (cpu, wgpu[:N], cuda[:N]; default cpu; the
//! binary must be built with that feature) and `BENCH_PRECISION` (auto, f32, f16; default auto:
//! f32 on the CPU, f16 on a GPU, as the server) place the models; the VAE keeps f32 where its
//! config asks (`force_upcast`), as the server does.
//! Prints one JSON line on stdout: `{"component", "load_s", "times_s": [...], "median_s",
//! "device", "dtype"}`, plus `"device_memory": {"bytes_in_use", "bytes_reserved"}` on a GPU,
//! read after the timed runs (see [`kiln::backend::DeviceMemory`]).
//! `unet-profile` (CPU only) re-runs the UNet forward op by op with a timer around each op
//! category (Flex executes eagerly, so each op has finished when it returns).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use kiln::backend::{BackendTask, DeviceSpec};
use kiln::models::sd15::attention::{Attention, Transformer2DModel};
use kiln::models::sd15::clip::ClipTextModel;
use kiln::models::sd15::config::{ClipConfig, UNetConfig, VaeConfig};
use kiln::models::sd15::embeddings::timestep_embedding;
use kiln::models::sd15::resnet::ResnetBlock2D;
use kiln::models::sd15::unet_2d::UNet2DConditionModel;
use kiln::models::sd15::vae::AutoencoderKL;
use kiln::models::sd15::weights;
use kiln::models::sd15::{GenerateRequest, LoraSpec, StableDiffusion};
use kiln::nn::{merge_heads, sdpa_for, silu, split_heads};
use kiln::schedulers::SchedulerKind;
use kiln::weights::{KeyTarget, TensorFile, load_into_as, require_complete};

mod common;
use common::time_runs;

fn load<B: Backend, M: burn::module::Module<B>>(
    module: M,
    file: &Path,
    map: &dyn Fn(&str) -> KeyTarget,
    dtype: DType,
) -> M {
    let f = TensorFile::open(file).expect("weight file opens");
    let (m, r) = load_into_as(module, &f, map, dtype).expect("weights load");
    require_complete(&r, file).expect("every parameter loaded");
    m
}

/// Accumulates seconds per op category.
#[derive(Default)]
struct Prof(BTreeMap<&'static str, (f64, usize)>);

impl Prof {
    fn t<R>(&mut self, cat: &'static str, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let e = self.0.entry(cat).or_default();
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        r
    }
}

fn p_resnet<B: Backend>(
    p: &mut Prof,
    r: &ResnetBlock2D<B>,
    x: Tensor<B, 4>,
    temb: &Tensor<B, 2>,
) -> Tensor<B, 4> {
    let h = p.t("groupnorm+silu", || r.norm1.forward_silu(x.clone()));
    let t = p.t("linear(temb)", || {
        r.time_emb_proj
            .as_ref()
            .unwrap()
            .forward(silu(temb.clone()))
    });
    // Time embedding and shortcut are added inside the convolutions, as the model does.
    let h = p.t("conv3x3", || {
        r.conv1.forward_add(h, t.unsqueeze_dims::<4>(&[2, 3]))
    });
    let h = p.t("groupnorm+silu", || r.norm2.forward_silu(h));
    let x = match &r.conv_shortcut {
        Some(c) => p.t("conv1x1", || c.forward(x)),
        None => x,
    };
    p.t("conv3x3", || r.conv2.forward_add(h, x))
}

fn p_attn<B: Backend>(
    p: &mut Prof,
    a: &Attention<B>,
    x: Tensor<B, 3>,
    ctx: Option<&Tensor<B, 3>>,
    residual: Tensor<B, 3>,
    tag: &'static str,
) -> Tensor<B, 3> {
    let c = ctx.cloned().unwrap_or_else(|| x.clone());
    let q = p.t("linear(qkv,out)", || a.to_q.forward(x));
    let k = p.t("linear(qkv,out)", || a.to_k.forward(c.clone()));
    let v = p.t("linear(qkv,out)", || a.to_v.forward(c));
    let (q, k, v) = p.t("copies(split/merge heads)", || {
        (
            split_heads(q, a.heads),
            split_heads(k, a.heads),
            split_heads(v, a.heads),
        )
    });
    let held = a.to_q.weight.val().dtype();
    let o = p.t(tag, || sdpa_for(q, k, v, false, held));
    let o = p.t("copies(split/merge heads)", || merge_heads(o));
    p.t("linear(qkv,out)", || a.to_out[0].forward_add(o, residual))
}

fn p_transformer<B: Backend>(
    p: &mut Prof,
    tr: &Transformer2DModel<B>,
    x: Tensor<B, 4>,
    ctx: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let residual = x.clone();
    let x = p.t("groupnorm", || tr.norm.forward(x));
    let x = p.t("conv1x1", || tr.proj_in.forward(x));
    let mut t = p.t("copies(nchw<->tokens)", || kiln::nn::nchw_to_tokens(x));
    for blk in &tr.transformer_blocks {
        let n = p.t("layernorm", || blk.norm1.forward(t.clone()));
        t = p_attn(p, &blk.attn1, n, None, t, "attention(self sdpa)");
        let n = p.t("layernorm", || blk.norm2.forward(t.clone()));
        t = p_attn(p, &blk.attn2, n, Some(ctx), t, "attention(cross sdpa)");
        let n = p.t("layernorm", || blk.norm3.forward(t.clone()));
        let g = p.t("linear(ff)+geglu", || blk.ff.net_0.proj.forward_geglu(n));
        t = p.t("linear(ff)", || blk.ff.net_2.forward_add(g, t));
    }
    let x = p.t("copies(nchw<->tokens)", || {
        kiln::nn::tokens_to_nchw(t, [h, w])
    });
    p.t("conv1x1", || tr.proj_out.forward_add(x, residual))
}

fn p_unet<B: Backend>(
    p: &mut Prof,
    u: &UNet2DConditionModel<B>,
    sample: Tensor<B, 4>,
    timestep: f64,
    ctx: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    let batch = sample.dims()[0];
    let device = sample.device();
    let temb = p.t("linear(temb)", || {
        let t = timestep_embedding::<B>(
            &vec![timestep; batch],
            u.time_proj_dim,
            u.flip_sin_to_cos,
            u.freq_shift,
            &device,
        );
        u.time_embedding.forward(t)
    });
    let mut x = p.t("conv3x3", || u.conv_in.forward(sample));
    let mut skips = vec![x.clone()];
    for blk in &u.down_blocks {
        for (j, r) in blk.resnets.iter().enumerate() {
            x = p_resnet(p, r, x, &temb);
            if let Some(a) = blk.attentions.get(j) {
                x = p_transformer(p, a, x, ctx);
            }
            skips.push(x.clone());
        }
        for d in &blk.downsamplers {
            x = p.t("conv3x3(stride2)", || d.conv.forward(x));
            skips.push(x.clone());
        }
    }
    let m = &u.mid_block;
    x = p_resnet(p, &m.resnets[0], x, &temb);
    x = p_transformer(p, &m.attentions[0], x, ctx);
    x = p_resnet(p, &m.resnets[1], x, &temb);
    for blk in &u.up_blocks {
        for (j, r) in blk.resnets.iter().enumerate() {
            if let Some(s) = skips.pop() {
                x = p.t("copies(cat skip)", || Tensor::cat(vec![x, s], 1));
            }
            x = p_resnet(p, r, x, &temb);
            if let Some(a) = blk.attentions.get(j) {
                x = p_transformer(p, a, x, ctx);
            }
        }
        let size = skips.last().map(|s| {
            let [_, _, h, w] = s.dims();
            [h, w]
        });
        for up in &blk.upsamplers {
            let [_, _, h, w] = x.dims();
            let y = p.t("upsample(nearest)", || {
                interpolate(
                    x,
                    size.unwrap_or([h * 2, w * 2]),
                    InterpolateOptions::new(InterpolateMode::Nearest),
                )
            });
            x = p.t("conv3x3", || up.conv.forward(y));
        }
    }
    let x = p.t("groupnorm+silu", || u.conv_norm_out.forward_silu(x));
    p.t("conv3x3", || u.conv_out.forward(x))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Bench(common::Args);

pub fn main() {
    let usage = "usage: sd15_bench <model-dir> <unet|vae|clip|image|unet-profile> [timed] [warmup]";
    let args = common::Args::parse(usage, "unet", 2);
    // `RUST_LOG=kiln=debug` shows the pipeline's per-step times (the `image` component).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    common::run_on("sd15_bench", args.spec, Bench(args));
}

impl BackendTask for Bench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let common::Args {
            path: root,
            what,
            timed,
            warmup,
            spec,
            precision,
        } = self.0;
        let root = root.as_path();
        let dtype = precision
            .resolve::<B>(spec, &device)
            .unwrap_or_else(|e| panic!("{e}"));
        let size: usize = env_or("BENCH_IMAGE_SIZE", 512);
        let t0 = Instant::now();
        let (times, mut extra) = match what.as_str() {
            "unet" | "unet-profile" => {
                assert!(
                    what == "unet" || spec == DeviceSpec::Cpu,
                    "unet-profile times ops as they return, which only the CPU backend does"
                );
                let cfg = UNetConfig::load(&root.join("unet/config.json")).unwrap_or_default();
                let unet = load(
                    UNet2DConditionModel::<B>::new(&cfg, &device),
                    &root.join("unet/diffusion_pytorch_model.safetensors"),
                    &weights::unet_key,
                    dtype,
                );
                eprintln!("loaded unet in {:.2}s", t0.elapsed().as_secs_f64());
                let lat = size / 8;
                let sample = Tensor::<B, 4>::random(
                    [2, cfg.in_channels, lat, lat],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let ctx = Tensor::<B, 3>::random(
                    [2, 77, cfg.cross_attention_dim],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                if what == "unet" {
                    (
                        time_runs(timed, warmup, || {
                            let _ = unet.forward(sample.clone(), 981.0, &ctx).into_data();
                        }),
                        String::new(),
                    )
                } else {
                    let _ = unet.forward(sample.clone(), 981.0, &ctx).into_data();
                    let mut prof = Prof::default();
                    let mut times = Vec::new();
                    for _ in 0..timed {
                        let t = Instant::now();
                        let _ = p_unet(&mut prof, &unet, sample.clone(), 981.0, &ctx).into_data();
                        times.push(t.elapsed().as_secs_f64());
                    }
                    (times, profile_json(&prof, timed))
                }
            }
            "vae" => {
                let cfg = VaeConfig::load(&root.join("vae/config.json")).unwrap_or_default();
                let map = |k: &str| {
                    if k.starts_with("encoder.") || k.starts_with("quant_conv.") {
                        KeyTarget::Ignore
                    } else {
                        weights::vae_key(k)
                    }
                };
                // As the pipeline loader: f32 where the config asks for the upcast.
                let vae_dtype = if cfg.force_upcast { DType::F32 } else { dtype };
                let vae = load(
                    AutoencoderKL::<B>::new(&cfg, false, &device),
                    &root.join("vae/diffusion_pytorch_model.safetensors"),
                    &map,
                    vae_dtype,
                );
                eprintln!("loaded vae in {:.2}s", t0.elapsed().as_secs_f64());
                let lat = size / cfg.scale_factor();
                let z = Tensor::<B, 4>::random(
                    [1, cfg.latent_channels, lat, lat],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                (
                    time_runs(timed, warmup, || {
                        let _ = vae.decode(z.clone()).into_data();
                    }),
                    format!(",\"vae_dtype\":\"{vae_dtype:?}\""),
                )
            }
            "clip" => {
                let cfg =
                    ClipConfig::load(&root.join("text_encoder/config.json")).unwrap_or_default();
                let clip = load(
                    ClipTextModel::<B>::new(&cfg, &device),
                    &root.join("text_encoder/model.safetensors"),
                    &weights::clip_key,
                    dtype,
                );
                eprintln!("loaded clip in {:.2}s", t0.elapsed().as_secs_f64());
                let mut ids: Vec<i64> =
                    vec![49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407];
                ids.resize(77, 49407);
                let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 77]), &device);
                (
                    time_runs(timed, warmup, || {
                        let _ = clip.forward(ids.clone(), 1).into_data();
                    }),
                    String::new(),
                )
            }
            "image" => {
                // The whole text-to-image pipeline (CLIP, `BENCH_IMAGE_STEPS` steps with CFG,
                // VAE decode): its process's peak RSS is the pipeline's.
                let steps = env_or("BENCH_IMAGE_STEPS", 20);
                let scheduler: SchedulerKind = std::env::var("BENCH_IMAGE_SCHEDULER")
                    .as_deref()
                    .unwrap_or("ddim")
                    .parse()
                    .expect("a kiln scheduler id");
                let sd = StableDiffusion::<B>::load_as(root, false, &device, dtype)
                    .expect("SD 1.5 loads");
                eprintln!("loaded pipeline in {:.2}s", t0.elapsed().as_secs_f64());
                // The lcm row: BENCH_IMAGE_GUIDANCE=1 (no CFG batch) and BENCH_LORA=FILE, merged
                // on the first run and cached, as the server does.
                let guidance: f64 = env_or("BENCH_IMAGE_GUIDANCE", 7.5);
                // BENCH_IMAGE_N images in one request: the UNet runs at batch 2n with CFG.
                let n: usize = env_or("BENCH_IMAGE_N", 1);
                let loras = std::env::var("BENCH_LORA")
                    .ok()
                    .map(|p| LoraSpec {
                        path: p.into(),
                        weight: 1.0,
                    })
                    .into_iter()
                    .collect();
                let req = GenerateRequest {
                    prompt: "a photograph of an astronaut riding a horse".into(),
                    steps,
                    scheduler,
                    guidance_scale: guidance,
                    width: size,
                    height: size,
                    n,
                    loras,
                    ..Default::default()
                };
                (
                    time_runs(timed, warmup, || {
                        let out = sd.generate(&req, &mut |_, _| true).expect("generates");
                        let _ = out.images.into_data();
                    }),
                    format!(
                        ",\"steps\":{steps},\"n\":{n},\"scheduler\":\"{}\",\"guidance\":{guidance},\"lora\":{}",
                        scheduler.id(),
                        !req.loras.is_empty()
                    ),
                )
            }
            other => panic!("unknown component {other}"),
        };
        extra += &format!(",\"device\":\"{spec}\",\"dtype\":\"{dtype:?}\",\"size\":{size}");
        common::print_line::<B>(&what, &device, t0, &times, &extra);
    }
}

fn profile_json(prof: &Prof, timed: usize) -> String {
    let total: f64 = prof.0.values().map(|v| v.0).sum();
    let mut rows: Vec<_> = prof.0.iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let parts: Vec<String> = rows
        .iter()
        .map(|(k, (s, n))| {
            format!(
                "{{\"op\":\"{k}\",\"s_per_step\":{:.4},\"share\":{:.4},\"calls_per_step\":{}}}",
                s / timed as f64,
                s / total,
                n / timed
            )
        })
        .collect();
    format!(",\"profile\":[{}]", parts.join(","))
}
