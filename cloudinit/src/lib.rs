//! `keel-cloudinit`: applies coreos-cloudinit-style user-data (`#cloud-config` YAML,
//! `#!` scripts, gzip, MIME multipart) to a Keel host, fail-closed and idempotently.
//!
//! Flow:
//! 1. [`datasource`] fetches user-data and instance metadata (file, URL, config-drive,
//!    kernel command line, EC2 metadata, NoCloud, QEMU `fw_cfg`; polled concurrently).
//! 2. [`userdata`] recognises the format; [`load`] decodes every cloud-config part with
//!    [`config::decode`] into one typed [`config::CloudConfig`] plus a [`report::Report`].
//!    `validate` prints that report; it is the same model `apply` uses.
//! 3. [`metadata::apply_metadata`] substitutes `$private_ipv4`… into decoded string
//!    values and merges metadata hostname and SSH keys.
//! 4. [`apply::plan`] computes every write in memory, failing before the first write on
//!    anything the config got wrong; [`apply::execute`] carries it out through
//!    [`systemd::SystemdManager`] (D-Bus, or unit symlinks written into `--root`).
//!
//! Limitations: config-drive and NoCloud media must be ISO9660 or VFAT (read in place)
//! or ext2/3/4 (mounted read-only, which needs root); `coreos_ssh_import_*` keys are
//! reported as deprecated and not fetched; networkd conversion of provider network config
//! (`--convert-netconf`) is not implemented; scripts are started, not awaited, as upstream.

pub mod apply;
pub mod cli;
pub mod config;
pub mod datasource;
pub mod metadata;
pub mod report;
pub mod systemd;
pub mod userdata;
pub mod yaml;

pub use cli::{Cli, RunError, run};

use apply::Script;
use config::CloudConfig;
use report::Report;
use userdata::{Part, UserData};

/// What kind of user-data a document was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Empty,
    CloudConfig,
    Script,
    Multipart,
    Ignition,
    Unknown,
}

/// User-data decoded into what `apply` needs, with its report.
#[derive(Debug, Clone)]
pub struct Document {
    pub format: Format,
    pub report: Report,
    pub config: CloudConfig,
    pub scripts: Vec<Script>,
}

impl Document {
    /// Whether `apply` may proceed.
    pub fn is_applicable(&self) -> bool {
        !self.report.has_errors()
    }
}

/// Decodes raw user-data bytes (gzip, MIME, header detection) into a [`Document`].
/// Never panics; every problem becomes a report entry.
pub fn load(bytes: &[u8]) -> Document {
    let mut doc = Document {
        format: Format::Unknown,
        report: Report::default(),
        config: CloudConfig::default(),
        scripts: Vec::new(),
    };
    let data = match userdata::classify(bytes) {
        Ok(d) => d,
        Err(e) => {
            doc.report.error(1, e.to_string());
            return doc;
        }
    };
    match data {
        UserData::Empty => doc.format = Format::Empty,
        UserData::CloudConfig(text) => {
            doc.format = Format::CloudConfig;
            let (report, config) = config::decode(&text);
            doc.report = report;
            doc.config = config.unwrap_or_default();
        }
        UserData::Script(text) => {
            doc.format = Format::Script;
            doc.scripts.push(Script {
                name: "user-data".into(),
                text,
            });
        }
        UserData::Ignition => {
            doc.format = Format::Ignition;
            doc.report.error(
                1,
                "this is an Ignition config; keel-cloudinit applies #cloud-config and #! scripts only",
            );
        }
        UserData::Multipart(parts) => {
            doc.format = Format::Multipart;
            if parts.is_empty() {
                doc.report.warning(
                    1,
                    "MIME user-data has no text/cloud-config or text/x-shellscript part",
                );
            }
            for (i, part) in parts.into_iter().enumerate() {
                let n = i + 1;
                match part {
                    Part::CloudConfig(text) => {
                        let (report, config) = config::decode(&text);
                        for e in report.entries() {
                            let mut r = Report::default();
                            let msg = format!("MIME part {n}: {}", e.message);
                            match e.kind {
                                report::Kind::Error => r.error(e.line, msg),
                                report::Kind::Warning => r.warning(e.line, msg),
                                report::Kind::Info => r.info(e.line, msg),
                            }
                            doc.report.extend(r);
                        }
                        if let Some(c) = config {
                            merge(&mut doc.config, c);
                        }
                    }
                    Part::Script(text) => doc.scripts.push(Script {
                        name: format!("part-{n}"),
                        text,
                    }),
                }
            }
        }
        UserData::Unknown(msg) => doc.report.error(1, msg),
    }
    doc
}

/// Merges a later MIME part into the config: lists are appended, set values replace.
fn merge(into: &mut CloudConfig, later: CloudConfig) {
    if later.hostname.is_some() {
        into.hostname = later.hostname;
    }
    if later.manage_etc_hosts.is_some() {
        into.manage_etc_hosts = later.manage_etc_hosts;
    }
    into.ssh_authorized_keys.extend(later.ssh_authorized_keys);
    into.users.extend(later.users);
    into.write_files.extend(later.write_files);
    let (a, b) = (&mut into.coreos, later.coreos);
    for (dst, src) in [
        (&mut a.etcd, b.etcd),
        (&mut a.etcd2, b.etcd2),
        (&mut a.fleet, b.fleet),
        (&mut a.flannel, b.flannel),
        (&mut a.locksmith, b.locksmith),
        (&mut a.update, b.update),
        (&mut a.oem, b.oem),
    ] {
        for v in src.values {
            dst.values.retain(|x| x.key != v.key);
            dst.values.push(v);
        }
    }
    a.units.extend(b.units);
}
