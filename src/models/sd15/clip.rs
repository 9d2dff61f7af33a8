//! CLIP ViT-L/14 text encoder (transformers `CLIPTextModel`), the text half of
//! openai/clip-vit-large-patch14. Field names follow the checkpoint keys
//! (`text_model.encoder.layers.N.self_attn.q_proj.weight`, …).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::config::ClipConfig;
use crate::nn::{
    Embedding, LayerNorm, Linear, WeightLayout, gelu_exact, merge_heads, quick_gelu, sdpa,
    split_heads,
};

#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    pub text_model: ClipTextTransformer<B>,
}

#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    pub embeddings: ClipTextEmbeddings<B>,
    pub encoder: ClipEncoder<B>,
    pub final_layer_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub position_embedding: Embedding<B>,
}

#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    pub layers: Vec<ClipEncoderLayer<B>>,
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub self_attn: ClipAttention<B>,
    pub layer_norm1: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
    pub layer_norm2: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub heads: usize,
    /// The text tower attends causally (each token to those before it), the vision tower to
    /// every patch.
    pub causal: bool,
}

#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub quick: bool,
}

impl<B: Backend> ClipTextModel<B> {
    pub fn new(cfg: &ClipConfig, device: &B::Device) -> Self {
        let shape = ClipEncoderShape {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            hidden_act: &cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
            causal: true,
        };
        Self {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: Embedding::new(cfg.vocab_size, cfg.hidden_size, device),
                    position_embedding: Embedding::new(
                        cfg.max_position_embeddings,
                        cfg.hidden_size,
                        device,
                    ),
                },
                encoder: ClipEncoder::new(&shape, device),
                final_layer_norm: shape.layer_norm(device),
            },
        }
    }

    /// `last_hidden_state` for token ids `[B, S]`.
    ///
    /// `clip_skip` counts as A1111's "Clip skip": 1 is the last layer, 2 stops one layer earlier.
    /// diffusers counts layers skipped instead, so its `clip_skip=k` is `k + 1` here. The final
    /// layer norm is applied either way, as both do.
    pub fn forward(&self, ids: Tensor<B, 2, Int>, clip_skip: usize) -> Tensor<B, 3> {
        self.forward_embedded(ids, Vec::new(), clip_skip)
    }

    /// [`forward`](Self::forward) with token embeddings replaced: each `(row, position,
    /// vectors [n, D])` puts textual-inversion vectors at `position..position + n` of sequence
    /// `row`, before the position embeddings are added (A1111's `EmbeddingsWithFixes`, and what
    /// diffusers' added tokens amount to).
    pub fn forward_embedded(
        &self,
        ids: Tensor<B, 2, Int>,
        inserts: Vec<(usize, usize, Tensor<B, 2>)>,
        clip_skip: usize,
    ) -> Tensor<B, 3> {
        let m = &self.text_model;
        let [b, s] = ids.dims();
        let device = ids.device();
        let pos = Tensor::<B, 1, Int>::from_data(
            TensorData::new((0..s as i64).collect::<Vec<_>>(), [s]),
            &device,
        )
        .reshape([1, s])
        .expand([b, s]);
        let mut tokens = m.embeddings.token_embedding.forward(ids);
        for (row, at, vectors) in inserts {
            let [n, d] = vectors.dims();
            let vectors = vectors.cast(tokens.dtype()).reshape([1, n, d]);
            tokens = tokens.slice_assign([row..row + 1, at..at + n, 0..d], vectors);
        }
        let mut h = tokens + m.embeddings.position_embedding.forward(pos);
        let n = m.encoder.layers.len().saturating_sub(clip_skip.max(1) - 1);
        h = m.encoder.forward(h, n);
        // f32 out whatever the weights' dtype: callers mix it with host-made tensors.
        m.final_layer_norm.forward(h).cast(DType::F32)
    }
}

/// The sizes of a CLIP encoder stack, shared by the text tower (`CLIPTextConfig`) and the
/// vision tower (`CLIPVisionConfig`), which differ only in their embeddings and in masking.
pub struct ClipEncoderShape<'a> {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `quick_gelu` or `gelu` (checked when the config is read).
    pub hidden_act: &'a str,
    pub layer_norm_eps: f64,
    pub causal: bool,
}

impl ClipEncoderShape<'_> {
    pub fn layer_norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm::new(self.hidden_size, self.layer_norm_eps, true, device)
    }
}

impl<B: Backend> ClipEncoder<B> {
    pub fn new(shape: &ClipEncoderShape<'_>, device: &B::Device) -> Self {
        let (d, inner) = (shape.hidden_size, shape.intermediate_size);
        let linear = |i, o| Linear::new(i, o, true, WeightLayout::InOut, device);
        let layers = (0..shape.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    heads: shape.num_attention_heads,
                    causal: shape.causal,
                },
                layer_norm1: shape.layer_norm(device),
                mlp: ClipMlp {
                    fc1: linear(d, inner),
                    fc2: linear(inner, d),
                    quick: shape.hidden_act == "quick_gelu",
                },
                layer_norm2: shape.layer_norm(device),
            })
            .collect();
        Self { layers }
    }

    /// The first `n` layers applied to `h` `[B, S, D]`.
    pub fn forward(&self, mut h: Tensor<B, 3>, n: usize) -> Tensor<B, 3> {
        for layer in &self.layers[..n.min(self.layers.len())] {
            h = layer.forward(h);
        }
        h
    }
}

impl<B: Backend> ClipEncoderLayer<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self
            .self_attn
            .forward_add(self.layer_norm1.forward(x.clone()), x);
        let m = self.mlp.fc1.forward(self.layer_norm2.forward(h.clone()));
        let m = if self.mlp.quick {
            quick_gelu(m)
        } else {
            gelu_exact(m)
        };
        self.mlp.fc2.forward_add(m, h)
    }
}

impl<B: Backend> ClipAttention<B> {
    /// `residual + attention(x)`.
    fn forward_add(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = split_heads(self.q_proj.forward(x.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.heads);
        let v = split_heads(self.v_proj.forward(x), self.heads);
        self.out_proj
            .forward_add(merge_heads(sdpa(q, k, v, self.causal)), residual)
    }
}
