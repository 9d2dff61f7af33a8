//! dalle-mini's `TextNormalizer` (`model/text.py`), step by step, in its order.
//!
//! Deviations (no Rust equivalent of the Python packages):
//! - ftfy: only NFC, curly-quote and line-break fixes; mojibake repair is not done.
//! - `html.unescape`: numeric entities and the common named ones (`ENTITIES`), not all 2231.
//! - emoji names come from the `emojis` crate (Unicode CLDR short names); the `emoji` package
//!   uses the same names with `_` for spaces, except for a few renamed sequences.
//! - transliteration is `deunicode`, not `unidecode` (same tables for Latin scripts).
//! - hashtag splitting needs a word-frequency list; without one a hashtag is kept whole.
//! - `<person>` substitution draws from the request's seed, not Python's global RNG.

use std::collections::HashMap;

use fancy_regex::{Captures, Regex};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use unicode_normalization::UnicodeNormalization;

/// Placeholder that protects characters while punctuation becomes commas (dalle-mini's).
const TEMP: &str = "xtokx";

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("normaliser patterns are valid")
}

/// `replace_all` without its panic when backtracking gives up (hostile text): step skipped.
fn sub(pattern: &Regex, text: &str, rep: impl fancy_regex::Replacer) -> String {
    let out = pattern.try_replacen(text, 0, rep).map(|t| t.into_owned());
    out.unwrap_or_else(|e| {
        tracing::warn!("text normaliser step skipped: {e}");
        text.to_string()
    })
}

/// Compiled patterns of every step.
pub struct TextNormalizer {
    person_group: Regex,
    wiki_start: Regex,
    wiki_end: Regex,
    html_tag: Regex,
    url: Regex,
    comma_number: Regex,
    dot: Regex,
    quote: Regex,
    date: Regex,
    hyphen: Regex,
    special: Regex,
    hashtag: Regex,
    ignore: Regex,
    quotes: Regex,
    punctuation: Regex,
    repeat: Regex,
    merge_quotes: Regex,
    merge_commas: Regex,
    spaces: Regex,
    hashtags: Option<HashtagSplitter>,
}

impl Default for TextNormalizer {
    fn default() -> Self {
        Self::new(None)
    }
}

impl TextNormalizer {
    /// `hashtags`: a word-splitter built from a frequency list (see `HashtagSplitter`).
    pub fn new(hashtags: Option<HashtagSplitter>) -> Self {
        Self {
            person_group: re(r"<person>([,\s]*(and)*[,\s]*<person>)+"),
            wiki_start: re(r"\A\s*\[\d+\]"),
            wiki_end: re(r"\[\d+\]\s*\Z"),
            html_tag: re(r"<[^<]+?>"),
            url: re(r"http\S+"),
            comma_number: re(r"(\d),(\d{3})"),
            dot: re(r"(\w)\.(\w)"),
            quote: re(r"'(?=([stdm]|(ll)|(re)|(ve)|(ll))\b)"),
            date: re(r"(\d)/(\d)"),
            hyphen: re(r"(\w)-(\w)"),
            special: re(r"([%&\/$*])"),
            hashtag: re(r"#(\w+)"),
            ignore: re(r"[_#\\]"),
            quotes: re(r#"['"`]"#),
            punctuation: re(r"[()\[\].,|:;?!=+~\-\/{}]"),
            repeat: re(r"(\D)(\1{3,})"),
            merge_quotes: re(r#"(\s*"+\s*)+"#),
            merge_commas: re(r"(\s*,+\s*)+"),
            spaces: re(r"\s+"),
            hashtags,
        }
    }

    /// The whole pipeline; `seed` drives the `<person>` substitution.
    pub fn normalize(&self, text: &str, seed: u64) -> String {
        let t = fix_text(text);
        let t = fix_html(&t);
        let t = demojize(&t, ":", ":");
        let t = deunicode::deunicode(&t);
        let t = t.to_lowercase();
        let t = self.replace_person_token(&t, seed);
        let t = self.remove_wiki_ref(&t);
        let t = sub(&self.html_tag, &t, " ");
        let t = sub(&self.url, &t, "");
        let t = self.remove_comma_numbers(&t);
        let t = self.pre_process(&t);
        let t = self.handle_special_chars(&t);
        let t = self.expand_hashtags(&t);
        let t = sub(&self.ignore, &t, " ");
        let t = sub(&self.quotes, &t, " \" ");
        let t = sub(&self.punctuation, &t, ",");
        let t = post_process(&t);
        let t = sub(&self.repeat, &t, "$1");
        let t = sub(&self.merge_quotes, &t, " \" ");
        let t = sub(&self.merge_commas, &t, ", ");
        let t = sub(&self.spaces, &t, " ");
        format!(" {}", remove_first_last_commas(&t))
    }

    /// Runs one named step alone (the names of dalle-mini's functions), for tests.
    pub fn step(&self, name: &str, t: &str) -> Option<String> {
        Some(match name {
            "fix_html" => fix_html(t),
            "replace_person_token" => self.replace_person_token(t, 0),
            "remove_wiki_ref" => self.remove_wiki_ref(t),
            "remove_html_tags" => sub(&self.html_tag, t, " "),
            "remove_urls" => sub(&self.url, t, ""),
            "remove_comma_numbers" => self.remove_comma_numbers(t),
            "pre_process_dot_numbers" => sub(&self.dot, t, &format!("${{1}}{TEMP}dot{TEMP}${{2}}")),
            "pre_process_quotes" => sub(&self.quote, t, &format!("{TEMP}quote{TEMP}")),
            "pre_process_dates" => sub(&self.date, t, &format!("${{1}}{TEMP}slash{TEMP}${{2}}")),
            "handle_special_chars" => self.handle_special_chars(t),
            "ignore_chars" => sub(&self.ignore, t, " "),
            "simplify_quotes" => sub(&self.quotes, t, " \" "),
            "replace_punctuation_with_commas" => sub(&self.punctuation, t, ","),
            "post_process_dot_numbers" | "post_process_quotes" | "post_process_dates" => {
                post_process(t)
            }
            "remove_repeating_chars" => sub(&self.repeat, t, "$1"),
            "merge_quotes" => sub(&self.merge_quotes, t, " \" "),
            "merge_commas" => sub(&self.merge_commas, t, ", "),
            "remove_extra_spaces" => sub(&self.spaces, t, " "),
            "remove_first_last_commas" => remove_first_last_commas(t),
            _ => return None,
        })
    }

    /// CC12M's `<person>` tokens: a run of them becomes "people", each remaining one a weighted
    /// choice among "a person" / "someone" / "somebody".
    fn replace_person_token(&self, t: &str, seed: u64) -> String {
        let mut t = sub(&self.person_group, t, " people ");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        const CHOICES: [(&str, u32); 3] = [
            ("a person", 282_265),
            ("someone", 121_194),
            ("somebody", 12_219),
        ];
        let total: u32 = CHOICES.iter().map(|c| c.1).sum();
        while let Some(at) = t.find("<person>") {
            let mut r = rng.random_range(0..total);
            let word = CHOICES
                .iter()
                .find(|c| {
                    r < c.1 || {
                        r -= c.1;
                        false
                    }
                })
                .map_or("someone", |c| c.0);
            t.replace_range(at..at + "<person>".len(), &format!(" {word} "));
        }
        t
    }

    fn remove_wiki_ref(&self, t: &str) -> String {
        sub(&self.wiki_end, &sub(&self.wiki_start, t, ""), "")
    }

    fn remove_comma_numbers(&self, t: &str) -> String {
        sub(
            &self.comma_number,
            &sub(&self.comma_number, t, "$1$2"),
            "$1$2",
        )
    }

    fn pre_process(&self, t: &str) -> String {
        let t = sub(&self.dot, t, &format!("${{1}}{TEMP}dot{TEMP}${{2}}"));
        let t = sub(&self.quote, &t, &format!("{TEMP}quote{TEMP}"));
        sub(&self.date, &t, &format!("${{1}}{TEMP}slash{TEMP}${{2}}"))
    }

    fn handle_special_chars(&self, t: &str) -> String {
        sub(&self.special, &sub(&self.hyphen, t, "$1 $2"), " $1 ")
    }

    fn expand_hashtags(&self, t: &str) -> String {
        sub(&self.hashtag, t, |c: &Captures| match &self.hashtags {
            Some(h) => h.split(&c[1]),
            None => c[1].to_string(),
        })
    }
}

fn post_process(t: &str) -> String {
    t.replace(&format!("{TEMP}dot{TEMP}"), ".")
        .replace(&format!("{TEMP}quote{TEMP}"), "'")
        .replace(&format!("{TEMP}slash{TEMP}"), "/")
}

fn remove_first_last_commas(t: &str) -> String {
    let t = t.trim();
    let t = t.strip_suffix(',').unwrap_or(t);
    let t = t.strip_prefix(',').unwrap_or(t);
    t.trim().to_string()
}

/// The part of `ftfy.fix_text` that needs no mojibake model: NFC, curly quotes, line breaks.
pub fn fix_text(t: &str) -> String {
    let t: String = t.nfc().collect();
    t.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => '"',
            '\r' | '\u{2028}' | '\u{2029}' | '\u{0085}' => '\n',
            c => c,
        })
        .collect()
}

/// `html.unescape` applied twice (CLIP's `fix_html`).
pub fn fix_html(t: &str) -> String {
    unescape(&unescape(t))
}

const ENTITIES: [(&str, &str); 24] = [
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{a0}"),
    ("copy", "©"),
    ("reg", "®"),
    ("trade", "™"),
    ("hellip", "…"),
    ("mdash", "—"),
    ("ndash", "–"),
    ("lsquo", "‘"),
    ("rsquo", "’"),
    ("ldquo", "“"),
    ("rdquo", "”"),
    ("laquo", "«"),
    ("raquo", "»"),
    ("deg", "°"),
    ("eacute", "é"),
    ("egrave", "è"),
    ("times", "×"),
    ("euro", "€"),
    ("pound", "£"),
];

fn unescape(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let (text, used) = entity(rest).unwrap_or_else(|| ("&".to_string(), 1));
        out.push_str(&text);
        rest = &rest[used..];
    }
    out.push_str(rest);
    out
}

/// The entity at the start of `s` (which begins with `&`): its text and its length.
fn entity(s: &str) -> Option<(String, usize)> {
    let end = s[1..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
        .map_or(s.len(), |e| e + 1);
    let name = &s[1..end];
    let semi = s[end..].starts_with(';');
    let used = end + usize::from(semi);
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return Some((char::from_u32(code).unwrap_or('\u{fffd}').to_string(), used));
    }
    let legacy = ["amp", "lt", "gt", "quot"]; // accepted without ';' like Python's html module
    let (_, text) = ENTITIES
        .iter()
        .find(|(n, _)| *n == name && (semi || legacy.contains(n)))?;
    Some((text.to_string(), used))
}

/// `emoji.demojize`: each emoji (longest match) → `{open}name_with_underscores{close}`.
pub fn demojize(t: &str, open: &str, close: &str) -> String {
    let chars: Vec<(usize, char)> = t.char_indices().collect();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        let found = (i + 1..=(i + 12).min(chars.len())).rev().find_map(|j| {
            let end = chars.get(j).map_or(t.len(), |c| c.0);
            emojis::get(&t[start..end]).map(|e| (j, e))
        });
        match found {
            Some((j, e)) => {
                out.push_str(open);
                out.push_str(&e.name().replace(' ', "_"));
                out.push_str(close);
                i = j;
            }
            None => {
                out.push(chars[i].1);
                i += 1;
            }
        }
    }
    out
}

/// dalle-mini's `HashtagProcessor` (wordninja's DP): splits `sunsetlover` into the most
/// probable words, given words ordered by frequency (cost = ln(rank + 1)).
pub struct HashtagSplitter {
    cost: HashMap<String, f64>,
    max_len: usize,
}

impl HashtagSplitter {
    /// From a list with one word per line (first column), most frequent first.
    pub fn from_word_list(text: &str) -> Self {
        let mut cost = HashMap::new();
        for (i, w) in text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .enumerate()
        {
            cost.entry(w.to_string()).or_insert(((i + 1) as f64).ln());
        }
        let max_len = cost.keys().map(|k| k.chars().count()).max().unwrap_or(1);
        Self { cost, max_len }
    }

    pub fn split(&self, s: &str) -> String {
        let parts: Vec<String> = s
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '\''))
            .flat_map(|w| self.split_word(w))
            .collect();
        parts.join(" ")
    }

    fn best(&self, chars: &[char], cost: &[f64], i: usize) -> (f64, usize) {
        let lo = i.saturating_sub(self.max_len);
        (lo..i)
            .rev()
            .map(|j| {
                let word: String = chars[j..i].iter().collect::<String>().to_lowercase();
                (
                    cost[j] + self.cost.get(&word).copied().unwrap_or(f64::INFINITY),
                    i - j,
                )
            })
            .fold((f64::INFINITY, 1), |a, b| if b.0 < a.0 { b } else { a })
    }

    fn split_word(&self, s: &str) -> Vec<String> {
        let chars: Vec<char> = s.chars().collect();
        let mut cost = vec![0.0];
        for i in 1..=chars.len() {
            let (c, _) = self.best(&chars, &cost, i);
            cost.push(c);
        }
        let mut out: Vec<String> = Vec::new();
        let mut i = chars.len();
        while i > 0 {
            let (_, k) = self.best(&chars, &cost, i);
            let token: String = chars[i - k..i].iter().collect();
            let mut new_token = true;
            // re-attach split 's and digit runs, as dalle-mini does (a lone ' never)
            if token != "'"
                && let Some(last) = out.last_mut()
            {
                let digits =
                    chars[i - 1].is_ascii_digit() && last.starts_with(|c: char| c.is_ascii_digit());
                if last == "'s" || digits {
                    *last = format!("{token}{last}");
                    new_token = false;
                }
            }
            if new_token {
                out.push(token);
            }
            i -= k;
        }
        out.reverse();
        out
    }
}
