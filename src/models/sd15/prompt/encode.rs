//! Chunks → CLIP hidden states: every chunk through the text encoder on its own (clip skip per
//! chunk), embedding vectors in place, then A1111's "Original" emphasis
//! (`modules/sd_emphasis.py`): the hidden states times each token's weight, rescaled so the
//! chunk's mean is what it was. The chunks are then laid end to end: `[1, k·77, D]`.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tracing::debug;

use super::{CHUNK_LEN, Chunk, PromptSyntax, PromptVocab};
use crate::error::{Error, Result};
use crate::models::sd15::clip::ClipTextModel;
use crate::models::sd15::pipeline::StableDiffusion;
use crate::models::sd15::textual_inversion::Embeddings;

/// The most chunks one prompt may take (38 400 tokens): every prompt the API's 32 000-character
/// limit admits fits, while a multi-megabyte prompt file fails here instead of asking the UNet to
/// attend over millions of tokens.
pub const MAX_CHUNKS: usize = 512;

/// Chunks per text-encoder call: bounds CLIP's activations (ViT-L's MLP holds 77 × 3072 f32
/// per chunk, 0.9 MiB; 16 chunks ≈ 15 MiB) whatever the prompt's length.
const CLIP_BATCH: usize = 16;

impl<B: Backend> StableDiffusion<B> {
    /// Uses `embeddings` in prompts from now on (replacing any set before). Each must be as wide
    /// as the text encoder.
    pub fn set_embeddings(&mut self, embeddings: Embeddings) -> Result<()> {
        let width = self.parts.clip_config.hidden_size;
        if let Some(e) = embeddings.iter().find(|e| e.dim != width) {
            return Err(Error::io(
                &e.path,
                format!(
                    "{}-d vectors, this model's text encoder is {width}-d",
                    e.dim
                ),
            ));
        }
        self.prompt_vocab = PromptVocab::new(&self.parts.tokenizer, embeddings)?;
        Ok(())
    }

    pub fn embeddings(&self) -> &Embeddings {
        &self.prompt_vocab.embeddings
    }

    /// `text` read as `syntax` → `[1, 77·k, D]`: 75-token chunks, each encoded on its own, with
    /// emphasis weights and embeddings applied (see [`super::prompt`]).
    pub fn encode_prompt_as(
        &self,
        text: &str,
        syntax: PromptSyntax,
        clip_skip: usize,
    ) -> Result<Tensor<B, 3>> {
        self.encode_prompt_by(&self.parts.text_encoder, text, syntax, clip_skip)
    }

    /// [`encode_prompt_as`](Self::encode_prompt_as) by `encoder`: the base text encoder or a
    /// LoRA variant's.
    pub(in crate::models::sd15) fn encode_prompt_by(
        &self,
        encoder: &ClipTextModel<B>,
        text: &str,
        syntax: PromptSyntax,
        clip_skip: usize,
    ) -> Result<Tensor<B, 3>> {
        let chunks = self.prompt_chunks(text, syntax)?;
        debug!(chunks = chunks.len(), %syntax, "prompt tokenized");
        if chunks.len() > MAX_CHUNKS {
            return Err(Error::invalid(format!(
                "the prompt is {} chunks of {CHUNK_LEN} tokens; at most {MAX_CHUNKS} are allowed",
                chunks.len()
            )));
        }
        let parts = chunks
            .chunks(CLIP_BATCH)
            .map(|group| {
                encode_chunks(
                    encoder,
                    group,
                    &self.prompt_vocab.embeddings,
                    clip_skip,
                    self.device(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(parts, 1))
    }

    /// `text` as the 77-token chunks [`encode_prompt_as`](Self::encode_prompt_as) encodes.
    pub fn prompt_chunks(&self, text: &str, syntax: PromptSyntax) -> Result<Vec<Chunk>> {
        self.prompt_vocab
            .chunks(&self.parts.tokenizer, text, syntax)
    }

    /// Tokens of `text` the text encoder reads, padding left out: each chunk's start and end
    /// tokens and the prompt tokens between them (an empty prompt reads 2).
    pub fn prompt_tokens(&self, text: &str, syntax: PromptSyntax) -> Result<usize> {
        let eos = self.parts.tokenizer.framing().eos;
        Ok(self
            .prompt_chunks(text, syntax)?
            .iter()
            .map(|c| {
                let body = c.ids.iter().skip(1).position(|&id| id == eos);
                body.map_or(c.ids.len(), |i| i + 2)
            })
            .sum())
    }

    /// Prompt and negative prompt encoded, the shorter padded with empty-prompt chunks to the
    /// other's length (A1111's `pad_cond_uncond`), so both fit one batched UNet call.
    pub fn encode_prompt_pair(
        &self,
        prompt: &str,
        negative: &str,
        syntax: PromptSyntax,
        clip_skip: usize,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
        let encoder = &self.parts.text_encoder;
        self.encode_pair_by(encoder, prompt, negative, syntax, clip_skip)
    }

    /// [`encode_prompt_pair`](Self::encode_prompt_pair) by `encoder`.
    pub(in crate::models::sd15) fn encode_pair_by(
        &self,
        encoder: &ClipTextModel<B>,
        prompt: &str,
        negative: &str,
        syntax: PromptSyntax,
        clip_skip: usize,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 3>)> {
        let cond = self.encode_prompt_by(encoder, prompt, syntax, clip_skip)?;
        let uncond = self.encode_prompt_by(encoder, negative, syntax, clip_skip)?;
        let (lc, lu) = (cond.dims()[1], uncond.dims()[1]);
        if lc == lu {
            return Ok((cond, uncond));
        }
        let empty = self.encode_prompt_by(encoder, "", PromptSyntax::Plain, clip_skip)?;
        let chunks = lc.max(lu) / empty.dims()[1];
        Ok((
            pad_to_chunks(cond, chunks, &empty),
            pad_to_chunks(uncond, chunks, &empty),
        ))
    }
}

/// `chunks` → `[1, k·77, D]` in one batched CLIP call (the rows do not interact).
pub fn encode_chunks<B: Backend>(
    clip: &ClipTextModel<B>,
    chunks: &[Chunk],
    embeddings: &Embeddings,
    clip_skip: usize,
    device: &B::Device,
) -> Result<Tensor<B, 3>> {
    let k = chunks.len();
    let s = chunks.first().map_or(0, |c| c.ids.len());
    let (ids, multipliers, fixes) = flatten(chunks);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [k, s]), device);
    let inserts = fixes
        .into_iter()
        .filter_map(|(row, at, index)| {
            let e = embeddings.at(index)?;
            let v = TensorData::new(e.vectors().to_vec(), [e.count(), e.dim]);
            Some((row, at, Tensor::<B, 2>::from_data(v, device)))
        })
        .collect();
    let z = clip.forward_embedded(ids, inserts, clip_skip);
    let [_, _, d] = z.dims();
    // All weights 1 leaves z exactly as it is (z·1 has the same mean), so skip the work.
    let z = if multipliers.iter().any(|&m| m != 1.0) {
        let m = Tensor::<B, 1>::from_data(TensorData::new(multipliers, [k * s]), device)
            .reshape([k, s, 1])
            .expand([k, s, d]);
        let rows = |z: &Tensor<B, 3>| z.clone().reshape([k, s * d]);
        let original = rows(&z).mean_dim(1);
        let z = z * m;
        let new = rows(&z).mean_dim(1);
        let size = rows(&z).abs().mean_dim(1);
        let ratio = restore_ratios(original, new, size)?;
        z * Tensor::<B, 1>::from_data(TensorData::new(ratio, [k]), device)
            .reshape([k, 1, 1])
            .expand([k, s, d])
    } else {
        z
    };
    Ok(z.reshape([1, k * s, d]))
}

/// `[1, k·77, D]` grown to `chunks` chunks with copies of `empty` (the empty prompt's chunk,
/// `[1, 77, D]`), as A1111's `pad_cond_uncond` pads the shorter of prompt and negative prompt.
fn pad_to_chunks<B: Backend>(z: Tensor<B, 3>, chunks: usize, empty: &Tensor<B, 3>) -> Tensor<B, 3> {
    let [_, len, _] = z.dims();
    let [_, s, _] = empty.dims();
    let have = len / s.max(1);
    if have >= chunks {
        return z;
    }
    let mut parts = vec![z];
    parts.extend(std::iter::repeat_n(empty.clone(), chunks - have));
    Tensor::cat(parts, 1)
}

/// `(chunk, position, embedding index)`: where an embedding's vectors go.
type Placement = (usize, usize, usize);

/// Ids `[k·77]`, multipliers and embedding placements of `chunks`, flat.
fn flatten(chunks: &[Chunk]) -> (Vec<i64>, Vec<f32>, Vec<Placement>) {
    let ids = chunks
        .iter()
        .flat_map(|c| c.ids.iter().map(|&i| i64::from(i)))
        .collect();
    let multipliers = chunks
        .iter()
        .flat_map(|c| c.multipliers.iter().copied())
        .collect();
    let fixes = chunks
        .iter()
        .enumerate()
        .flat_map(|(k, c)| c.fixes.iter().map(move |&(p, e)| (k, p, e)))
        .collect();
    (ids, multipliers, fixes)
}

/// A1111's mean restoration factor of each chunk, `original mean / weighted mean`, read on the
/// host (the three `[k, 1]` means in one read). Where the weighted mean is ~0 next to the hidden states' own size (a CLIP
/// whose final layer norm centres every token, as the random demo model's does; never SD's
/// CLIP, whose means are ~10% of the magnitudes), the division would only amplify rounding
/// noise into NaN or huge values: the chunk keeps its weighted states unscaled instead.
fn restore_ratios<B: Backend>(
    original: Tensor<B, 2>,
    weighted: Tensor<B, 2>,
    size: Tensor<B, 2>,
) -> Result<Vec<f32>> {
    let means = crate::nn::host_f32(Tensor::cat(vec![original, weighted, size], 1))?;
    Ok(means
        .chunks_exact(3)
        .map(|m| {
            let (o, w, a) = (m[0], m[1], m[2]);
            let r = o / w;
            if w.abs() > 1e-4 * a && r.is_finite() {
                r
            } else {
                1.0
            }
        })
        .collect())
}
