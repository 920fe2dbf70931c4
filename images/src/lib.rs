//! Keel's disk image: build it from Debian packages and the workspace's binaries
//! ([`build`]), boot it in QEMU with a cloud-config ([`qemu`]).

pub mod build;
pub mod cli;
pub mod cmd;
pub mod deps;
pub mod qemu;

use std::path::PathBuf;

/// A file operation that failed, naming the file and what was being done to it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot {op}")]
pub struct IoError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: std::io::Error,
}
