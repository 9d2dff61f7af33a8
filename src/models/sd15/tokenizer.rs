//! CLIP BPE tokenizer through the `tokenizers` crate, with the framing transformers'
//! `CLIPTokenizer` applies for SD 1.5: lower-cased, whitespace-collapsed text, `<|startoftext|>`
//! … `<|endoftext|>`, truncated and padded to 77 ids.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::prompt::Framing;
use crate::error::{Error, Result};
use crate::models::text_head::encode_head;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's word pattern (openai/CLIP `simple_tokenizer.py`), case-insensitive after lower-casing.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The real CLIP ViT-L/14 vocabulary, built in so a lone single-file checkpoint works.
const BUILTIN_VOCAB: &[u8] =
    include_bytes!("../../../models/fixtures/sd15-tiny/tokenizer/vocab.json");
const BUILTIN_MERGES: &str =
    include_str!("../../../models/fixtures/sd15-tiny/tokenizer/merges.txt");

#[derive(Clone)]
pub struct ClipTokenizer {
    tok: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    pub max_len: usize,
}

/// Token ids of one prompt, framed and padded to `max_len`.
pub struct Tokens {
    pub ids: Vec<u32>,
    /// How many prompt tokens were cut to fit (of the head [`ClipTokenizer::encode`] read).
    pub dropped: usize,
}

impl ClipTokenizer {
    /// From a diffusers `tokenizer/` folder: `tokenizer.json`, or `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pad_name = read_pad_token(dir).unwrap_or_else(|| EOS.to_string());
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let tok = Tokenizer::from_file(&json)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", json.display())))?;
            return Self::framed(tok, &pad_name);
        }
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab = std::fs::read(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        let merges =
            std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
        Self::from_vocab_merges(&vocab, &merges, &pad_name)
    }

    /// The built-in CLIP ViT-L/14 tokenizer (the one SD 1.x uses).
    pub fn builtin() -> Result<Self> {
        Self::from_vocab_merges(BUILTIN_VOCAB, BUILTIN_MERGES, EOS)
    }

    fn from_vocab_merges(vocab: &[u8], merges: &str, pad: &str) -> Result<Self> {
        let vocab: HashMap<String, u32> = serde_json::from_slice(vocab)
            .map_err(|e| Error::Tokenizer(format!("vocab.json: {e}")))?;
        let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
        let merges: Vec<(String, String)> = merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS.into())
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut tok = Tokenizer::new(bpe);
        let replace = Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let _ = tok.with_normalizer(Some(NormalizerWrapper::Sequence(NormSeq::new(vec![
            NFC.into(),
            replace.into(),
            Lowercase.into(),
        ]))));
        let split = Split::new(
            SplitPattern::Regex(PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let _ = tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSeq::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ]))));
        Self::framed(tok, pad)
    }

    fn framed(mut tok: Tokenizer, pad: &str) -> Result<Self> {
        // transformers matches the special tokens when they appear literally in a prompt.
        tok.add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no `{t}` token")))
        };
        Ok(Self {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(pad)?,
            tok,
            max_len: 77,
        })
    }

    /// Ids without framing or padding.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The special ids prompt chunks are framed with (see `prompt::chunks`).
    pub fn framing(&self) -> Framing {
        Framing {
            bos: self.bos,
            eos: self.eos,
            pad: self.pad,
            comma: self.tok.token_to_id(",</w>"),
        }
    }

    /// A copy with `words` added as tokens, matched anywhere in the normalized (lower-cased)
    /// text, as transformers' `add_tokens` (what diffusers' `load_textual_inversion` calls) does;
    /// with each word's new id, or `None` for a word the vocabulary already has (diffusers
    /// refuses those).
    pub fn with_added_words(&self, words: &[&str]) -> Result<(Self, Vec<Option<u32>>)> {
        let mut out = self.clone();
        let mut ids = Vec::with_capacity(words.len());
        for w in words {
            if self.tok.token_to_id(w).is_some() {
                ids.push(None);
                continue;
            }
            out.tok
                .add_tokens([AddedToken::from(*w, false)])
                .map_err(|e| Error::Tokenizer(format!("adding the token `{w}`: {e}")))?;
            ids.push(Some(out.tok.token_to_id(w).ok_or_else(|| {
                Error::Tokenizer(format!("could not add the token `{w}`"))
            })?));
        }
        Ok((out, ids))
    }

    /// `<|startoftext|>` ids `<|endoftext|>` padding, exactly `max_len` long. Only a head of
    /// `text` is tokenized (see [`crate::models::text_head`]), so `dropped` counts the cut tokens of that head:
    /// more than 0 whenever any were cut.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let room = self.max_len - 2;
        let raw = encode_head(text, |head| self.encode_raw(head), |raw| raw.len() > room)?;
        let dropped = raw.len().saturating_sub(room);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(raw.into_iter().take(room));
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(Tokens { ids, dropped })
    }
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json` (SD 2 pads with
/// `!`, SD 1.x with `<|endoftext|>`).
fn read_pad_token(dir: &Path) -> Option<String> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match v.get("pad_token") {
            Some(serde_json::Value::String(s)) => return Some(s.clone()),
            Some(serde_json::Value::Object(o)) => {
                return o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string);
            }
            _ => {}
        }
    }
    None
}
