//! Installing a payload into the inactive USR slot.
//!
//! 1. Read and verify the header (signature by a trusted key, expiry, rollback index,
//!    board, size against the slot), check the payload's length, refuse versions that
//!    rolled back before.
//! 2. Make the inactive slot unbootable (GRUB env + GPT) before its first byte changes.
//! 3. Stream the chunks (Range requests, resuming from the last synced chunk of the same
//!    manifest), verify each chunk's hash, then write it; fdatasync and persist progress
//!    every [`SYNC_BYTES`]. Network errors reconnect at the current chunk.
//! 4. fsync, drop the slot from the page cache, re-read it and compare the image hash.
//! 5. Commit: one in-place write of the GRUB environment block (`ORDER` new slot first,
//!    `LEFT` = 3), then the GPT attributes; record the pending update; write
//!    `/run/reboot-required` for the reboot coordinator.
//!
//! Memory stays at a few chunks whatever the image size.

use crate::boot::{BootError, BootState, Disk, Slot};
use crate::fetch::{FetchError, Source};
use crate::payload::keys::{KeyError, TrustedKeys};
use crate::payload::{self, Header, Manifest, PayloadError, Policy, sha256_hex};
use crate::state::{Pending, Progress, State, StateError};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Progress is made durable at least this often.
pub const SYNC_BYTES: u64 = 8 << 20;
/// Consecutive failed attempts at one chunk before giving up (the install stays resumable).
pub const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{path}: cannot {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell which USR slot booted: {0}")]
    BootedSlot(String),
    #[error(
        "version {0} rolled back on this host before; not installing it again (--force to override)"
    )]
    RolledBack(String),
    #[error("updates are paused (keel-updater resume)")]
    Paused,
    #[error("version {0} is already installed in slot {1} and waiting for a reboot")]
    AlreadyPending(String, &'static str),
    #[error(
        "giving up after {attempts} failed attempts at chunk {chunk} (resumable: run install again)"
    )]
    GaveUp {
        chunk: usize,
        attempts: u32,
        #[source]
        last: Box<InstallError>,
    },
    #[error("the written slot does not read back as the image (expected {expected}, got {actual})")]
    ReadBack { expected: String, actual: String },
}

/// The host the updater works on.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Root for host files (`/proc/cmdline`, key directories, `/run`).
    pub root: PathBuf,
    /// The disk (image file or block device) with USR-A and USR-B.
    pub disk: PathBuf,
    /// The GRUB environment block.
    pub grubenv: PathBuf,
    /// Where state.json lives.
    pub state_dir: PathBuf,
    pub board: String,
    pub arch: String,
    /// The booted slot, when not read from the kernel command line.
    pub booted: Option<Slot>,
}

impl HostConfig {
    /// The kernel's boot id (empty if unreadable).
    pub fn boot_id(&self) -> String {
        std::fs::read_to_string(self.root.join("proc/sys/kernel/random/boot_id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The slot this system booted from: `keel.slot=A|B`, or `mount.usr=`/`usr=` naming a
    /// slot's PARTUUID or PARTLABEL, on the kernel command line.
    pub fn booted_slot(&self) -> Result<Slot, InstallError> {
        if let Some(s) = self.booted {
            return Ok(s);
        }
        let path = self.root.join("proc/cmdline");
        let cmdline = std::fs::read_to_string(&path).map_err(|source| InstallError::Io {
            path: path.clone(),
            op: "read",
            source,
        })?;
        booted_from_cmdline(&cmdline).ok_or_else(|| {
            InstallError::BootedSlot(format!(
                "{} has no keel.slot= and no mount.usr=/usr= naming USR-A or USR-B",
                path.display()
            ))
        })
    }
}

/// Parses the booted slot from a kernel command line.
pub fn booted_from_cmdline(cmdline: &str) -> Option<Slot> {
    for arg in cmdline.split_whitespace() {
        let (k, v) = arg.split_once('=').unwrap_or((arg, ""));
        match k {
            "keel.slot" => return Slot::parse(v),
            "mount.usr" | "usr" => {
                let v = v.to_ascii_uppercase();
                for s in [Slot::A, Slot::B] {
                    if v == format!("PARTUUID={}", s.partuuid())
                        || v == format!("PARTLABEL={}", s.label())
                    {
                        return Some(s);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// How an install went.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub version: String,
    pub slot: Slot,
    pub image_size: u64,
    /// The chunk the install started from (non-zero = resumed).
    pub resumed_at: u64,
    pub elapsed: Duration,
    pub verify_elapsed: Duration,
}

/// Called after each written chunk with (chunks done, chunks total).
pub type ProgressFn = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options of one install.
#[derive(Clone, Default)]
pub struct InstallOptions {
    /// Install a version that rolled back before.
    pub force: bool,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for InstallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallOptions")
            .field("force", &self.force)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads the header of `source` and verifies it against the host's policy.
pub async fn verify_source(
    host: &HostConfig,
    source: &Source,
    state: &State,
    slot_size: u64,
) -> Result<(Header, Manifest, u64), InstallError> {
    let what = source.name();
    let total = fetch_retry(|| source.total_len()).await?;
    let prefix = read_retry(source, 0, payload::PREFIX_LEN.min(total)).await?;
    let mlen = payload::manifest_len(&what, &prefix)? as u64;
    let need = payload::PREFIX_LEN + mlen + 4;
    if total < need {
        return Err(PayloadError::ShortHeader {
            what,
            have: total,
            need,
        }
        .into());
    }
    let mut head = prefix;
    head.extend(read_retry(source, payload::PREFIX_LEN, mlen + 4).await?);
    let slen = payload::signatures_len(&what, &head[(need - 4) as usize..])? as u64;
    if total < need + slen {
        return Err(PayloadError::ShortHeader {
            what,
            have: total,
            need: need + slen,
        }
        .into());
    }
    head.extend(read_retry(source, need, slen).await?);
    let header = Header::parse(&what, &head)?;
    let trusted = TrustedKeys::load(&host.root)?;
    let policy = Policy {
        now: unix_now(),
        min_rollback_index: state.min_rollback_index,
        board: host.board.clone(),
        arch: host.arch.clone(),
        slot_size,
    };
    let manifest = payload::verify(&what, &header, &trusted, &policy)?;
    let expected = header.data_offset + manifest.data_len();
    if total != expected {
        return Err(PayloadError::Length {
            what,
            actual: total,
            expected,
            kind: if total < expected {
                "truncated"
            } else {
                "trailing data"
            },
        }
        .into());
    }
    Ok((header, manifest, total))
}

/// Runs a fetch, retrying transient failures like the chunk loop does.
async fn fetch_retry<T, F, Fut>(mut f: F) -> Result<T, InstallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FetchError>>,
{
    let mut attempts = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                attempts += 1;
                retry_or_give_up(0, attempts, e.into()).await?;
            }
        }
    }
}

async fn read_retry(source: &Source, start: u64, len: u64) -> Result<Vec<u8>, InstallError> {
    fetch_retry(|| source.read(start, len)).await
}

/// Installs `source` into the inactive slot.
pub async fn install(
    host: &HostConfig,
    source: &Source,
    opts: &InstallOptions,
) -> Result<InstallReport, InstallError> {
    let started = Instant::now();
    let booted = host.booted_slot()?;
    let target = booted.other();
    let mut disk = Disk::open(&host.disk)?;
    let part = *disk.slot(target);
    let mut state = State::load(&host.state_dir)?;
    if state.paused {
        return Err(InstallError::Paused);
    }
    let (header, manifest, _) = verify_source(host, source, &state, part.size).await?;
    if state.is_rolled_back(&manifest.version) && !opts.force {
        return Err(InstallError::RolledBack(manifest.version.clone()));
    }
    if let Some(p) = &state.pending
        && p.version == manifest.version
        && p.slot == target
    {
        return Err(InstallError::AlreadyPending(
            p.version.clone(),
            target.name(),
        ));
    }
    let manifest_sha = sha256_hex(&header.manifest_bytes);
    let start_chunk = match &state.progress {
        Some(p) if p.manifest_sha256 == manifest_sha && p.slot == target => p.next_chunk,
        _ => 0,
    };
    tracing::info!(version = %manifest.version, slot = target.name(), from_chunk = start_chunk, chunks = manifest.chunks.len(), "installing");

    // The inactive slot must not be bootable once we touch it.
    let mut boot = BootState::load(&host.grubenv)?;
    let mut unbootable = boot.boot.clone();
    unbootable.make_unbootable(target);
    boot.commit(unbootable, Some(&mut disk))?;
    state.pending = None;
    state.progress = Some(Progress {
        manifest_sha256: manifest_sha.clone(),
        version: manifest.version.clone(),
        slot: target,
        next_chunk: start_chunk,
        source: source.name(),
    });
    state.save(&host.state_dir)?;

    let io = |op: &'static str| {
        let path = host.disk.clone();
        move |source| InstallError::Io { path, op, source }
    };
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&host.disk)
        .map_err(io("open for writing"))?;
    write_chunks(
        source,
        &header,
        &manifest,
        &out,
        part.offset,
        start_chunk as usize,
        host,
        &mut state,
        opts,
    )
    .await?;
    out.sync_all().map_err(io("fsync"))?;

    // Read the slot back from the disk, not from the page cache.
    let verify_started = Instant::now();
    drop_cache(&out, part.offset, manifest.image_size);
    let actual = hash_range(&out, part.offset, manifest.image_size, manifest.chunk_size)
        .map_err(io("read back"))?;
    if actual != manifest.image_sha256 {
        state.progress = None;
        state.save(&host.state_dir)?;
        return Err(InstallError::ReadBack {
            expected: manifest.image_sha256.clone(),
            actual,
        });
    }
    let verify_elapsed = verify_started.elapsed();

    // Commit point.
    let mut next = boot.boot.clone();
    next.try_next(target);
    boot.commit(next, Some(&mut disk))?;
    let from_version = crate::host_version(&host.root);
    state.progress = None;
    state.pending = Some(Pending {
        version: manifest.version.clone(),
        slot: target,
        rollback_index: manifest.rollback_index,
        from_version,
        from_slot: booted,
        installed_at: unix_now(),
        boot_id: host.boot_id(),
    });
    state.save(&host.state_dir)?;
    let sentinel = host.root.join("run/reboot-required");
    if let Err(e) = std::fs::create_dir_all(host.root.join("run")).and_then(|()| {
        std::fs::write(
            &sentinel,
            format!(
                "*** System restart required ***\nVERSION={}\nREASON=keel-updater installed {} into {}\n",
                manifest.version,
                manifest.version,
                target.label()
            ),
        )
    }) {
        tracing::warn!(path = %sentinel.display(), error = %e, "cannot write the reboot-needed sentinel");
    }
    Ok(InstallReport {
        version: manifest.version.clone(),
        slot: target,
        image_size: manifest.image_size,
        resumed_at: start_chunk,
        elapsed: started.elapsed(),
        verify_elapsed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn write_chunks(
    source: &Source,
    header: &Header,
    manifest: &Manifest,
    out: &std::fs::File,
    slot_offset: u64,
    start: usize,
    host: &HostConfig,
    state: &mut State,
    opts: &InstallOptions,
) -> Result<(), InstallError> {
    let what = source.name();
    let io = |op: &'static str| {
        let path = host.disk.clone();
        move |source| InstallError::Io { path, op, source }
    };
    let n = manifest.chunks.len();
    let mut i = start;
    let mut attempts = 0u32;
    let mut since_sync = 0u64;
    let mut buf = Vec::new();
    // At least 64 checkpoints per image, at most SYNC_BYTES apart.
    let sync_bytes =
        (manifest.image_size / 64).clamp(manifest.chunk_size, SYNC_BYTES.max(manifest.chunk_size));
    while i < n {
        let data_start = header.data_offset + manifest.stored_offset(i);
        let data_len = manifest.data_len() - manifest.stored_offset(i);
        let mut reader = match source.open(data_start, data_len).await {
            Ok(r) => r,
            Err(e) => {
                attempts += 1;
                retry_or_give_up(i, attempts, e.into()).await?;
                continue;
            }
        };
        while i < n {
            let stored = manifest.chunks[i].stored_size as usize;
            buf.resize(stored, 0);
            let chunk = match reader.read_exact(&mut buf).await {
                Ok(()) => {
                    payload::decode_chunk(&what, manifest, i, &buf).map_err(InstallError::from)
                }
                Err(e) => Err(e.into()),
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    attempts += 1;
                    retry_or_give_up(i, attempts, e).await?;
                    break; // reconnect at chunk i
                }
            };
            attempts = 0;
            out.write_all_at(&chunk, slot_offset + i as u64 * manifest.chunk_size)
                .map_err(io("write"))?;
            i += 1;
            since_sync += chunk.len() as u64;
            if since_sync >= sync_bytes || i == n {
                out.sync_data().map_err(io("fdatasync"))?;
                if let Some(p) = state.progress.as_mut() {
                    p.next_chunk = i as u64;
                }
                state.save(&host.state_dir)?;
                since_sync = 0;
            }
            if let Some(f) = &opts.progress {
                f(i as u64, n as u64);
            }
        }
    }
    Ok(())
}

async fn retry_or_give_up(
    chunk: usize,
    attempts: u32,
    e: InstallError,
) -> Result<(), InstallError> {
    if attempts >= MAX_ATTEMPTS {
        return Err(InstallError::GaveUp {
            chunk,
            attempts,
            last: Box::new(e),
        });
    }
    tracing::warn!(chunk, attempt = attempts, error = %crate::error_chain(&e), "retrying");
    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempts.min(20)))).await;
    Ok(())
}

/// Asks the kernel to drop `[offset, offset + len)` of `f` from the page cache.
fn drop_cache(f: &std::fs::File, offset: u64, len: u64) {
    let _ = nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(f),
        offset as i64,
        len as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// SHA-256 of `[offset, offset + len)` of `f`, read in `block`-sized pieces.
pub fn hash_range(f: &std::fs::File, offset: u64, len: u64, block: u64) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; block.clamp(4096, 16 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        f.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(payload::hex(&h.finalize()))
}

/// Reads the slot's first `len` bytes and hashes them (status, tests).
pub fn slot_sha256(disk: &Path, slot_offset: u64, len: u64) -> std::io::Result<String> {
    let f = std::fs::File::open(disk)?;
    hash_range(&f, slot_offset, len, 4 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booted_slot_from_cmdline() {
        assert_eq!(booted_from_cmdline("quiet keel.slot=B"), Some(Slot::B));
        assert_eq!(
            booted_from_cmdline(
                "root=LABEL=ROOT mount.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 ro"
            ),
            Some(Slot::A)
        );
        assert_eq!(booted_from_cmdline("usr=PARTLABEL=USR-B"), Some(Slot::B));
        assert_eq!(booted_from_cmdline("root=/dev/sda1"), None);
    }
}
