//! A1111's emphasis syntax (`modules/prompt_parser.py`, `parse_prompt_attention`): a prompt
//! becomes text runs with a weight each.
//!
//! `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:1.3)` multiplies by 1.3, nesting multiplies;
//! `\(` `\)` `\[` `\]` `\\` are literal characters (a lone `\` is dropped); brackets left open at the
//! end apply to the rest of the prompt, stray closers are text. `BREAK` (a whole word, outside any
//! bracket) ends the current 75-token chunk. Adjacent runs of exactly equal weight are merged,
//! so `(a)(b)` is one run `ab`, as in A1111.
//!
//! The weights are the same `f64` products, in the same order, as A1111's, because equal weights
//! decide which runs merge and the runs are tokenized separately.

use crate::error::{Error, Result};

/// One text run and its weight. The chunk break is `text == "BREAK"` with weight exactly -1, as
/// A1111 marks it: a `BREAK` inside brackets gets its weight scaled and so becomes the literal
/// word with a negative weight, which is what A1111 does with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub weight: f64,
}

impl Segment {
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

enum Lexeme<'a> {
    /// An escaped character (empty for a lone backslash).
    Escaped(&'a str),
    Open(char),
    /// `:<number>)`; the digits as written.
    Weight(&'a str),
    Close(char),
    Text(&'a str),
    Colon,
}

/// Splits `text` into lexemes, left to right, trying the forms in A1111's order.
fn lex(text: &str) -> Vec<Lexeme<'_>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => match b.get(i + 1) {
                Some(b'(' | b')' | b'[' | b']' | b'\\') => {
                    out.push(Lexeme::Escaped(&text[i + 1..i + 2]));
                    i += 2;
                }
                _ => {
                    out.push(Lexeme::Escaped(""));
                    i += 1;
                }
            },
            c @ (b'(' | b'[') => {
                out.push(Lexeme::Open(c as char));
                i += 1;
            }
            b':' => {
                let mut j = i + 1;
                if matches!(b.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                let mut k = j;
                while k < b.len() && (b[k] == b'.' || b[k].is_ascii_digit()) {
                    k += 1;
                }
                if k > j && b.get(k) == Some(&b')') {
                    out.push(Lexeme::Weight(&text[i + 1..k]));
                    i = k + 1;
                } else {
                    out.push(Lexeme::Colon);
                    i += 1;
                }
            }
            c @ (b')' | b']') => {
                out.push(Lexeme::Close(c as char));
                i += 1;
            }
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b'\\' | b'(' | b')' | b'[' | b']' | b':'))
                    .map_or(b.len(), |p| i + p);
                out.push(Lexeme::Text(&text[i..end]));
                i = end;
            }
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` split at each whole-word `BREAK`, with the whitespace around it removed (A1111's
/// `\s*\bBREAK\b\s*`).
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut from) = (0, 0);
    while let Some(p) = text[from..].find("BREAK") {
        let (i, end) = (from + p, from + p + 5);
        let before = text[..i].chars().next_back().is_some_and(is_word);
        let after = text[end..].chars().next().is_some_and(is_word);
        if before || after {
            from = i + 1;
            continue;
        }
        let a = text[start..i].trim_end().len() + start;
        let b = end + (text[end..].len() - text[end..].trim_start().len());
        parts.push(&text[start..a]);
        start = b;
        from = b;
    }
    parts.push(&text[start..]);
    parts
}

/// Parses the emphasis syntax. Fails only on a weight A1111 cannot read either (`(x:1.2.3)`).
///
/// Cost: linear in the text, plus, per closing bracket, the runs it encloses (A1111's
/// algorithm, kept for its rounding); a 32 000-character prompt of nested brackets parses in
/// milliseconds (see the test).
pub fn parse_prompt_attention(text: &str) -> Result<Vec<Segment>> {
    let mut res: Vec<Segment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Segment>, from: usize, m: f64| {
        for s in &mut res[from..] {
            s.weight *= m;
        }
    };
    let push_text = |res: &mut Vec<Segment>, text: &str| {
        for (i, part) in split_break(text).into_iter().enumerate() {
            if i > 0 {
                res.push(Segment {
                    text: "BREAK".into(),
                    weight: -1.0,
                });
            }
            res.push(Segment {
                text: part.into(),
                weight: 1.0,
            });
        }
    };
    for lexeme in lex(text) {
        match lexeme {
            Lexeme::Escaped(c) => res.push(Segment {
                text: c.into(),
                weight: 1.0,
            }),
            Lexeme::Open('(') => round.push(res.len()),
            Lexeme::Open(_) => square.push(res.len()),
            Lexeme::Weight(w) if !round.is_empty() => {
                let m: f64 = w.parse().map_err(|_| {
                    Error::invalid(format!("prompt weight `{w}` in `(…:{w})` is not a number"))
                })?;
                let from = round.pop().unwrap_or_default();
                multiply(&mut res, from, m);
            }
            Lexeme::Close(')') if !round.is_empty() => {
                let from = round.pop().unwrap_or_default();
                multiply(&mut res, from, 1.1);
            }
            Lexeme::Close(']') if !square.is_empty() => {
                let from = square.pop().unwrap_or_default();
                multiply(&mut res, from, 1.0 / 1.1);
            }
            Lexeme::Weight(w) => push_text(&mut res, &format!(":{w})")),
            Lexeme::Close(c) => push_text(&mut res, c.encode_utf8(&mut [0; 4])),
            Lexeme::Text(t) => push_text(&mut res, t),
            Lexeme::Colon => push_text(&mut res, ":"),
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push(Segment {
            text: String::new(),
            weight: 1.0,
        });
    }
    let mut merged: Vec<Segment> = Vec::with_capacity(res.len());
    for s in res {
        match merged.last_mut() {
            Some(last) if last.weight == s.weight => last.text.push_str(&s.text),
            _ => merged.push(s),
        }
    }
    Ok(merged)
}
