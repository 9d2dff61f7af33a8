//! `kiln generate`'s files: the images (numbered when several), and the latents or tokens
//! asked for.

use std::path::Path;

use anyhow::Context;
use kiln::engine::GeneratedImage;
use kiln::image_io::{self, ImageFormat};
use kiln::weights::write_f32;

use super::generate::GenerateArgs;

/// Writes the images (numbered when several), their latents or tokens when asked.
pub(super) fn write_outputs(
    a: &GenerateArgs,
    format: ImageFormat,
    images: &[GeneratedImage],
) -> anyhow::Result<()> {
    for (k, g) in images.iter().enumerate() {
        let path = image_io::numbered_path(&a.output, k, images.len());
        let params = g.params.as_ref().filter(|_| !a.no_metadata);
        let bytes = image_io::encode(&g.image, format, a.quality, params)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{} (seed {})", path.display(), g.seed);
    }
    if let Some(p) = &a.save_latents {
        let mut shape = vec![images.len()];
        let mut values = Vec::new();
        for g in images {
            let (s, v) = g.latents.as_ref().context("the pipeline kept no latents")?;
            if shape.len() == 1 {
                shape.extend(s);
            }
            values.extend_from_slice(v);
        }
        write_f32(p, "latents", &shape, &values)?;
    }
    if let Some(p) = &a.save_tokens {
        let tokens: Vec<&Vec<u32>> = images.iter().filter_map(|g| g.tokens.as_ref()).collect();
        write_json(p, &tokens)?;
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string(value)?)
        .with_context(|| format!("writing {}", path.display()))
}
