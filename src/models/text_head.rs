//! Reading only the head of a text that a tokenizer truncates. SD's CLIP keeps 75 tokens and
//! DALL·E's BART 62, but tokenizing (and DALL·E's text normalizer) costs time and memory in
//! proportion to the whole text: a 12 MiB prompt took 12 s and 2.9 GB to keep 75 tokens. So
//! the truncating encoders read a head of the text, growing it only while it holds too few
//! tokens, and never more than [`MAX_HEAD_CHARS`].
//!
//! A head ends at a blank where it can; no CLIP or BART token spans one, so the tokens of the
//! head are the first tokens of the whole text, and the kept ones are the same (A1111's chunked
//! prompts keep every token by design and do not come through here).

use crate::error::Result;

/// Characters read first: 75 tokens of ordinary text take a few hundred.
pub const HEAD_CHARS: usize = 1024;

/// The most characters ever read: a text whose first 65 536 characters hold fewer tokens than
/// are kept (nearly all blanks, or markup DALL·E's normalizer drops) is read that far only.
pub const MAX_HEAD_CHARS: usize = 64 * HEAD_CHARS;

/// The first `chars` characters of `text`, extended to the next blank (by at most `chars / 4`
/// characters: a longer word is cut); and whether that is all of `text`.
pub fn head(text: &str, chars: usize) -> (&str, bool) {
    let stretch = chars + chars / 4;
    for (n, (i, c)) in text.char_indices().enumerate() {
        if (n >= chars && c.is_whitespace()) || n >= stretch {
            return (&text[..i], false);
        }
    }
    (text, true)
}

/// `encode` of a head of `text`, grown (doubling, up to [`MAX_HEAD_CHARS`]) until `enough`
/// says its result already holds every token that is kept, or the head is the whole text.
pub fn encode_head<T>(
    text: &str,
    mut encode: impl FnMut(&str) -> Result<T>,
    enough: impl Fn(&T) -> bool,
) -> Result<T> {
    let mut chars = HEAD_CHARS;
    loop {
        let (part, whole) = head(text, chars);
        let out = encode(part)?;
        if whole || chars >= MAX_HEAD_CHARS || enough(&out) {
            return Ok(out);
        }
        chars *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_a_blank_or_cut_a_long_word() {
        assert_eq!(head("ab cd", 10), ("ab cd", true));
        assert_eq!(head("ab cd ef", 4), ("ab cd", false));
        assert_eq!(head("ab cdefghijkl", 4), ("ab cd", false));
        assert_eq!(head("ééé éé", 3), ("ééé", false));
    }

    #[test]
    fn the_head_grows_until_it_is_enough() {
        let text = "word ".repeat(100_000);
        let mut reads = Vec::new();
        let n = encode_head(
            &text,
            |h| {
                reads.push(h.len());
                Ok(h.split_whitespace().count())
            },
            |&n| n > 300,
        )
        .unwrap();
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert!(n > 300 && reads[1] < 2 * 1024 + 600, "{reads:?}");
        let blanks = " ".repeat(1 << 20) + "x";
        let mut longest = 0;
        encode_head(&blanks, |h| Ok(longest = longest.max(h.len())), |_| false).unwrap();
        assert!(longest <= MAX_HEAD_CHARS + MAX_HEAD_CHARS / 4);
    }
}
