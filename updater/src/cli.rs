//! The command line: operator commands and release-engineering `payload` commands.

use crate::boot::Slot;
use crate::fetch::{STALL_TIMEOUT, Source};
use crate::install::{HostConfig, InstallOptions};
use crate::lifecycle::BootOutcome;
use crate::payload::build::{BuildOptions, DEFAULT_CHUNK_SIZE};
use crate::payload::keys::{self, TrustedKeys};
use crate::payload::{self, Compression, Policy};
use crate::state::State;
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Keel's A/B updater: signed payloads into the inactive USR slot, boot counting,
/// automatic rollback.
#[derive(Debug, Parser)]
#[command(name = "keel-updater", version)]
pub struct Cli {
    #[command(flatten)]
    pub host: HostArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the host's pieces are.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Root for host files (/proc/cmdline, key directories, /run, os-release).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    /// Disk (image or block device) holding USR-A and USR-B [default: the disk of
    /// /dev/disk/by-partlabel/USR-A].
    #[arg(long, global = true, env = "KEEL_UPDATER_DISK")]
    pub disk: Option<PathBuf>,
    /// The GRUB environment block GRUB reads.
    #[arg(
        long,
        global = true,
        default_value = "/boot/grub/grubenv",
        env = "KEEL_UPDATER_GRUBENV"
    )]
    pub grubenv: PathBuf,
    /// Directory of the updater's state.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/keel/updater",
        env = "KEEL_UPDATER_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// This host's board (payloads for another board are refused).
    #[arg(
        long,
        global = true,
        default_value = "amd64-usr",
        env = "KEEL_UPDATER_BOARD"
    )]
    pub board: String,
    /// This host's architecture.
    #[arg(long, global = true, default_value = std::env::consts::ARCH)]
    pub arch: String,
    /// The booted slot, instead of reading it from the kernel command line.
    #[arg(long, global = true)]
    pub booted_slot: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// First boot: grow ROOT (the last partition) and its mounted ext4 to the end of the
    /// disk.
    GrowRoot {
        /// Where ROOT is mounted.
        #[arg(long, default_value = "/")]
        mountpoint: PathBuf,
        /// File written once done (the unit's condition).
        #[arg(long)]
        stamp: Option<PathBuf>,
    },
    /// Install a payload (URL or file) into the inactive slot; resumes an interrupted
    /// install of the same payload.
    Install {
        source: String,
        /// Install even a version that rolled back on this host before.
        #[arg(long)]
        force: bool,
    },
    /// Show the slots, the boot order, the GPT attributes and the updater's state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Bless the booted slot (or record that the pending update rolled back).
    MarkGood,
    /// Boot the other slot next (it must be known good unless --force).
    Rollback {
        #[arg(long)]
        force: bool,
    },
    /// Refuse new installs until `resume`.
    Pause,
    /// Allow installs again.
    Resume,
    /// Abandon an interrupted or pending install: the inactive slot is made unbootable.
    Cancel,
    /// Run the update agent: settle the boot (rollback detection, health gate, bless),
    /// check for updates every interval, install them, serve com.coreos.update1 on D-Bus.
    Daemon(DaemonArgs),
    /// Check the update source once and install what it offers (no D-Bus).
    Check(SourceArgs),
    /// Release engineering: keys and payloads.
    #[command(subcommand)]
    Payload(PayloadCmd),
}

/// Where updates come from (flags override update.conf and drop-ins).
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Omaha server URL [update.conf: SERVER=; `disabled` = none].
    #[arg(long)]
    pub server: Option<String>,
    /// Channel document URL [drop-in: CHANNEL=].
    #[arg(long, conflicts_with = "server")]
    pub channel: Option<String>,
    /// Update group (Omaha track) [update.conf: GROUP=; default: stable].
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Time between update checks [drop-in: CHECK_INTERVAL=; default: 45m].
    #[arg(long)]
    pub interval: Option<String>,
    /// Wait after start before the first health check [HEALTH_GRACE=; default: 45s].
    #[arg(long)]
    pub health_grace: Option<String>,
    /// Give up on blessing after [HEALTH_TIMEOUT=; default: 10m].
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Unit that must be active before blessing (repeatable) [HEALTH_UNITS=].
    #[arg(long)]
    pub health_unit: Vec<String>,
    /// Command (sh -c) that must succeed before blessing (repeatable) [HEALTH_COMMAND=].
    #[arg(long)]
    pub health_command: Vec<String>,
    /// Do not require "no failed units" [HEALTH_NO_FAILED_UNITS=0].
    #[arg(long)]
    pub allow_failed_units: bool,
    /// Do not use D-Bus (no service, no systemd checks).
    #[arg(long)]
    pub no_dbus: bool,
}

#[derive(Debug, Subcommand)]
pub enum PayloadCmd {
    /// Create a signing key pair: OUT.key (private, 0600) and OUT.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a payload from a USR image.
    Build {
        image: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        version: String,
        #[arg(long)]
        rollback_index: u64,
        /// Days until the manifest expires.
        #[arg(long, default_value_t = 90)]
        expires_in_days: i64,
        /// Absolute expiry (Unix seconds), instead of --expires-in-days.
        #[arg(long)]
        expires: Option<i64>,
        #[arg(long, default_value = "amd64-usr")]
        board: String,
        #[arg(long, default_value = std::env::consts::ARCH)]
        arch: String,
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
        /// Store chunks zstd-compressed.
        #[arg(long)]
        zstd: bool,
        /// Private key(s) to sign with.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Add signatures to a payload.
    Sign {
        payload: PathBuf,
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
    },
    /// Print a payload's manifest and check it (signature against --key or the root's
    /// trusted keys, policy against this host, every chunk).
    Inspect {
        payload: PathBuf,
        /// Public key(s) to trust instead of the root's key directories.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The disk holding `<root>/dev/disk/by-partlabel/USR-A`.
fn default_disk(root: &Path) -> anyhow::Result<PathBuf> {
    let link = root.join("dev/disk/by-partlabel/USR-A");
    let part = std::fs::canonicalize(&link)
        .with_context(|| format!("no --disk given and {} does not resolve", link.display()))?;
    let name = part
        .file_name()
        .and_then(|n| n.to_str())
        .context("partition device has no name")?;
    let sys = root.join("sys/class/block").join(name);
    let parent = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .with_context(|| format!("cannot find the disk of {}", part.display()))?;
    Ok(root.join("dev").join(parent))
}

fn host_config(a: &HostArgs) -> anyhow::Result<HostConfig> {
    let booted = match &a.booted_slot {
        Some(s) => {
            Some(Slot::parse(s).with_context(|| format!("--booted-slot {s:?} is not A or B"))?)
        }
        None => None,
    };
    Ok(HostConfig {
        root: a.root.clone(),
        disk: match &a.disk {
            Some(d) => d.clone(),
            None => default_disk(&a.root)?,
        },
        grubenv: a.grubenv.clone(),
        state_dir: a.state_dir.clone(),
        board: a.board.clone(),
        arch: a.arch.clone(),
        booted,
    })
}

fn private_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<ed25519_dalek::SigningKey>> {
    paths
        .iter()
        .map(|p| keys::read_private(p).map_err(anyhow::Error::from))
        .collect()
}

fn update_source(
    a: &SourceArgs,
    s: &crate::config::Settings,
) -> Option<crate::source::UpdateSource> {
    use crate::source::UpdateSource;
    if let Some(c) = &a.channel {
        return Some(UpdateSource::Channel { url: c.clone() });
    }
    if let Some(url) = &a.server {
        return (url != "disabled").then(|| UpdateSource::Omaha { url: url.clone() });
    }
    if let Some(c) = s.get("CHANNEL") {
        return Some(UpdateSource::Channel {
            url: c.value.clone(),
        });
    }
    s.get("SERVER")
        .filter(|e| e.value != "disabled" && !e.value.is_empty())
        .map(|e| UpdateSource::Omaha {
            url: e.value.clone(),
        })
}

/// Resolves the daemon's settings.
pub fn daemon_config(
    host: &HostArgs,
    a: &DaemonArgs,
) -> anyhow::Result<crate::daemon::DaemonConfig> {
    use crate::config::{DEFAULT_GROUP, DEFAULT_INTERVAL, Settings, parse_duration};
    let s = Settings::load(&host.root)?;
    let flag = |v: &Option<String>, name: &str| -> anyhow::Result<Option<std::time::Duration>> {
        v.as_ref()
            .map(|v| {
                parse_duration(v).with_context(|| {
                    format!("--{name} {v:?} is not a duration like 45s, 10m or 2h")
                })
            })
            .transpose()
    };
    let defaults = crate::health::HealthConfig::default();
    let mut units: Vec<String> = s
        .get("HEALTH_UNITS")
        .map(|e| e.value.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    units.extend(a.health_unit.iter().cloned());
    let mut commands: Vec<String> = s
        .all("HEALTH_COMMAND")
        .into_iter()
        .map(|e| e.value.clone())
        .collect();
    commands.extend(a.health_command.iter().cloned());
    let health = crate::health::HealthConfig {
        grace: flag(&a.health_grace, "health-grace")?
            .or(s.duration("HEALTH_GRACE")?)
            .unwrap_or(defaults.grace),
        timeout: flag(&a.health_timeout, "health-timeout")?
            .or(s.duration("HEALTH_TIMEOUT")?)
            .unwrap_or(defaults.timeout),
        no_failed_units: !a.allow_failed_units
            && !a.no_dbus
            && s.get("HEALTH_NO_FAILED_UNITS")
                .is_none_or(|e| e.value != "0"),
        units,
        commands,
        interval: defaults.interval,
    };
    Ok(crate::daemon::DaemonConfig {
        host: host_config(host)?,
        source: update_source(&a.source, &s),
        group: a
            .source
            .group
            .clone()
            .or_else(|| s.get("GROUP").map(|e| e.value.clone()))
            .unwrap_or_else(|| DEFAULT_GROUP.to_string()),
        app_id: s
            .get("APP_ID")
            .map(|e| e.value.clone())
            .unwrap_or_else(|| crate::source::KEEL_APP_ID.to_string()),
        interval: flag(&a.interval, "interval")?
            .or(s.duration("CHECK_INTERVAL")?)
            .unwrap_or(DEFAULT_INTERVAL),
        health,
        dbus: !a.no_dbus,
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::GrowRoot { mountpoint, stamp } => {
            let disk = match &cli.host.disk {
                Some(d) => d.clone(),
                None => default_disk(&cli.host.root)?,
            };
            match crate::growroot::grow_root(&disk, mountpoint)? {
                Some(g) => println!(
                    "{}: partition {} grown from {} MiB to {} MiB",
                    disk.display(),
                    g.number,
                    g.old_bytes >> 20,
                    g.new_bytes >> 20
                ),
                None => println!(
                    "{}: ROOT already ends at the end of the disk",
                    disk.display()
                ),
            }
            if let Some(stamp) = stamp {
                if let Some(d) = stamp.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(stamp, b"")?;
            }
            Ok(())
        }
        Command::Daemon(a) => {
            let cfg = daemon_config(&cli.host, a).context("invalid configuration")?;
            crate::daemon::run(cfg, shutdown_signal()).await
        }
        Command::Check(src) => {
            let args = DaemonArgs {
                source: SourceArgs {
                    server: src.server.clone(),
                    channel: src.channel.clone(),
                    group: src.group.clone(),
                },
                interval: None,
                health_grace: None,
                health_timeout: None,
                health_unit: vec![],
                health_command: vec![],
                allow_failed_units: true,
                no_dbus: true,
            };
            let cfg = daemon_config(&cli.host, &args).context("invalid configuration")?;
            if cfg.source.is_none() {
                bail!(
                    "no update source: give --server or --channel, or set SERVER= in update.conf"
                );
            }
            crate::daemon::check_once(cfg).await
        }
        Command::Payload(cmd) => payload_cmd(&cli.host, cmd),
        Command::Install { source, force } => {
            let host = host_config(&cli.host)?;
            let source = Source::parse(source, STALL_TIMEOUT)?;
            let report = crate::install::install(
                &host,
                &source,
                &InstallOptions {
                    force: *force,
                    progress: None,
                },
            )
            .await?;
            println!(
                "installed {} into {} ({} bytes{}) in {:.2} s (read-back verify {:.2} s); reboot to try it",
                report.version,
                report.slot.label(),
                report.image_size,
                if report.resumed_at > 0 {
                    format!(", resumed at chunk {}", report.resumed_at)
                } else {
                    String::new()
                },
                report.elapsed.as_secs_f64(),
                report.verify_elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Status { json } => {
            let host = host_config(&cli.host)?;
            let s = crate::lifecycle::status(&host)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!(
                "booted: {} ({})",
                s.booted_slot.unwrap_or("unknown"),
                if s.booted_version.is_empty() {
                    "unknown version"
                } else {
                    &s.booted_version
                }
            );
            println!(
                "next boot: {}   order: {}",
                s.next_boot.unwrap_or("none (rescue)"),
                s.order.join(" ")
            );
            for slot in &s.slots {
                println!(
                    "{} (partition {}, {} bytes): ok={} tries_left={}  gpt priority={} tries={} successful={}",
                    slot.label,
                    slot.partition,
                    slot.size,
                    u8::from(slot.ok),
                    slot.tries_left,
                    slot.gpt_priority,
                    slot.gpt_tries,
                    u8::from(slot.gpt_successful)
                );
            }
            if let Some(p) = &s.state.pending {
                println!(
                    "pending: {} in {} (from {}), waiting for its first good boot",
                    p.version,
                    p.slot.label(),
                    p.from_version
                );
            }
            if let Some(p) = &s.state.progress {
                println!(
                    "interrupted install: {} into {}, next chunk {} (run install again to resume)",
                    p.version,
                    p.slot.label(),
                    p.next_chunk
                );
            }
            for r in &s.state.rolled_back {
                println!("rolled back: {} ({})", r.version, r.reason);
            }
            println!(
                "minimum rollback index: {}{}",
                s.state.min_rollback_index,
                if s.state.paused {
                    "; installs PAUSED"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::MarkGood => {
            let host = host_config(&cli.host)?;
            match crate::lifecycle::mark_good(&host)? {
                BootOutcome::Blessed { version, slot } => {
                    println!("{version} in {} is good", slot.label())
                }
                BootOutcome::RolledBack { version, slot } => {
                    println!(
                        "{version} in {} did not boot: rolled back, will not be retried",
                        slot.label()
                    )
                }
                BootOutcome::AlreadyGood { slot } => println!("{} is good", slot.label()),
                BootOutcome::NotRebooted { version, slot } => {
                    println!(
                        "{version} is installed in {} but not booted yet; nothing to mark",
                        slot.label()
                    )
                }
            }
            Ok(())
        }
        Command::Rollback { force } => {
            let host = host_config(&cli.host)?;
            let slot = crate::lifecycle::rollback(&host, *force)?;
            println!("next boot: {}", slot.label());
            Ok(())
        }
        Command::Pause | Command::Resume => {
            let dir = &cli.host.state_dir;
            let mut state = State::load(dir)?;
            state.paused = matches!(cli.command, Command::Pause);
            state.save(dir)?;
            println!(
                "installs {}",
                if state.paused { "paused" } else { "resumed" }
            );
            Ok(())
        }
        Command::Cancel => {
            let host = host_config(&cli.host)?;
            let booted = host.booted_slot()?;
            let mut disk = crate::boot::Disk::open(&host.disk)?;
            let mut boot = crate::boot::BootState::load(&host.grubenv)?;
            let mut next = boot.boot.clone();
            next.make_unbootable(booted.other());
            boot.commit(next, Some(&mut disk))?;
            let mut state = State::load(&host.state_dir)?;
            state.progress = None;
            state.pending = None;
            state.save(&host.state_dir)?;
            let _ = std::fs::remove_file(host.root.join("run/reboot-required"));
            println!("cancelled; {} is unbootable", booted.other().label());
            Ok(())
        }
    }
}

fn payload_cmd(host: &HostArgs, cmd: &PayloadCmd) -> anyhow::Result<()> {
    match cmd {
        PayloadCmd::Keygen { out } => {
            let id = keys::generate(out)?;
            println!(
                "key {id}: {} (private), {} (public)",
                out.with_extension("key").display(),
                out.with_extension("pub").display()
            );
        }
        PayloadCmd::Build {
            image,
            out,
            version,
            rollback_index,
            expires_in_days,
            expires,
            board,
            arch,
            chunk_size,
            zstd,
            key,
        } => {
            let opts = BuildOptions {
                version: version.clone(),
                rollback_index: *rollback_index,
                expires: expires.unwrap_or(unix_now() + expires_in_days * 86_400),
                board: board.clone(),
                arch: arch.clone(),
                chunk_size: *chunk_size,
                compression: if *zstd {
                    Compression::Zstd
                } else {
                    Compression::None
                },
            };
            let m = payload::build::build(image, out, &opts, &private_keys(key)?)?;
            println!(
                "{}: version {} rollback index {}, {} bytes in {} chunks, image sha256 {}, {} signature(s)",
                out.display(),
                m.version,
                m.rollback_index,
                m.image_size,
                m.chunks.len(),
                m.image_sha256,
                key.len()
            );
        }
        PayloadCmd::Sign { payload: p, key } => {
            payload::build::add_signatures(p, &private_keys(key)?)?;
            println!("signed {}", p.display());
        }
        PayloadCmd::Inspect { payload: p, key } => {
            let (header, total) = payload::build::read_header(p)?;
            let m: payload::Manifest = serde_json::from_slice(&header.manifest_bytes)
                .with_context(|| format!("{}: the manifest is not valid", p.display()))?;
            println!("version:        {}", m.version);
            println!("rollback index: {}", m.rollback_index);
            println!("expires:        {} (unix)", m.expires);
            println!("board/arch:     {}/{}", m.board, m.arch);
            println!(
                "image:          {} bytes, sha256 {}",
                m.image_size, m.image_sha256
            );
            println!(
                "chunks:         {} × {} bytes, {:?}",
                m.chunks.len(),
                m.chunk_size,
                m.compression
            );
            println!(
                "payload:        {total} bytes (header {}, data {})",
                header.data_offset,
                m.data_len()
            );
            for s in &header.signatures {
                println!("signed by:      {}", s.key_id);
            }
            let trusted = if key.is_empty() {
                TrustedKeys::load(&host.root)?
            } else {
                TrustedKeys::from_keys(
                    key.iter()
                        .map(|k| keys::read_public(k))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            };
            let policy = Policy {
                now: unix_now(),
                min_rollback_index: 0,
                board: host.board.clone(),
                arch: host.arch.clone(),
                slot_size: 0,
            };
            let what = p.display().to_string();
            payload::verify(&what, &header, &trusted, &policy)?;
            let expected = header.data_offset + m.data_len();
            if total != expected {
                bail!(payload::PayloadError::Length {
                    what,
                    actual: total,
                    expected,
                    kind: if total < expected {
                        "truncated"
                    } else {
                        "trailing data"
                    },
                });
            }
            let raw = std::fs::File::open(p)?;
            let mut buf = Vec::new();
            for i in 0..m.chunks.len() {
                buf.resize(m.chunks[i].stored_size as usize, 0);
                std::os::unix::fs::FileExt::read_exact_at(
                    &raw,
                    &mut buf,
                    header.data_offset + m.stored_offset(i),
                )?;
                payload::decode_chunk(&what, &m, i, &buf)?;
            }
            println!(
                "verified:       signature, policy and all {} chunks",
                m.chunks.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
