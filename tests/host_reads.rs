//! Host reads during generation (see `common/host_reads.rs`) on the CPU backend, and the rule
//! that makes them countable: model, engine, server and doctor code reads tensors back only
//! through `kiln::nn::host_f32`.

mod common;
#[path = "common/dalle.rs"]
mod dalle;
#[path = "common/dalle_checks.rs"]
mod dalle_checks;
#[path = "common/host_reads.rs"]
mod host_reads;

use std::path::Path;

#[test]
fn sd15_reads_nothing_per_step() {
    let m = kiln::models::sd15::StableDiffusion::<common::B>::load(
        &common::sd_tiny(),
        false,
        &common::device(),
    )
    .expect("tiny model loads");
    host_reads::sd15(&m);
}

#[test]
fn dalle_reads_once_per_token() {
    host_reads::dalle(&dalle::load(&dalle::flax_dir()), &dalle_checks::text_rows());
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn tensors_are_read_back_only_through_host_f32() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in [
        "models",
        "engine",
        "image_io",
        "server",
        "doctor",
        "schedulers",
    ] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "{} files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source");
        // Unit tests (the module after `#[cfg(test)]`) may read as they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            if ["into_data(", "into_scalar(", "to_data(", "into_data_async("]
                .iter()
                .any(|p| line.contains(p))
            {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "read back outside kiln::nn::host_f32:\n{}",
        found.join("\n")
    );
}
