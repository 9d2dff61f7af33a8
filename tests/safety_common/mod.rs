//! A copy of the tiny safety checker (`models/fixtures/safety-tiny`) with its concept thresholds
//! rewritten, so that the real checker flags every image or none: for the server's and the
//! CLI's moderation tests.

use std::path::Path;

pub fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// `safety-tiny` in `to`, with every concept threshold (`concept_embeds_weights`) set to
/// `threshold`: cosine similarities lie in [-1, 1], so -2 flags every image and 2 none.
pub fn checker_with_threshold(to: &Path, threshold: f32) {
    let from = fixtures().join("safety-tiny");
    for f in [
        "safety_checker/config.json",
        "feature_extractor/preprocessor_config.json",
    ] {
        std::fs::create_dir_all(to.join(f).parent().expect("parent")).expect("mkdir");
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
    let bytes = std::fs::read(from.join("safety_checker/model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut owned = Vec::new();
    for (name, view) in st.tensors() {
        let data = if name.ends_with("concept_embeds_weights") && !name.contains("special") {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let n = view.shape().iter().product::<usize>();
            threshold.to_le_bytes().repeat(n)
        } else {
            view.data().to_vec()
        };
        owned.push((name, view.shape().to_vec(), view.dtype(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &to.join("safety_checker/model.safetensors"))
        .expect("write");
}
