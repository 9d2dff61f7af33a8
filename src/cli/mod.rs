//! Command-line parsing and the subcommands.

mod addons;
mod doctor;
mod download;
mod generate;
mod generate_out;
mod models;
mod openapi;
mod probe;
mod serve;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Image generation (Stable Diffusion 1.5) in Rust on Burn"
)]
pub struct Cli {
    /// More logging (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log lines as `text` (for people) or `json` (one object a line, for log collectors; a
    /// request's lines carry its `id` in `span`).
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,

    /// Without a subcommand, `kiln` serves (options from KILN_* environment variables).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate images from a prompt and write them as PNG.
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-compatible Images API (the default when no subcommand is given).
    Serve(serve::ServeArgs),
    /// Print the OpenAPI spec of the server.
    Openapi(openapi::OpenapiArgs),
    /// Download published weights (sd15, dalle-mini, dalle-mega, all) from the Hugging Face Hub.
    Download(download::DownloadArgs),
    /// List the models installed under the models directory.
    Models(models::ModelsArgs),
    /// Verify a device: the tiny-model parity checks against the committed references
    /// (`kiln doctor --device cuda`), from a checkout's models/fixtures.
    Doctor(doctor::DoctorArgs),
    /// Check a running server's health (exit 0 when GET /health/ready or /health/live is 200).
    Probe(probe::ProbeArgs),
}

pub fn init_logging(verbose: u8, format: &str) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        "json" => logs
            .json()
            // `span`: the innermost (a worker's `job`); `spans`: all of them, so a worker's
            // line also carries its request's `id`.
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        _ => logs.try_init(),
    };
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Serve(args)) => serve::run(args),
        Some(Command::Openapi(args)) => openapi::run(args),
        Some(Command::Download(args)) => download::run(args),
        Some(Command::Models(args)) => models::run(args),
        Some(Command::Probe(args)) => probe::run(args),
        Some(Command::Doctor(args)) => doctor::run(args),
        None => serve::run(serve::default_args()),
    }
}
