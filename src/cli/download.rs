//! `kiln download`: fetch published weights from the Hugging Face Hub into `models/<id>/`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln::download::{HubConfig, download_model, expand_ids, human_size, recipe};

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// sd15, dalle-mini, dalle-mega, or all (the three models); add-ons for SD 1.5: taesd
    /// (`models/taesd/`, previews and `--vae taesd`) and lcm-lora-sdv1-5
    /// (`models/loras/lcm-lora-sdv1-5/`).
    #[arg(required = true, value_name = "MODEL")]
    pub models: Vec<String>,
    /// Where model folders live (`<dir>/<id>/`).
    #[arg(long, env = "KILN_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// SD 1.5's half-precision files (half the download); `--fp16=false` or `--no-fp16` for fp32.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub fp16: bool,
    /// Same as `--fp16=false`.
    #[arg(long = "no-fp16", conflicts_with = "fp16")]
    pub no_fp16: bool,
    /// Use only what is on disk (also `HF_HUB_OFFLINE=1`); fails if files are missing.
    #[arg(long)]
    pub offline: bool,
    /// Revision (commit, branch or tag) of the model's main repository instead of the pinned one.
    #[arg(long)]
    pub revision: Option<String>,
}

pub fn run(args: DownloadArgs) -> anyhow::Result<()> {
    let ids = expand_ids(&args.models)?;
    let fp16 = args.fp16 && !args.no_fp16;
    let hub = HubConfig::from_env().with_offline(args.offline);
    for id in &ids {
        let mut spec = recipe(id, fp16)?;
        if let Some(rev) = &args.revision {
            spec = spec.with_revision(rev);
        }
        let origin = spec
            .sources
            .iter()
            .map(|s| format!("{}@{}", s.repo, s.revision))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "{id}: {origin} → {}",
            args.models_dir.join(&spec.dir).display()
        );
        let report = download_model(&spec, &args.models_dir, &hub)
            .with_context(|| format!("kiln download {id}"))?;
        eprintln!(
            "{id}: ready in {} ({} file(s) fetched, {}; {} already there)",
            report.dir.display(),
            report.fetched.len(),
            human_size(report.bytes_fetched),
            report.present.len()
        );
    }
    Ok(())
}
