//! Prompts as people write them: A1111's emphasis syntax ([`parse`]), prompts of any length in
//! 75-token chunks ([`chunks`]), and textual-inversion words, resolved to token ids, weights and
//! embedding placements before the text encoder runs.

pub mod chunks;
pub mod encode;
pub mod parse;

use super::textual_inversion::Embeddings;
use super::tokenizer::ClipTokenizer;
use crate::error::Result;
pub use chunks::{CHUNK_LEN, COMMA_BACKTRACK, Chunk, EmbeddingLookup, Framing, build_chunks};
pub use parse::{Segment, parse_prompt_attention};

/// How a prompt's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptSyntax {
    /// AUTOMATIC1111's: `(word)`, `(word:1.3)`, `[word]`, `\(` escapes, `BREAK`; an embedding
    /// is used where its file stem appears as a word (A1111 matches the stem's token ids).
    /// The default: it is what prompts copied from A1111 and CivitAI are written in.
    #[default]
    A1111,
    /// The text as diffusers reads it: no weights, no `BREAK`; an embedding's stem is a token
    /// added to the vocabulary, matched anywhere in the lower-cased text, as diffusers'
    /// `load_textual_inversion` does. Up to 75 tokens this is exactly diffusers' encoding;
    /// longer prompts are chunked as in A1111 instead of being cut.
    Plain,
}

impl PromptSyntax {
    pub const ALL: [PromptSyntax; 2] = [PromptSyntax::A1111, PromptSyntax::Plain];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }
    }
}

impl std::str::FromStr for PromptSyntax {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown prompt syntax `{s}`; known: a1111, plain"))
    }
}

impl std::fmt::Display for PromptSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tokenizer plus what the loaded embeddings add to it, built once per embedding set.
pub struct PromptVocab {
    pub embeddings: Embeddings,
    /// For `a1111`: each stem's token ids in the plain tokenizer.
    a1111: EmbeddingLookup,
    /// For `plain`: the tokenizer with each stem added as a token, and those ids.
    plain: Option<(ClipTokenizer, EmbeddingLookup)>,
}

impl PromptVocab {
    /// Indexes `embeddings` for `tokenizer`. A stem that already is a vocabulary word cannot be
    /// an added token (diffusers refuses it too): in `plain` syntax it stays that word, with a
    /// warning; in `a1111` syntax it works.
    pub fn new(tokenizer: &ClipTokenizer, embeddings: Embeddings) -> Result<Self> {
        let mut a1111 = EmbeddingLookup::default();
        for (index, e) in embeddings.iter().enumerate() {
            a1111.insert(tokenizer.encode_raw(&e.name)?, index, e.count());
        }
        let plain = if embeddings.is_empty() {
            None
        } else {
            let names: Vec<&str> = embeddings.iter().map(|e| e.name.as_str()).collect();
            let (tok, ids) = tokenizer.with_added_words(&names)?;
            let mut lookup = EmbeddingLookup::default();
            for ((index, e), id) in embeddings.iter().enumerate().zip(ids) {
                match id {
                    Some(id) => lookup.insert(vec![id], index, e.count()),
                    None => tracing::warn!(
                        embedding = %e.name,
                        "the embedding's name is a word of the vocabulary: usable in a1111 syntax only"
                    ),
                }
            }
            Some((tok, lookup))
        };
        Ok(Self {
            embeddings,
            a1111,
            plain,
        })
    }

    /// `text` as 77-token chunks with per-token weights and embedding placements.
    pub fn chunks(
        &self,
        tokenizer: &ClipTokenizer,
        text: &str,
        syntax: PromptSyntax,
    ) -> Result<Vec<Chunk>> {
        let framing = tokenizer.framing();
        match syntax {
            PromptSyntax::A1111 => {
                let segments = parse_prompt_attention(text)?;
                build_chunks(
                    &segments,
                    &|t| tokenizer.encode_raw(t),
                    framing,
                    &self.a1111,
                )
            }
            PromptSyntax::Plain => {
                let whole = [Segment {
                    text: text.to_string(),
                    weight: 1.0,
                }];
                let empty = EmbeddingLookup::default();
                let (tok, lookup) = match &self.plain {
                    Some((tok, lookup)) => (tok, lookup),
                    None => (tokenizer, &empty),
                };
                build_chunks(&whole, &|t| tok.encode_raw(t), framing, lookup)
            }
        }
    }
}
