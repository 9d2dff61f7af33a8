//! The `kiln` command line.

// The server's middleware stack (`server::build_server`) nests one type per layer; laying it
// out for `kiln serve` goes past rustc's default query depth of 128.
#![recursion_limit = "256"]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
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
