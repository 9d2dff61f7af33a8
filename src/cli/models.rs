//! `kiln models`: what is installed under the models directory.

use std::path::PathBuf;

use clap::Args;
use kiln::download::{human_size, installed_models};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[arg(long, env = "KILN_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// One JSON object per model instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let models = installed_models(&args.models_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!(
            "No models in {}. `kiln download sd15` fetches Stable Diffusion 1.5 (about 2.7 GB);",
            args.models_dir.display()
        );
        println!("until then `kiln serve` serves the tiny demo models (noise, not pictures).");
        return Ok(());
    }
    println!(
        "{:<16} {:<11} {:<9} {:>9}  SOURCE",
        "ID", "FAMILY", "PRECISION", "SIZE"
    );
    for m in &models {
        let status = if m.incomplete {
            format!("  [incomplete: `kiln download {}` resumes]", m.id)
        } else {
            String::new()
        };
        println!(
            "{:<16} {:<11} {:<9} {:>9}  {}{status}",
            m.id,
            m.family,
            m.precision,
            human_size(m.size_bytes),
            m.source
        );
    }
    Ok(())
}
