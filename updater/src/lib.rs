//! Keel's updater: signed A/B updates of the USR partition with boot counting and
//! automatic rollback.
//!
//! A payload ([`payload`]) is a small ed25519-signed manifest plus the USR image in
//! independently verifiable chunks. [`install`] streams it ([`fetch`]) into the inactive
//! slot of the disk ([`boot::Disk`], Flatcar's [`layout`]), verifying every chunk before
//! writing it, resumable after a crash, then flips the boot state ([`boot`]: the GRUB
//! environment block GRUB reads, [`grubenv`], mirrored into GPT priority/tries/successful
//! attributes) in one commit point. After the reboot, [`lifecycle::mark_good`] blesses the
//! booted slot or records a rollback. [`state`] persists what must survive restarts.
//!
//! The daemon ([`daemon`]) finds updates through Omaha or a channel document ([`source`]),
//! serves update_engine's D-Bus interface, and blesses a new slot only after the health
//! gate ([`health`]) passes.

pub mod boot;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fetch;
pub mod growroot;
pub mod grubenv;
pub mod health;
pub mod install;
pub mod layout;
pub mod lifecycle;
pub mod payload;
pub mod source;
pub mod state;

/// The OS version under `root` (`VERSION` of usr/lib/os-release, else etc/os-release).
pub fn host_version(root: &std::path::Path) -> String {
    for rel in ["usr/lib/os-release", "etc/os-release"] {
        if let Ok(text) = std::fs::read_to_string(root.join(rel)) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("VERSION=") {
                    return v.trim_matches('"').to_string();
                }
            }
        }
    }
    String::new()
}

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
