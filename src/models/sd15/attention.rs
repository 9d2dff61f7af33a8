//! Cross-attention transformer of the UNet (diffusers `attention_processor.Attention`,
//! `attention.BasicTransformerBlock`, `transformers/transformer_2d.Transformer2DModel`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::nn::{
    Conv2d, GroupNorm, LayerNorm, Linear, WeightLayout, conv1x1, merge_heads, sdpa_for, split_heads,
};

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0` (`to_out.1` is dropout).
    pub to_out: Vec<Linear<B>>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        bias: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            to_q: Linear::new(query_dim, query_dim, bias, WeightLayout::InOut, device),
            to_k: Linear::new(context_dim, query_dim, bias, WeightLayout::InOut, device),
            to_v: Linear::new(context_dim, query_dim, bias, WeightLayout::InOut, device),
            to_out: vec![Linear::new(
                query_dim,
                query_dim,
                true,
                WeightLayout::InOut,
                device,
            )],
            heads,
        }
    }

    /// `x` `[B, S, C]` attends over `context` `[B, T, Cc]` (itself when `None`); the result
    /// is added to `residual` by the output projection.
    pub fn forward_add(
        &self,
        x: Tensor<B, 3>,
        context: Option<&Tensor<B, 3>>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let ctx = context.cloned().unwrap_or_else(|| x.clone());
        let q = split_heads(self.to_q.forward(x), self.heads);
        let k = split_heads(self.to_k.forward(ctx.clone()), self.heads);
        let v = split_heads(self.to_v.forward(ctx), self.heads);
        self.attend_add(q, k, v, residual)
    }

    /// [`forward_add`](Self::forward_add) over `context`'s states, their keys and values
    /// projected once per context.
    pub fn forward_cross_add(
        &self,
        x: Tensor<B, 3>,
        context: &TextContext<B>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let q = split_heads(self.to_q.forward(x), self.heads);
        let (k, v) = context.kv(self);
        self.attend_add(q, k, v, residual)
    }

    fn attend_add(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let held = self.to_q.weight.val().dtype();
        self.to_out[0].forward_add(merge_heads(sdpa_for(q, k, v, false, held)), residual)
    }
}

/// What the cross-attentions of UNet runs attend to: the text encoder's states, and each
/// layer's keys and values projected from them on first use and kept, since they are the same
/// at every step of an image (32 projections of 2×77 tokens per SD 1.5 step: ~25 ms of a
/// 4.5 s step on 2 Xeon cores).
pub struct TextContext<B: Backend> {
    states: Tensor<B, 3>,
    /// Per layer, keyed by its address (the model is borrowed while the context is used, so
    /// its layers stay where they are): `(k, v)` split into heads.
    kv: Mutex<HashMap<usize, KeysValues<B>>>,
}

/// One layer's keys and values, `[B, H, T, Dh]` each.
type KeysValues<B> = (Tensor<B, 4>, Tensor<B, 4>);

impl<B: Backend> TextContext<B> {
    /// `states` `[B, T, D]`, in the dtype the layers compute in.
    pub fn new(states: Tensor<B, 3>) -> Self {
        Self {
            states,
            kv: Mutex::new(HashMap::new()),
        }
    }

    /// `attn`'s keys and values over the states, projected on the first call.
    fn kv(&self, attn: &Attention<B>) -> KeysValues<B> {
        let key = std::ptr::from_ref(attn) as usize;
        let mut kv = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
        kv.entry(key)
            .or_insert_with(|| {
                let ctx = self.states.clone();
                (
                    split_heads(attn.to_k.forward(ctx.clone()), attn.heads),
                    split_heads(attn.to_v.forward(ctx), attn.heads),
                )
            })
            .clone()
    }
}

/// `copies` copies of `x` stacked along the batch (`x` itself for one).
pub(super) fn stacked<B: Backend, const D: usize>(x: Tensor<B, D>, copies: usize) -> Tensor<B, D> {
    if copies > 1 {
        x.repeat_dim(0, copies)
    } else {
        x
    }
}

/// GEGLU: `proj` makes value and gate halves; out = value · gelu(gate).
#[derive(Module, Debug)]
pub struct GeGlu<B: Backend> {
    pub proj: Linear<B>,
}

/// `ff.net.0` (GEGLU) and `ff.net.2` (Linear); the checkpoint's `net.N` indices become `net_N`
/// field names (see `weights.rs`).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub net_0: GeGlu<B>,
    pub net_2: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    pub fn new(dim: usize, device: &B::Device) -> Self {
        let inner = dim * 4;
        Self {
            net_0: GeGlu {
                proj: Linear::new(dim, inner * 2, true, WeightLayout::InOut, device),
            },
            net_2: Linear::new(inner, dim, true, WeightLayout::InOut, device),
        }
    }

    /// `residual + ff(x)`.
    pub fn forward_add(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net_2
            .forward_add(self.net_0.proj.forward_geglu(x), residual)
    }
}

#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub attn2: Attention<B>,
    pub norm3: LayerNorm<B>,
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    pub fn new(dim: usize, context_dim: usize, heads: usize, device: &B::Device) -> Self {
        let ln = || LayerNorm::new(dim, 1e-5, true, device);
        Self {
            norm1: ln(),
            attn1: Attention::new(dim, dim, heads, false, device),
            norm2: ln(),
            attn2: Attention::new(dim, context_dim, heads, false, device),
            norm3: ln(),
            ff: FeedForward::new(dim, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>, context: &TextContext<B>) -> Tensor<B, 3> {
        self.forward_copies(x, context, 1)
    }

    /// [`forward`](Self::forward) of `copies` stacked copies of `x` (`[n, S, C]`) against
    /// `context` `[copies·n, T, D]`: the self-attention runs once on `n` samples, and the
    /// copies are made before the cross-attention, the first layer where they differ.
    pub fn forward_copies(
        &self,
        x: Tensor<B, 3>,
        context: &TextContext<B>,
        copies: usize,
    ) -> Tensor<B, 3> {
        let x = self
            .attn1
            .forward_add(self.norm1.forward(x.clone()), None, x);
        let x = stacked(x, copies);
        let x = self
            .attn2
            .forward_cross_add(self.norm2.forward(x.clone()), context, x);
        self.ff.forward_add(self.norm3.forward(x.clone()), x)
    }
}

/// The spatial transformer: GroupNorm, 1×1 conv in, transformer blocks over the H·W tokens,
/// 1×1 conv out, residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    pub norm: GroupNorm<B>,
    pub proj_in: Conv2d<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    pub proj_out: Conv2d<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    pub fn new(
        c: usize,
        context_dim: usize,
        heads: usize,
        layers: usize,
        groups: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            norm: GroupNorm::new(groups, c, 1e-6, device),
            proj_in: conv1x1(c, c, device),
            transformer_blocks: (0..layers)
                .map(|_| BasicTransformerBlock::new(c, context_dim, heads, device))
                .collect(),
            proj_out: conv1x1(c, c, device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, context: &TextContext<B>) -> Tensor<B, 4> {
        self.forward_copies(x, context, 1)
    }

    /// [`forward`](Self::forward) of `copies` stacked copies of `x` (`[n, C, h, w]`) against
    /// `context` `[copies·n, T, D]`, answering `[copies·n, C, h, w]`: the norm, `proj_in` and
    /// the first block's self-attention run on `n` samples only
    /// ([`BasicTransformerBlock::forward_copies`]).
    pub fn forward_copies(
        &self,
        x: Tensor<B, 4>,
        context: &TextContext<B>,
        copies: usize,
    ) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let residual = x.clone();
        let x = self.proj_in.forward(self.norm.forward(x));
        // Contiguous tokens: every block reads them through LayerNorm and the residual adds.
        let mut t = crate::nn::nchw_to_tokens(x);
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            t = block.forward_copies(t, context, if i == 0 { copies } else { 1 });
        }
        let x = crate::nn::tokens_to_nchw(t, [h, w]);
        self.proj_out.forward_add(x, stacked(residual, copies))
    }
}
