//! `keel-store`: run an etcd-compatible member (etcd's flags), or one of the operator
//! subcommands.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use keel_store::config::{EtcdFlags, normalize_go_flags};
use std::process::ExitCode;

/// Keel's etcd-compatible key-value store. Without a subcommand it runs a member and
/// takes etcd's flags (also as ETCD_* environment variables).
#[derive(Debug, Parser)]
#[command(name = "keel-store", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    etcd: EtcdFlags,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Drive any etcd endpoint (v2 HTTP or v3 gRPC) with load and report throughput, latency and memory.
    Bench(keel_store::bench::BenchArgs),
    /// Work with backups taken by `etcdctl snapshot save` (the Snapshot RPC).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// Create a new data dir from a backup; then start keel-store on that data dir.
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
        /// The data dir to create (must not hold a store yet).
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches_from(normalize_go_flags(std::env::args()));
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-store: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command {
        Some(Cmd::Bench(args)) => runtime.block_on(keel_store::bench::run(args)),
        Some(Cmd::Snapshot(SnapshotCmd::Restore { file, data_dir })) => {
            let meta = keel_store::engine::restore(&file, &data_dir)
                .with_context(|| format!("cannot restore {}", file.display()))?;
            println!(
                "restored {} into {} at log index {}",
                file.display(),
                data_dir.display(),
                meta.index
            );
            Ok(())
        }
        None => {
            let settings = cli
                .etcd
                .validate(std::env::vars())
                .context("invalid configuration")?;
            init_logging(&settings.log_level);
            runtime.block_on(keel_store::server::run(settings, shutdown_signal()))?;
            Ok(())
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
