//! A fake pipeline for tests of the HTTP layer: no model, deterministic images from the seed,
//! an optional delay per step so queueing and cancellation can be observed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use image::{Rgb, RgbImage};

use kiln::engine::{
    EngineError, Family, GeneratedImage, ImageJob, ImagePipeline, Moderation, Progress,
    ServedModel, TokenUsage,
};

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub family: Family,
    pub step_delay: Duration,
    pub default_steps: usize,
    /// A prompt that makes `generate` panic (to test that panics become 500s).
    pub panic_prompt: Option<String>,
    /// A prompt that makes `generate` fail with an error.
    pub fail_prompt: Option<String>,
    /// Each step waits (still reporting progress, so it can be cancelled) until this is set:
    /// tests hold jobs running without timing them.
    pub gate: Option<Arc<AtomicBool>>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            family: Family::Sd15,
            step_delay: Duration::ZERO,
            default_steps: 4,
            panic_prompt: None,
            fail_prompt: None,
            gate: None,
        }
    }
}

pub struct FakePipeline {
    cfg: FakeConfig,
}

impl FakePipeline {
    pub fn new(cfg: FakeConfig) -> Self {
        Self { cfg }
    }

    /// A [`ServedModel`] serving this fake under `id` on a worker of its own (`device` "fake").
    pub fn spec(id: &str, cfg: FakeConfig) -> ServedModel {
        ServedModel {
            id: id.into(),
            family: cfg.family,
            device: format!("fake-{id}"),
            source: "fake pipeline (tests)".into(),
            demo: false,
            loader: Arc::new(move || {
                Ok(Box::new(FakePipeline::new(cfg.clone())) as Box<dyn ImagePipeline>)
            }),
        }
    }

    /// The image for `seed`: a colour from the seed plus a gradient, so images differ by seed
    /// and are identical for equal seeds. `level` in (0, 1] dims previews.
    pub fn render(seed: u64, width: u32, height: u32, level: f32) -> RgbImage {
        let h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let base = [(h >> 8) as u8, (h >> 24) as u8, (h >> 40) as u8];
        RgbImage::from_fn(width, height, |x, y| {
            let gx = (x * 255 / width.max(1)) as u8;
            let gy = (y * 255 / height.max(1)) as u8;
            let px = [base[0] ^ gx, base[1] ^ gy, base[2]];
            Rgb(px.map(|v| (f32::from(v) * level) as u8))
        })
    }
}

/// The fake safety checker's word: with `moderation: auto`, it flags the images of a prompt
/// containing it whose index is even (image 0 always); with `low`, none.
pub const FLAG_WORD: &str = "flagme";

impl ImagePipeline for FakePipeline {
    fn family(&self) -> Family {
        self.cfg.family
    }

    /// Words of the prompt plus start and end; one output token per 8×8 pixels.
    fn usage(&self, job: &ImageJob) -> Result<TokenUsage, EngineError> {
        let positions = job.width / 8 * (job.height / 8);
        Ok(TokenUsage {
            text_tokens: job.prompt.split_whitespace().count() as u32 + 2,
            image_tokens: if job.init.is_some() { positions } else { 0 },
            output_tokens: positions * job.n as u32,
        })
    }

    fn moderate(
        &mut self,
        job: &ImageJob,
        images: &[GeneratedImage],
    ) -> Result<Vec<bool>, EngineError> {
        let flag = job.prompt.contains(FLAG_WORD) && job.moderation == Moderation::Auto;
        Ok((0..images.len()).map(|i| flag && i % 2 == 0).collect())
    }

    fn generate(
        &mut self,
        job: &ImageJob,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Vec<GeneratedImage>, EngineError> {
        if self.cfg.panic_prompt.as_deref() == Some(job.prompt.as_str()) {
            panic!("fake pipeline asked to panic");
        }
        if self.cfg.fail_prompt.as_deref() == Some(job.prompt.as_str()) {
            return Err(EngineError::Failed("fake pipeline asked to fail".into()));
        }
        let (w, h) = self
            .cfg
            .family
            .native_size()
            .unwrap_or((job.width, job.height));
        let total = job.steps.unwrap_or(self.cfg.default_steps).max(1);
        let previews = job.preview_steps(total);
        for step in 1..=total {
            std::thread::sleep(self.cfg.step_delay);
            while self
                .cfg
                .gate
                .as_ref()
                .is_some_and(|g| !g.load(Ordering::Acquire))
            {
                let p = Progress {
                    step: step - 1,
                    total,
                    preview: None,
                    decoding: false,
                };
                if !progress(p) {
                    return Err(EngineError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let preview = previews
                .contains(&step)
                .then(|| Self::render(job.seed, w, h, step as f32 / total as f32));
            if !progress(Progress {
                step,
                total,
                preview,
                decoding: false,
            }) {
                return Err(EngineError::Cancelled);
            }
        }
        Ok((0..job.n as u64)
            .map(|k| {
                let seed = job.seed.wrapping_add(k);
                GeneratedImage::new(Self::render(seed, w, h, 1.0), seed)
            })
            .collect())
    }
}
