//! `keel-containerd`: an OCI runtime.

use clap::Parser;
use keel_containerd::cli::{Cli, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            cli.global.log_error(&msg);
            eprintln!("keel-containerd: {msg}");
            ExitCode::FAILURE
        }
    }
}
