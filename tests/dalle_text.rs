//! DALL·E text pipeline against the references in models/fixtures/dalle-tiny/text_cases.json
//! (dalle-mini's TextNormalizer and BartTokenizerFast, min-dalle's TextTokenizer, run on the
//! fixture's toy BPE files): every normaliser step, whole prompts, token ids.

#[path = "common/dalle.rs"]
mod dalle;

use kiln::models::dalle_mini::Tokenization;
use kiln::models::dalle_mini::text_normalizer::{HashtagSplitter, TextNormalizer, demojize};
use serde_json::Value;

fn cases() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(dalle::tiny().join("text_cases.json")).expect("text_cases.json"),
    )
    .expect("json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn each_normaliser_step_matches_dalle_mini() {
    let norm = TextNormalizer::default();
    let c = cases();
    let mut failures = Vec::new();
    let mut count = 0;
    for (step, examples) in c["per_step"].as_object().expect("per_step") {
        for ex in examples.as_array().expect("examples") {
            let (input, want) = (
                ex["input"].as_str().expect("input"),
                ex["output"].as_str().expect("output"),
            );
            let got = norm
                .step(step, input)
                .unwrap_or_else(|| panic!("unknown step {step}"));
            count += 1;
            if got != want {
                failures.push(format!(
                    "{step}({input:?})\n  got  {got:?}\n  want {want:?}"
                ));
            }
        }
    }
    assert!(count > 200, "{count} step examples");
    assert!(
        failures.is_empty(),
        "{} step(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn whole_prompts_normalise_like_dalle_mini() {
    let norm = TextNormalizer::default();
    let mut failures = Vec::new();
    for case in cases()["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let got = norm.normalize(text, 0);
        if got != case["normalized"].as_str().expect("normalized") {
            failures.push(format!(
                "{text:?}\n  got  {got:?}\n  want {:?}",
                case["normalized"]
            ));
        }
        // the pre-ASCII steps on their own
        assert_eq!(
            demojize(text, ":", ":"),
            case["steps"]["demojize"].as_str().expect("demojize"),
            "demojize {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} prompt(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn token_ids_match_both_tokenizers() {
    let m = dalle::load(&dalle::flax_dir());
    let c = cases();
    assert_eq!(m.tokenizer.uncond_row(), ids(&c["uncond_input_ids"]));
    let mut long = false;
    for case in c["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let normalized = case["normalized"].as_str().expect("normalized");
        let (got, used) = m.tokenizer.encode(normalized).expect("encodes");
        assert_eq!(got, ids(&case["input_ids"]), "HF ids of {normalized:?}");
        assert_eq!(
            used,
            ids(&case["attention_mask"]).iter().sum::<u32>() as usize
        );
        let md = ids(&case["min_dalle_ids"]);
        assert_eq!(
            m.tokenizer.encode_min_dalle(text),
            md,
            "min-dalle ids of {text:?}"
        );
        long |= md.len() > 64;
        let [_, row] = m.text_rows(text, Tokenization::MinDalle, 0).expect("rows");
        assert_eq!(row[..md.len().min(64)], md[..md.len().min(64)]);
        let [_, row] = m
            .text_rows(text, Tokenization::Normalized, 0)
            .expect("rows");
        assert_eq!(row, got, "pipeline row of {text:?}");
    }
    assert!(long, "a case longer than 64 tokens");
}

#[test]
fn person_tokens_follow_the_seed() {
    let norm = TextNormalizer::default();
    let a = norm.normalize("a photo of <person> with a dog", 3);
    assert_eq!(a, norm.normalize("a photo of <person> with a dog", 3));
    assert!(
        ["a person", "someone", "somebody"]
            .iter()
            .any(|w| a.contains(w)),
        "{a}"
    );
    let picks: std::collections::BTreeSet<String> =
        (0..40).map(|s| norm.normalize("<person>", s)).collect();
    assert!(picks.len() >= 2, "{picks:?}");
}

#[test]
fn hashtags_split_into_frequent_words() {
    // wordninja's DP with dalle-mini's re-attachment of digits and 's
    let words = "the\nof\nsunset\nlover\nsun\nset\nlove\nr\nbeach\n2022\n's\n";
    let norm = TextNormalizer::new(Some(HashtagSplitter::from_word_list(words)));
    assert_eq!(
        norm.normalize("#sunsetlover at the #beach2022", 0),
        " sunset lover at the beach 2022"
    );
    assert_eq!(
        TextNormalizer::default().normalize("#sunsetlover", 0),
        " sunsetlover"
    );
}
