//! Text → 64 token ids, two ways:
//! - `encode` is dalle-mini's (`DalleBartTokenizer` = BartTokenizerFast): byte-level BPE after the
//!   GPT-2 regex split, `<s> … </s>`, truncated to keep both, right-padded with `<pad>` (id 1);
//!   the text is expected to be normalised already (`TextNormalizer`).
//! - `encode_min_dalle` is min-dalle's own simpler tokeniser: emoji names, lower case, ASCII only,
//!   split on single spaces, BPE per word with `Ġ` prefix, and truncation to the first 64 ids
//!   (which drops `</s>` on long prompts, as min-dalle does).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use super::text_normalizer::demojize;
use crate::error::{Error, Result};
use crate::models::text_head::encode_head;

pub const BOS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;

pub struct DalleTokenizer {
    hf: Tokenizer,
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    unk: u32,
    pub max_len: usize,
}

impl DalleTokenizer {
    /// From `vocab.json` + `merges.txt` in `dir`.
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab = std::fs::read(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        let vocab: HashMap<String, u32> = serde_json::from_slice(&vocab)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", vocab_path.display())))?;
        let merges =
            std::fs::read_to_string(&merges_path).map_err(|e| Error::io(&merges_path, e))?;
        let merges: Vec<(String, String)> = merges
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        for (token, id) in [("<s>", BOS), ("<pad>", PAD), ("</s>", EOS)] {
            if vocab.get(token) != Some(&id) {
                return Err(Error::Tokenizer(format!(
                    "{}: `{token}` must have id {id}",
                    vocab_path.display()
                )));
            }
        }
        let unk = *vocab.get("<unk>").ok_or_else(|| {
            Error::Tokenizer(format!("{}: no `<unk>` token", vocab_path.display()))
        })?;
        let ranks = merges
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        let (v, m) = (
            vocab_path.to_string_lossy().into_owned(),
            merges_path.to_string_lossy().into_owned(),
        );
        let bpe = BPE::from_file(&v, &m)
            .unk_token("<unk>".into())
            .build()
            .map_err(|e| Error::Tokenizer(format!("{v}: {e}")))?;
        let mut hf = Tokenizer::new(bpe);
        // add_prefix_space=false, trim_offsets=true, GPT-2 regex split: BartTokenizerFast's setup
        hf.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        Ok(Self {
            hf,
            vocab,
            ranks,
            unk,
            max_len,
        })
    }

    /// dalle-mini's ids for already-normalised text: `max_len` ids and the count of real tokens.
    pub fn encode(&self, normalized: &str) -> Result<(Vec<u32>, usize)> {
        let enc = self
            .hf
            .encode(normalized, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(BOS);
        ids.extend(enc.get_ids().iter().take(self.max_len - 2));
        ids.push(EOS);
        let used = ids.len();
        ids.resize(self.max_len, PAD);
        Ok((ids, used))
    }

    /// min-dalle's ids: `<s>` words `</s>`, untruncated.
    pub fn encode_min_dalle(&self, text: &str) -> Vec<u32> {
        let text: String = demojize(text, "", "")
            .to_lowercase()
            .chars()
            .filter(char::is_ascii)
            .collect();
        let mut ids = vec![BOS];
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            ids.extend(
                self.bpe_word(word)
                    .iter()
                    .map(|s| self.vocab.get(s).copied().unwrap_or(self.unk)),
            );
        }
        ids.push(EOS);
        ids
    }

    /// min-dalle's padded row: the first `max_len` ids, then `<pad>`. Only a head of a long
    /// text is read (see [`crate::models::text_head`]).
    pub fn min_dalle_row(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = encode_head(
            text,
            |head| Ok(self.encode_min_dalle(head)),
            |ids| ids.len() > self.max_len,
        )?;
        ids.truncate(self.max_len);
        ids.resize(self.max_len, PAD);
        Ok(ids)
    }

    /// The unconditional row: `<s></s>` and padding (the tokenisation of `""`).
    pub fn uncond_row(&self) -> Vec<u32> {
        let mut ids = vec![BOS, EOS];
        ids.resize(self.max_len, PAD);
        ids
    }

    /// Greedy lowest-rank merging of `Ġ` + the word's characters (min-dalle's loop).
    fn bpe_word(&self, word: &str) -> Vec<String> {
        let mut parts: Vec<String> = std::iter::once("\u{120}".to_string())
            .chain(word.chars().map(String::from))
            .collect();
        while parts.len() > 1 {
            let best = (0..parts.len() - 1)
                .filter_map(|i| {
                    self.ranks
                        .get(&(parts[i].clone(), parts[i + 1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", parts[i], parts[i + 1]);
            parts.splice(i..i + 2, [merged]);
        }
        parts
    }
}
