//! `kiln`, `sd15_bench` and `dalle_bench` in one binary, chosen by the name it is run under:
//! what benches/gpu/pack.sh carries to the GPU machine (benches/gpu/run.sh links the three
//! names to it). Built with `--features cuda,wgpu`, each of the three was 17 MB after strip
//! and xz, and a call to that machine carries 64 MiB in all, 35 of them the tracked tree; in
//! one binary the backends' code is there once.

#[path = "dalle_bench.rs"]
mod dalle_bench;
#[path = "../src/main.rs"]
mod kiln_main;
#[path = "sd15_bench.rs"]
mod sd15_bench;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().unwrap_or_default();
    if name == "sd15_bench" {
        sd15_bench::main();
        ExitCode::SUCCESS
    } else if name == "dalle_bench" {
        dalle_bench::main();
        ExitCode::SUCCESS
    } else {
        kiln_main::main()
    }
}
