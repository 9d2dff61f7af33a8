//! CLIP tokenizer ids equal transformers' `CLIPTokenizer` (max_length padding, truncation).

mod common;

use kiln::models::sd15::tokenizer::ClipTokenizer;

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(common::sd_tiny().join("refs/tokenizer.json"))
        .expect("refs/tokenizer.json");
    serde_json::from_str(&text).expect("valid json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check(tok: &ClipTokenizer, source: &str) {
    let cases = cases();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in &cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let got = tok.encode(prompt).expect("encodes").ids;
        if got != ids(&case["input_ids"]) {
            failures.push(format!(
                "{prompt:?}\n  got  {:?}\n  want {:?}",
                got,
                ids(&case["input_ids"])
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{source}: {} prompt(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_vocab_and_merges_match_transformers() {
    let tok =
        ClipTokenizer::from_dir(&common::sd_tiny().join("tokenizer")).expect("tokenizer loads");
    check(&tok, "vocab.json + merges.txt");
}

#[test]
fn builtin_tokenizer_matches_transformers() {
    check(
        &ClipTokenizer::builtin().expect("builtin tokenizer"),
        "builtin",
    );
}

#[test]
fn long_prompts_are_truncated_to_77_with_eos_last() {
    let tok = ClipTokenizer::builtin().unwrap();
    let long = "a very long prompt ".repeat(40);
    let t = tok.encode(&long).unwrap();
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.ids[76], 49407);
    assert!(t.dropped > 0);
    let short = tok.encode("a photo of a cat").unwrap();
    assert_eq!(&short.ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert_eq!(short.dropped, 0);
}
