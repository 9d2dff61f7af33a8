//! DalleBart text encoder (min-dalle `dalle_bart_encoder.py`), plus the pieces the decoder
//! shares with it: bias-only LayerNorm, bias-free attention projections and the GLU block.
//!
//! Field names are min-dalle's state-dict names, so `encoder.pt` loads without renaming; the
//! Flax names are mapped onto them in `weights.rs`.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use super::config::{DalleBartConfig, LN_EPS};
use crate::nn::{Embedding, LayerNorm, Linear, WeightLayout, merge_heads, split_heads};

/// LayerNorm whose scale is fixed at 1 (dalle-mini's `force_ln_scale=false` norms): only a bias.
#[derive(Module, Debug)]
pub struct BiasLayerNorm<B: Backend> {
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> BiasLayerNorm<B> {
    pub fn new(d: usize, device: &B::Device) -> Self {
        Self {
            bias: Initializer::Zeros.init([d], device),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::nn::bias_layer_norm(x, self.bias.val(), LN_EPS)
    }
}

pub(crate) fn layer_norm<B: Backend>(d: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNorm::new(d, LN_EPS, true, device)
}

/// Multi-head attention projections without biases (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub q_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(d: usize, heads: usize, device: &B::Device) -> Self {
        let lin = || Linear::new(d, d, false, WeightLayout::OutIn, device);
        Self {
            k_proj: lin(),
            v_proj: lin(),
            q_proj: lin(),
            out_proj: lin(),
            heads,
        }
    }

    /// Keys and values of `x` split into heads: `[B, H, S, Dh]` each.
    pub fn keys_values(&self, x: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            split_heads(self.k_proj.forward(x.clone()), self.heads),
            split_heads(self.v_proj.forward(x), self.heads),
        )
    }

    /// Queries, keys and values of `x`, split into heads (one GEMV over the three weights
    /// for a decode step's few rows).
    pub fn queries_keys_values(&self, x: Tensor<B, 3>) -> [Tensor<B, 4>; 3] {
        Linear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x)
            .map(|t| split_heads(t, self.heads))
    }

    pub fn queries(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        split_heads(self.q_proj.forward(x), self.heads)
    }

    /// softmax(q kᵀ/√Dh + mask) v, then `out_proj`. `masked` is true where a key must be
    /// ignored; it broadcasts from `[B, 1, Sq|1, Sk]`.
    pub fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked: Option<Tensor<B, 4, Bool>>,
        causal: bool,
    ) -> Tensor<B, 3> {
        let [b, h, sq, _] = q.dims();
        let sk = k.dims()[2];
        // expanded to the full shape: not every backend broadcasts attention masks. Without a
        // mask kiln's CPU kernel reads the decode cache's slot prefix through its strides
        // (Flex's own attention first copies it, twice per layer and step).
        let masked = masked.map(|m| m.expand([b, h, sq, sk]));
        let out = crate::nn::sdpa_masked(q, k, v, masked, causal);
        self.out_proj.forward(merge_heads(out))
    }
}

/// Gated feed-forward block: `fc2(ln1(gelu(fc0(ln0 x)) ⊙ fc1(ln0 x)))`.
#[derive(Module, Debug)]
pub struct Glu<B: Backend> {
    pub ln0: BiasLayerNorm<B>,
    pub ln1: BiasLayerNorm<B>,
    pub fc0: Linear<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Glu<B> {
    pub fn new(d: usize, ffn: usize, device: &B::Device) -> Self {
        Self {
            ln0: BiasLayerNorm::new(d, device),
            ln1: BiasLayerNorm::new(ffn, device),
            fc0: Linear::new(d, ffn, false, WeightLayout::OutIn, device),
            fc1: Linear::new(d, ffn, false, WeightLayout::OutIn, device),
            fc2: Linear::new(ffn, d, false, WeightLayout::OutIn, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let z = self.ln0.forward(x);
        let [w, v] = Linear::forward_many([&self.fc0, &self.fc1], z);
        self.fc2
            .forward(self.ln1.forward(crate::nn::gelu_mul(w, v)))
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub pre_self_attn_layer_norm: BiasLayerNorm<B>,
    pub self_attn: Attention<B>,
    pub self_attn_layer_norm: LayerNorm<B>,
    pub glu: Glu<B>,
}

impl<B: Backend> EncoderLayer<B> {
    pub fn new(cfg: &DalleBartConfig, device: &B::Device) -> Self {
        let d = cfg.d_model;
        Self {
            pre_self_attn_layer_norm: BiasLayerNorm::new(d, device),
            self_attn: Attention::new(d, cfg.encoder_attention_heads, device),
            self_attn_layer_norm: layer_norm(d, device),
            glu: Glu::new(d, cfg.encoder_ffn_dim, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, pad: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let h = self.pre_self_attn_layer_norm.forward(x.clone());
        let (k, v) = self.self_attn.keys_values(h.clone());
        let h = self
            .self_attn
            .attend(self.self_attn.queries(h), k, v, Some(pad), false);
        let x = x + self.self_attn_layer_norm.forward(h);
        x.clone() + self.glu.forward(x)
    }
}

/// The text encoder: 64 token ids per row → `[B, 64, d]` states.
#[derive(Module, Debug)]
pub struct BartEncoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub embed_positions: Embedding<B>,
    pub layernorm_embedding: LayerNorm<B>,
    pub layers: Vec<EncoderLayer<B>>,
    pub final_ln: BiasLayerNorm<B>,
}

impl<B: Backend> BartEncoder<B> {
    pub fn new(cfg: &DalleBartConfig, device: &B::Device) -> Self {
        let d = cfg.d_model;
        Self {
            embed_tokens: Embedding::new(cfg.encoder_vocab_size, d, device),
            embed_positions: Embedding::new(cfg.max_text_length, d, device),
            layernorm_embedding: layer_norm(d, device),
            layers: (0..cfg.encoder_layers)
                .map(|_| EncoderLayer::new(cfg, device))
                .collect(),
            final_ln: BiasLayerNorm::new(d, device),
        }
    }

    /// `ids` `[B, S]` (pad id 1 on the right). Returns the states and the key-padding mask
    /// `[B, 1, 1, S]` (true = padding) that cross-attention needs.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Tensor<B, 4, Bool>) {
        let [b, s] = ids.dims();
        let pad = ids.clone().equal_elem(1).reshape([b, 1, 1, s]);
        let pos = self
            .embed_positions
            .weight
            .val()
            .narrow(0, 0, s)
            .unsqueeze::<3>();
        let mut x = self
            .layernorm_embedding
            .forward(self.embed_tokens.forward(ids) + pos);
        for layer in &self.layers {
            x = layer.forward(x, pad.clone());
        }
        (self.final_ln.forward(x), pad)
    }

    /// Like `forward`, also returning the embedding-LN output and every layer's output (tests).
    pub fn forward_traced(&self, ids: Tensor<B, 2, Int>) -> Vec<Tensor<B, 3>> {
        let [b, s] = ids.dims();
        let pad = ids.clone().equal_elem(1).reshape([b, 1, 1, s]);
        let pos = self
            .embed_positions
            .weight
            .val()
            .narrow(0, 0, s)
            .unsqueeze::<3>();
        let mut x = self
            .layernorm_embedding
            .forward(self.embed_tokens.forward(ids) + pos);
        let mut out = vec![x.clone()];
        for layer in &self.layers {
            x = layer.forward(x, pad.clone());
            out.push(x.clone());
        }
        out.push(self.final_ln.forward(x));
        out
    }
}
