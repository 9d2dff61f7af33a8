//! The `kiln` command line.

mod cli;

use clap::Parser;

pub fn main() -> std::process::ExitCode {
    kiln::tune_allocator();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, &args.log_format);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
