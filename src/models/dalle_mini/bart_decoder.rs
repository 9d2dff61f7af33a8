//! DalleBart image-token decoder (min-dalle `dalle_bart_decoder.py`).
//!
//! Decoding is incremental: the self-attention keys/values live in a cache preallocated for all
//! 256 positions (written in place, one slot per step), and the cross-attention keys/values of
//! the encoder states are projected once per request instead of at every step as dalle-mini and
//! min-dalle do (~90% of their decode FLOPs). `forward_full` is the plain, uncached computation
//! that tests compare against.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use super::bart_encoder::{Attention, BiasLayerNorm, Glu, layer_norm};
use super::config::DalleBartConfig;
use crate::nn::{Embedding, LayerNorm, Linear, WeightLayout};

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub pre_self_attn_layer_norm: BiasLayerNorm<B>,
    pub self_attn: Attention<B>,
    pub self_attn_layer_norm: LayerNorm<B>,
    pub pre_encoder_attn_layer_norm: BiasLayerNorm<B>,
    pub encoder_attn: Attention<B>,
    pub encoder_attn_layer_norm: LayerNorm<B>,
    pub glu: Glu<B>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn new(cfg: &DalleBartConfig, device: &B::Device) -> Self {
        let (d, h) = (cfg.d_model, cfg.decoder_attention_heads);
        Self {
            pre_self_attn_layer_norm: BiasLayerNorm::new(d, device),
            self_attn: Attention::new(d, h, device),
            self_attn_layer_norm: layer_norm(d, device),
            pre_encoder_attn_layer_norm: BiasLayerNorm::new(d, device),
            encoder_attn: Attention::new(d, h, device),
            encoder_attn_layer_norm: layer_norm(d, device),
            glu: Glu::new(d, cfg.decoder_ffn_dim, device),
        }
    }

    /// Cross-attention and feed-forward halves, shared by the cached and uncached paths.
    fn cross_and_glu(
        &self,
        x: Tensor<B, 3>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        pad: Tensor<B, 4, Bool>,
    ) -> Tensor<B, 3> {
        let q = self
            .encoder_attn
            .queries(self.pre_encoder_attn_layer_norm.forward(x.clone()));
        let c = self.encoder_attn.attend(q, k, v, Some(pad), false);
        let x = x + self.encoder_attn_layer_norm.forward(c);
        x.clone() + self.glu.forward(x)
    }

    /// One position for every row: writes this step's key/value into slot `t` of the cache and
    /// attends over slots `0..=t`. The cache is moved through so that the write can happen in
    /// place (a second handle would force backends to copy the buffer).
    fn step(
        &self,
        x: Tensor<B, 3>,
        cache: LayerCache<B>,
        t: usize,
        pad: Tensor<B, 4, Bool>,
    ) -> (Tensor<B, 3>, LayerCache<B>) {
        let h = self.pre_self_attn_layer_norm.forward(x.clone());
        let [q, k, v] = self.self_attn.queries_keys_values(h);
        let [r, heads, _, dh] = k.dims();
        let seen = [0..r, 0..heads, 0..t + 1, 0..dh];
        let LayerCache {
            keys,
            values,
            cross_keys,
            cross_values,
        } = cache;
        let keys = crate::nn::write_position(keys, t, k);
        let values = crate::nn::write_position(values, t, v);
        let a = if crate::nn::attends_cache_prefix::<B>() {
            let (k, v) = (keys.clone().slice(seen.clone()), values.clone().slice(seen));
            self.self_attn.attend(q, k, v, None, false)
        } else {
            // The whole cache, the slots after `t` masked: the same shapes at every step.
            let slots = keys.dims()[2];
            let later = Tensor::<B, 1, Int>::arange(0..slots as i64, &keys.device())
                .greater_elem(t as i64)
                .reshape([1, 1, 1, slots]);
            self.self_attn
                .attend(q, keys.clone(), values.clone(), Some(later), false)
        };
        let x = x + self.self_attn_layer_norm.forward(a);
        let x = self.cross_and_glu(x, cross_keys.clone(), cross_values.clone(), pad);
        (
            x,
            LayerCache {
                keys,
                values,
                cross_keys,
                cross_values,
            },
        )
    }

    fn forward_full(
        &self,
        x: Tensor<B, 3>,
        enc: Tensor<B, 3>,
        pad: Tensor<B, 4, Bool>,
    ) -> Tensor<B, 3> {
        let h = self.pre_self_attn_layer_norm.forward(x.clone());
        let (k, v) = self.self_attn.keys_values(h.clone());
        let a = self
            .self_attn
            .attend(self.self_attn.queries(h), k, v, None, true);
        let x = x + self.self_attn_layer_norm.forward(a);
        let (ck, cv) = self.encoder_attn.keys_values(enc);
        self.cross_and_glu(x, ck, cv, pad)
    }
}

/// One layer's decoding state: self-attention K/V for every position `[R, H, 256, Dh]` and the
/// projected encoder states `[R, H, S, Dh]`.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
    pub cross_keys: Tensor<B, 4>,
    pub cross_values: Tensor<B, 4>,
}

/// Decoding state of a batch of rows: one `LayerCache` per layer, the text padding mask and the
/// number of positions decoded so far.
#[derive(Debug, Clone)]
pub struct DecoderCache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
    pub pad: Tensor<B, 4, Bool>,
    pub position: usize,
}

#[derive(Module, Debug)]
pub struct BartDecoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub embed_positions: Embedding<B>,
    pub layernorm_embedding: LayerNorm<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub final_ln: BiasLayerNorm<B>,
    pub lm_head: Linear<B>,
}

impl<B: Backend> BartDecoder<B> {
    pub fn new(cfg: &DalleBartConfig, device: &B::Device) -> Self {
        let d = cfg.d_model;
        Self {
            embed_tokens: Embedding::new(cfg.image_rows(), d, device),
            embed_positions: Embedding::new(cfg.image_length, d, device),
            layernorm_embedding: layer_norm(d, device),
            layers: (0..cfg.decoder_layers)
                .map(|_| DecoderLayer::new(cfg, device))
                .collect(),
            final_ln: BiasLayerNorm::new(d, device),
            lm_head: Linear::new(d, cfg.image_rows(), false, WeightLayout::OutIn, device),
        }
    }

    /// Positions the decoder has embeddings for (256).
    pub fn max_positions(&self) -> usize {
        self.embed_positions.weight.dims()[0]
    }

    /// Prepares decoding of `rows.len()` sequences; decoder row `i` attends to encoder row
    /// `rows[i]` of `enc` `[E, S, d]` (with its padding mask `pad` `[E, 1, 1, S]`). The cross
    /// K/V are projected on the E encoder rows once, then gathered per decoder row.
    pub fn start(
        &self,
        enc: Tensor<B, 3>,
        pad: Tensor<B, 4, Bool>,
        rows: &[usize],
    ) -> DecoderCache<B> {
        let device = enc.device();
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        let positions = self.max_positions();
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let (ck, cv) = layer.encoder_attn.keys_values(enc.clone());
                let [_, heads, _, dh] = ck.dims();
                let shape = [rows.len(), heads, positions, dh];
                let empty = || Tensor::zeros(shape, (&device, ck.dtype()));
                LayerCache {
                    keys: empty(),
                    values: empty(),
                    cross_keys: ck.select(0, idx.clone()),
                    cross_values: cv.select(0, idx.clone()),
                }
            })
            .collect();
        DecoderCache {
            layers,
            pad: pad.select(0, idx),
            position: 0,
        }
    }

    /// Feeds one token per row (`tokens.len()` = rows of the cache) at the next position and
    /// returns the logits `[R, image rows]` for the position after it.
    pub fn step(&self, tokens: &[u32], cache: &mut DecoderCache<B>) -> Tensor<B, 2> {
        let t = cache.position;
        assert!(
            t < self.max_positions(),
            "decoded past the {} image positions",
            self.max_positions()
        );
        let device = cache.pad.device();
        let r = tokens.len();
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [r, 1]), &device);
        let pos = self
            .embed_positions
            .weight
            .val()
            .narrow(0, t, 1)
            .unsqueeze::<3>();
        let mut x = self
            .layernorm_embedding
            .forward(self.embed_tokens.forward(ids) + pos);
        let old = std::mem::take(&mut cache.layers);
        for (layer, lc) in self.layers.iter().zip(old) {
            let (y, lc) = layer.step(x, lc, t, cache.pad.clone());
            x = y;
            cache.layers.push(lc);
        }
        cache.position += 1;
        // Logits go to the host sampler in f32 whatever the weights' dtype.
        let logits = self.lm_head.forward(self.final_ln.forward(x));
        let rows = logits.dims()[2];
        logits.reshape([r, rows]).cast(DType::F32)
    }

    /// Uncached teacher-forced pass: `tokens` `[R, T]` (start token first) against encoder
    /// states `enc` `[R, S, d]`; returns logits `[R, T, image rows]`.
    pub fn forward_full(
        &self,
        tokens: Tensor<B, 2, Int>,
        enc: Tensor<B, 3>,
        pad: Tensor<B, 4, Bool>,
    ) -> Tensor<B, 3> {
        let t = tokens.dims()[1];
        let pos = self
            .embed_positions
            .weight
            .val()
            .narrow(0, 0, t)
            .unsqueeze::<3>();
        let mut x = self
            .layernorm_embedding
            .forward(self.embed_tokens.forward(tokens) + pos);
        for layer in &self.layers {
            x = layer.forward_full(x, enc.clone(), pad.clone());
        }
        self.lm_head
            .forward(self.final_ln.forward(x))
            .cast(DType::F32)
    }
}
