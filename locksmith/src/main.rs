//! `keel-locksmith`: the reboot coordinator daemon and its operator commands.

use clap::Parser;
use keel_locksmith::cli::{Cli, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if cli.global.debug { "debug" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel-locksmith: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, std::env::vars().collect())) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("keel-locksmith: {e:#}");
            ExitCode::FAILURE
        }
    }
}
