//! Keel's container runtime: the OCI runtime command line (`create`, `start`, `state`,
//! `kill`, `delete`, `run`, `exec`, `update`, `pause`, `resume`, `ps`, `events`, `list`, `spec`, `features`)
//! on runtime-spec bundles.
//!
//! Flow: [`spec`] loads and checks `config.json`; [`container`] drives the lifecycle and
//! persists [`state`]; [`cgroups`] creates the container's cgroups on any v1/hybrid/v2
//! layout; [`linux`] forks the init into its namespaces, where [`mounts`] builds its
//! filesystem, and blocks it until `start`; [`hooks`] run at each step.
//!
//! [`image`] imports OCI layouts and docker archives (digests, signatures) and runs them
//! with rkt's flags.
//!
//! Not yet: rootless operation, `exec --tty`, the systemd cgroup driver, overlayfs rootfs.

pub mod cgroups;
pub mod cli;
pub mod container;
pub mod devices;
pub mod hooks;
pub mod image;
pub mod linux;
pub mod mounts;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod systemd;
pub mod terminal;

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
