//! DALL·E Mini and Mega: DalleBart (text encoder + image-token decoder) and the VQGAN f16-16384
//! decoder, loading the published flax checkpoints or min-dalle's converted PyTorch files.
//!
//! # API
//! ```ignore
//! use kiln::models::dalle_mini::{DalleMini, DalleRequest, detect};
//! if detect(path).is_some() {
//!     let model = DalleMini::<B>::load(path, &device)?;          // flax or min-dalle folder
//!     let req = DalleRequest { prompt: "a red chair".into(), n: 2, seed: 7, ..Default::default() };
//!     let out = model.generate(&req, &mut |step, total| { bar.set(step, total); true })?;
//!     // out.images: [n, 3, 256, 256] in [0, 1]; out.rgb8[i]: 256·256·3 bytes (HWC)
//!     // out.tokens[i]: the 256 image tokens of image i; out.seeds[i] = seed + i
//! }
//! ```
//! Folder layouts (`detect`):
//! - flax: `flax_model.msgpack` + `config.json` + `vocab.json` + `merges.txt` (the
//!   `dalle-mini/dalle-mini` / `dalle-mega` repos);
//! - min-dalle: `encoder.pt` + `decoder.pt` + `vocab.json` + `merges.txt` (its
//!   `pretrained/dalle_bart_{mini,mega}` folder); `config.json` is optional (without it the shapes
//!   decide, heads = d_model / 64).
//!
//! The VQGAN is looked for in `PATH/vqgan`, `PATH/../vqgan` and `PATH/../vqgan_imagenet_f16_16384`
//! (or given with `load_with`): `flax_model.msgpack` (vqgan-jax), `detoker.pt` (min-dalle) or a
//! taming `.ckpt`; its `config.json` is optional (published f16-16384 shapes by default).
//! `enwiki-words-frequency.txt` in PATH (part of dalle-mini's Hub repos) enables the
//! normaliser's hashtag splitting; kiln does not ship that list.
//!
//! Generation: the prompt and the empty prompt are encoded as one batch of two; the n images
//! decode together as 2n rows (n unconditional, n conditional) with super-conditioning
//! `uncond + s·(cond − uncond)`; image i samples from its own seeded stream (`seed + i`), so it
//! equals the same image generated alone. See `sampling` for the exact rule.

pub mod bart_decoder;
pub mod bart_encoder;
pub mod config;
pub mod coverage;
pub mod flax_file;
pub mod loader;
pub mod msgpack;
pub mod sampling;
pub mod text_normalizer;
pub mod tokenizer;
pub mod vqgan;
pub mod weights;

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

pub use bart_decoder::BartDecoder;
pub use bart_encoder::BartEncoder;
pub use config::{DalleBartConfig, VqganConfig};
pub use loader::{Layout, detect};
pub use sampling::SamplingConfig;
pub use vqgan::Vqgan;

use crate::error::{Error, Result};
use crate::models::family::{ModelKind, dalle_defaults};
use crate::models::text_head::encode_head;
use crate::nn::{self, Stretch};
use crate::weights::LoadReport;
use text_normalizer::TextNormalizer;
use tokenizer::DalleTokenizer;

/// How the prompt becomes token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokenization {
    /// dalle-mini: `TextNormalizer` then the byte-level BPE (what the models were trained with).
    #[default]
    Normalized,
    /// min-dalle's simpler tokeniser, for images that match min-dalle's.
    MinDalle,
}

#[derive(Debug, Clone)]
pub struct DalleRequest {
    pub prompt: String,
    /// Images to generate (decoded together as one batch).
    pub n: usize,
    /// Image i uses `seed + i`.
    pub seed: u64,
    /// Super-conditioning scale (dalle-mini's notebook: 10; min-dalle: 16).
    pub cond_scale: f32,
    pub temperature: f32,
    /// 0 disables top-k (dalle-mini: 50; min-dalle: 256).
    pub top_k: usize,
    /// 1 disables nucleus sampling.
    pub top_p: f32,
    pub tokenization: Tokenization,
}

impl Default for DalleRequest {
    /// dalle-mini's inference-notebook settings.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            n: 1,
            seed: 0,
            cond_scale: dalle_defaults::COND_SCALE,
            temperature: dalle_defaults::TEMPERATURE,
            top_k: dalle_defaults::TOP_K,
            top_p: dalle_defaults::TOP_P,
            tokenization: Tokenization::Normalized,
        }
    }
}

impl DalleRequest {
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            cond_scale: self.cond_scale,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

pub struct DalleOutput<B: Backend> {
    /// `[n, 3, H, W]` in [0, 1].
    pub images: Tensor<B, 4>,
    /// One HWC RGB8 buffer per image (`uint8(x · 255)`, truncated as the references do).
    pub rgb8: Vec<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    /// The image tokens of each image (256, row-major 16×16).
    pub tokens: Vec<Vec<u32>>,
    pub seeds: Vec<u64>,
    /// The conditional text row fed to the encoder.
    pub text_ids: Vec<u32>,
}

/// A loaded DALL·E Mini or Mega.
pub struct DalleMini<B: Backend> {
    pub config: DalleBartConfig,
    pub vqgan_config: VqganConfig,
    pub layout: Layout,
    pub encoder: BartEncoder<B>,
    pub decoder: BartDecoder<B>,
    pub vqgan: Vqgan<B>,
    pub tokenizer: DalleTokenizer,
    pub normalizer: TextNormalizer,
    /// What the loads did (all files merged); missing is always empty after a successful load.
    pub report: LoadReport,
    pub device: B::Device,
}

impl<B: Backend> DalleMini<B> {
    /// Loads a flax or min-dalle folder (see the module docs) and its VQGAN.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        Self::load_with(path, None, device)
    }

    /// Like `load`, with the VQGAN folder or file given explicitly.
    pub fn load_with(path: &Path, vqgan: Option<&Path>, device: &B::Device) -> Result<Self> {
        loader::load(path, vqgan, device, burn::tensor::DType::F32)
    }

    /// Like `load_with`, with BART computing in `dtype` (f16 on GPUs; the VQGAN stays f32).
    pub fn load_as(
        path: &Path,
        vqgan: Option<&Path>,
        device: &B::Device,
        dtype: burn::tensor::DType,
    ) -> Result<Self> {
        loader::load(path, vqgan, device, dtype)
    }

    /// Mini or Mega, from the config's width (the catalog's rule).
    pub fn kind(&self) -> ModelKind {
        ModelKind::of_dalle_width(self.config.d_model)
    }

    /// "dalle-mega" or "dalle-mini".
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The unconditional and conditional text rows of `prompt`. Only a head of a long prompt
    /// is normalized and tokenized (see [`crate::models::text_head`]): the row keeps
    /// `max_len` ids.
    pub fn text_rows(
        &self,
        prompt: &str,
        tokenization: Tokenization,
        seed: u64,
    ) -> Result<[Vec<u32>; 2]> {
        let max_len = self.tokenizer.max_len;
        let cond = match tokenization {
            Tokenization::Normalized => {
                let (ids, _) = encode_head(
                    prompt,
                    |head| {
                        if self.config.normalize_text {
                            self.tokenizer
                                .encode(&self.normalizer.normalize(head, seed))
                        } else {
                            self.tokenizer.encode(head)
                        }
                    },
                    |&(_, used)| used >= max_len,
                )?;
                ids
            }
            Tokenization::MinDalle => self.tokenizer.min_dalle_row(prompt)?,
        };
        Ok([self.tokenizer.uncond_row(), cond])
    }

    /// Encoder states `[rows, 64, d]` and key-padding mask of the given text rows.
    pub fn encode(&self, rows: &[Vec<u32>]) -> (Tensor<B, 3>, Tensor<B, 4, burn::tensor::Bool>) {
        let s = self.tokenizer.max_len;
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&x| i64::from(x)))
            .collect();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), s]), &self.device);
        self.encoder.forward(ids)
    }

    /// Decodes `n` images from encoder rows `[uncond, cond]`; `uniform(i, t)` gives image i's
    /// random number at step t. Returns the tokens of each image.
    pub fn decode_tokens(
        &self,
        enc: Tensor<B, 3>,
        pad: Tensor<B, 4, burn::tensor::Bool>,
        n: usize,
        sampling: &SamplingConfig,
        uniform: &mut dyn FnMut(usize, usize) -> f64,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Vec<Vec<u32>>> {
        sampling.validate()?;
        let steps = self.config.image_length;
        let rows: Vec<usize> = (0..2 * n).map(|r| usize::from(r >= n)).collect();
        let mut cache = nn::run::<B, _>(Stretch::Layers, || self.decoder.start(enc, pad, &rows));
        let codebook = self.vqgan.codebook_size().min(self.config.image_rows());
        let mut feed = vec![self.config.decoder_start_token_id; 2 * n];
        let mut tokens = vec![Vec::with_capacity(steps); n];
        for t in 0..steps {
            // A stretch of many small ops (on the CPU one pool job per step with the workers as
            // a spinning team: its ~100 parallel loops then start within a µs of each other).
            let (width, host) = nn::run::<B, _>(Stretch::SmallOps, || {
                let logits = self.decoder.step(&feed, &mut cache);
                (logits.dims()[1], nn::host_f32(logits))
            });
            let host = host?;
            for (i, image) in tokens.iter_mut().enumerate() {
                let (uncond, cond) = (
                    &host[i * width..(i + 1) * width],
                    &host[(n + i) * width..(n + i + 1) * width],
                );
                if !cond[0].is_finite() {
                    return Err(Error::Numerical(format!("non-finite logits at step {t}")));
                }
                let token = sampling::sample_token(uncond, cond, codebook, sampling, uniform(i, t));
                image.push(token);
                feed[i] = token;
                feed[n + i] = token;
            }
            if !progress(t + 1, steps) {
                return Err(Error::Cancelled);
            }
        }
        Ok(tokens)
    }

    /// Text → tokens → images. `progress(step, total)` is called after each token step, and
    /// again with `step == total` before each image the VQGAN decodes; returning `false`
    /// cancels.
    pub fn generate(
        &self,
        req: &DalleRequest,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<DalleOutput<B>> {
        if req.n == 0 {
            return Err(Error::invalid("n must be at least 1"));
        }
        let start = std::time::Instant::now();
        let [uncond, cond] = self.text_rows(&req.prompt, req.tokenization, req.seed)?;
        tracing::debug!(ids = ?&cond[..cond.iter().position(|&x| x == tokenizer::PAD).unwrap_or(cond.len())], "dalle text tokens");
        // Through `nn::run`, as each decode step is.
        let (enc, pad) = nn::run::<B, _>(Stretch::Layers, || self.encode(&[uncond, cond.clone()]));
        let encoded = start.elapsed();
        let seeds: Vec<u64> = (0..req.n as u64)
            .map(|k| req.seed.wrapping_add(k))
            .collect();
        let mut rngs: Vec<sampling::TokenRng> =
            seeds.iter().map(|&s| sampling::TokenRng::new(s)).collect();
        let tokens = self.decode_tokens(
            enc,
            pad,
            req.n,
            &req.sampling(),
            &mut |i, _| rngs[i].uniform(),
            progress,
        )?;
        let decoded = start.elapsed();
        // One image at a time, asking `progress` again (step = total) before each, so that a
        // cancel does not wait for every image to be decoded.
        let steps = self.config.image_length;
        let mut images = Vec::with_capacity(tokens.len());
        for one in &tokens {
            if !progress(steps, steps) {
                return Err(Error::Cancelled);
            }
            let one = std::slice::from_ref(one);
            images.push(nn::run::<B, _>(Stretch::Layers, || {
                self.vqgan.decode(one, &self.device)
            }));
        }
        let images = Tensor::cat(images, 0);
        let [_, _, height, width] = images.dims();
        let rgb8 = vqgan::to_rgb8(images.clone());
        let done = start.elapsed();
        tracing::debug!(
            encode_s = encoded.as_secs_f64(),
            decode_s = (decoded - encoded).as_secs_f64(),
            vqgan_s = (done - decoded).as_secs_f64(),
            "dalle phases"
        );
        Ok(DalleOutput {
            images,
            rgb8,
            width,
            height,
            tokens,
            seeds,
            text_ids: cond,
        })
    }
}
