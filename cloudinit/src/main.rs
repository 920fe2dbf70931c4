//! `keel-cloudinit`: parse the command line, install logging, run, map the error to an
//! exit code (1 invalid config, 2 no user-data, 3 apply failed).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = keel_cloudinit::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match keel_cloudinit::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let chain = anyhow::Error::from(err);
            eprintln!("keel-cloudinit: {chain:#}");
            let code = chain
                .downcast_ref::<keel_cloudinit::RunError>()
                .map(|e| e.exit_code())
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
