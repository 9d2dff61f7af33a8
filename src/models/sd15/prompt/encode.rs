//! Chunks → CLIP hidden states: every chunk through the text encoder on its own (clip skip per
//! chunk), embedding vectors in place, then A1111's "Original" emphasis
//! (`modules/sd_emphasis.py`): the hidden states times each token's weight, rescaled so the
//! chunk's mean is what it was. The chunks are then laid end to end: `[1, k·77, D]`.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::Chunk;
use crate::models::sd15::clip::ClipTextModel;
use crate::models::sd15::textual_inversion::Embeddings;

pub fn encode_chunks<B: Backend>(
    clip: &ClipTextModel<B>,
    chunks: &[Chunk],
    embeddings: &Embeddings,
    clip_skip: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
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
        let mean = |z: &Tensor<B, 3>| z.clone().reshape([k, s * d]).mean_dim(1).reshape([k, 1, 1]);
        let original = mean(&z);
        let z = z * m;
        let new = mean(&z);
        z * (original / new).expand([k, s, d])
    } else {
        z
    };
    z.reshape([1, k * s, d])
}

/// `[1, k·77, D]` grown to `chunks` chunks with copies of `empty` (the empty prompt's chunk,
/// `[1, 77, D]`), as A1111's `pad_cond_uncond` pads the shorter of prompt and negative prompt.
pub fn pad_to_chunks<B: Backend>(
    z: Tensor<B, 3>,
    chunks: usize,
    empty: &Tensor<B, 3>,
) -> Tensor<B, 3> {
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
