//! Keel's disk image: build it from Debian packages and the workspace's binaries
//! ([`build`]), boot it in QEMU with a cloud-config ([`qemu`]).

pub mod build;
pub mod cli;
pub mod cmd;
pub mod deps;
pub mod qemu;
