//! CLIP vision tower (transformers `CLIPVisionModel`), ViT-L/14 in SD 1.5's safety checker.
//! Field names follow the published checkpoint keys
//! (`vision_model.vision_model.embeddings.patch_embedding.weight`, …, `pre_layrnorm` spelt as
//! upstream); the encoder is the text tower's [`ClipEncoder`], attending to every patch.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::clip::{ClipEncoder, ClipEncoderShape};
use super::config::ClipVisionConfig;
use crate::nn::{Conv2d, Embedding, LayerNorm, nchw_to_tokens};

#[derive(Module, Debug)]
pub struct ClipVisionModel<B: Backend> {
    pub vision_model: ClipVisionTransformer<B>,
}

#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    pub embeddings: ClipVisionEmbeddings<B>,
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: ClipEncoder<B>,
    pub post_layernorm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings<B: Backend> {
    /// The learned CLS token `[D]`, put before the patches.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `patch_size`-wide, `patch_size`-strided convolution without bias.
    pub patch_embedding: Conv2d<B>,
    /// One row per position, CLS first: `[grid² + 1, D]`.
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> ClipVisionModel<B> {
    pub fn new(cfg: &ClipVisionConfig, device: &B::Device) -> Self {
        let d = cfg.hidden_size;
        let shape = ClipEncoderShape {
            hidden_size: d,
            intermediate_size: cfg.intermediate_size,
            num_hidden_layers: cfg.num_hidden_layers,
            num_attention_heads: cfg.num_attention_heads,
            hidden_act: &cfg.hidden_act,
            layer_norm_eps: cfg.layer_norm_eps,
            causal: false,
        };
        let p = cfg.patch_size;
        let mut patch_embedding = Conv2d::new(cfg.num_channels, d, p, p, [0; 4], device);
        patch_embedding.bias = None;
        Self {
            vision_model: ClipVisionTransformer {
                embeddings: ClipVisionEmbeddings {
                    class_embedding: Initializer::Zeros.init([d], device),
                    patch_embedding,
                    position_embedding: Embedding::new(cfg.grid() * cfg.grid() + 1, d, device),
                },
                pre_layrnorm: shape.layer_norm(device),
                encoder: ClipEncoder::new(&shape, device),
                post_layernorm: shape.layer_norm(device),
            },
        }
    }

    /// `pooler_output`: the post-layer-normed CLS state `[B, D]` of `pixel_values`
    /// `[B, 3, image_size, image_size]` (as `CLIPImageProcessor` makes them).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        let m = &self.vision_model;
        let e = &m.embeddings;
        let patches = nchw_to_tokens(e.patch_embedding.forward(pixel_values));
        let [b, _, d] = patches.dims();
        let cls = e.class_embedding.val().reshape([1, 1, d]).expand([b, 1, d]);
        let h =
            Tensor::cat(vec![cls, patches], 1) + e.position_embedding.weight.val().unsqueeze::<3>();
        let h = m.pre_layrnorm.forward(h);
        let h = m.encoder.forward(h, m.encoder.layers.len());
        let cls = h.narrow(1, 0, 1).reshape([b, d]);
        m.post_layernorm.forward(cls)
    }
}
