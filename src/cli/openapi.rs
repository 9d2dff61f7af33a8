//! `kiln openapi`: prints the OpenAPI spec (the committed `openapi.json` must equal it).

use clap::Args;

#[derive(Args, Debug)]
pub struct OpenapiArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

pub fn run(args: OpenapiArgs) -> anyhow::Result<()> {
    let spec = kiln::server::spec_json();
    match args.output {
        Some(p) => std::fs::write(&p, spec).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())),
        None => {
            print!("{spec}");
            Ok(())
        }
    }
}
