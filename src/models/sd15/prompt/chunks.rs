//! Prompt → 77-token chunks with a weight per token, as A1111's
//! `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` (`modules/sd_hijack_clip.py`) builds them.
//!
//! Each chunk holds up to 75 prompt tokens between `<|startoftext|>` and `<|endoftext|>`, padded
//! with `<|endoftext|>` (then with the tokenizer's pad token after the first end, which is the
//! same id for SD 1.x). When a chunk fills up and a comma was among its last
//! [`COMMA_BACKTRACK`] tokens, what follows the comma moves to the next chunk. A textual-inversion
//! embedding is never split: when its vectors do not fit, the chunk ends early. An empty prompt
//! is one chunk.
//!
//! One deliberate difference from A1111: when the comma backtrack moves an embedding to the next
//! chunk, A1111 leaves its placement behind (its vectors then overwrite padding of the old chunk,
//! and the new chunk keeps placeholder token 0); here the placement moves with the tokens.

use std::collections::HashMap;

use super::parse::Segment;

/// Prompt tokens per chunk (77 with the start and end tokens).
pub const CHUNK_LEN: usize = 75;
/// A1111's default `comma_padding_backtrack`.
pub const COMMA_BACKTRACK: usize = 20;

/// One chunk: exactly `CHUNK_LEN + 2` ids and multipliers.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ids: Vec<u32>,
    pub multipliers: Vec<f32>,
    /// `(position in the 77, embedding index)`: that embedding's vectors replace the token
    /// embeddings from that position on (its slots hold id 0 meanwhile, as in A1111).
    pub fixes: Vec<(usize, usize)>,
}

/// The special ids chunks are built with.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// `,</w>`, if the vocabulary has it.
    pub comma: Option<u32>,
}

/// Finds embeddings in a run of token ids: by first id, `(ids the name tokenizes to, embedding
/// index, vector count)`, longest first.
#[derive(Debug, Clone, Default)]
pub struct EmbeddingLookup {
    by_first: HashMap<u32, Vec<(Vec<u32>, usize, usize)>>,
}

impl EmbeddingLookup {
    pub fn insert(&mut self, ids: Vec<u32>, index: usize, vectors: usize) {
        let Some(&first) = ids.first() else { return };
        let list = self.by_first.entry(first).or_default();
        list.push((ids, index, vectors));
        list.sort_by_key(|(ids, _, _)| std::cmp::Reverse(ids.len()));
    }

    /// `(embedding index, vectors, ids consumed)` of an embedding starting at `tokens[at]`.
    fn find(&self, tokens: &[u32], at: usize) -> Option<(usize, usize, usize)> {
        self.by_first
            .get(&tokens[at])?
            .iter()
            .find(|(ids, _, _)| tokens[at..].starts_with(ids))
            .map(|(ids, index, n)| (*index, *n, ids.len()))
    }
}

struct Builder {
    framing: Framing,
    chunks: Vec<Chunk>,
    ids: Vec<u32>,
    multipliers: Vec<f32>,
    fixes: Vec<(usize, usize)>,
    last_comma: Option<usize>,
}

impl Builder {
    fn next_chunk(&mut self) {
        let f = self.framing;
        let mut ids = Vec::with_capacity(CHUNK_LEN + 2);
        ids.push(f.bos);
        ids.append(&mut self.ids);
        ids.resize(CHUNK_LEN + 1, f.eos);
        ids.push(f.eos);
        // After the first end token the pad id (A1111's process_tokens; the same id for SD 1.x).
        if let Some(end) = ids[1..].iter().position(|&t| t == f.eos) {
            ids[end + 2..].fill(f.pad);
        }
        let mut multipliers = Vec::with_capacity(CHUNK_LEN + 2);
        multipliers.push(1.0);
        multipliers.append(&mut self.multipliers);
        multipliers.resize(CHUNK_LEN + 2, 1.0);
        let fixes = self.fixes.drain(..).map(|(o, e)| (o + 1, e)).collect();
        self.chunks.push(Chunk {
            ids,
            multipliers,
            fixes,
        });
        self.last_comma = None;
    }

    /// Moves what follows the last comma of the full chunk to a new one.
    fn backtrack(&mut self, comma: usize) {
        let cut = comma + 1;
        let ids = self.ids.split_off(cut);
        let multipliers = self.multipliers.split_off(cut);
        let (moved, kept): (Vec<_>, Vec<_>) = self.fixes.drain(..).partition(|&(o, _)| o >= cut);
        self.fixes = kept;
        self.next_chunk();
        self.ids = ids;
        self.multipliers = multipliers;
        self.fixes = moved.into_iter().map(|(o, e)| (o - cut, e)).collect();
    }

    fn push_tokens(&mut self, tokens: &[u32], weight: f32, lookup: &EmbeddingLookup) {
        let mut at = 0;
        while at < tokens.len() {
            let token = tokens[at];
            if Some(token) == self.framing.comma {
                self.last_comma = Some(self.ids.len());
            } else if let Some(comma) = self.last_comma
                && self.ids.len() == CHUNK_LEN
                && self.ids.len() - comma <= COMMA_BACKTRACK
            {
                self.backtrack(comma);
            }
            if self.ids.len() == CHUNK_LEN {
                self.next_chunk();
            }
            match lookup.find(tokens, at) {
                None => {
                    self.ids.push(token);
                    self.multipliers.push(weight);
                    at += 1;
                }
                Some((index, n, consumed)) => {
                    if self.ids.len() + n > CHUNK_LEN {
                        self.next_chunk();
                    }
                    self.fixes.push((self.ids.len(), index));
                    self.ids.extend(std::iter::repeat_n(0, n));
                    self.multipliers.extend(std::iter::repeat_n(weight, n));
                    at += consumed;
                }
            }
        }
    }
}

/// Chunks for `segments`, each tokenized on its own by `tokenize` (A1111 tokenizes every
/// weighted run separately).
pub fn build_chunks(
    segments: &[Segment],
    tokenize: &dyn Fn(&str) -> crate::error::Result<Vec<u32>>,
    framing: Framing,
    lookup: &EmbeddingLookup,
) -> crate::error::Result<Vec<Chunk>> {
    let mut b = Builder {
        framing,
        chunks: Vec::new(),
        ids: Vec::with_capacity(CHUNK_LEN),
        multipliers: Vec::with_capacity(CHUNK_LEN),
        fixes: Vec::new(),
        last_comma: None,
    };
    for seg in segments {
        if seg.is_break() {
            b.next_chunk();
            continue;
        }
        let tokens = tokenize(&seg.text)?;
        b.push_tokens(&tokens, seg.weight as f32, lookup);
    }
    if !b.ids.is_empty() || b.chunks.is_empty() {
        b.next_chunk();
    }
    Ok(b.chunks)
}
