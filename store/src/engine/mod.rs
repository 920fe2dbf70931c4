//! The engine: one ordered log of commands and one state machine applying it.
//!
//! ```text
//!  HTTP handlers ──propose(Command)──▶ writer thread ──append batch + fdatasync──▶ WAL
//!        ▲                                   │
//!        └──── reply (index, outcome) ◀── apply under the state's write lock
//!  reads ─────────────── state read lock ──▶ V2Store
//! ```
//!
//! Proposals queue on a channel; the writer thread drains what has queued up, assigns
//! log indexes, writes them as one WAL frame and syncs it (group commit), then applies
//! them in order and answers each proposer. Nothing is applied, so nothing is visible to
//! any reader, before it is durable. Every `snapshot_count` entries the state is
//! serialized (under the read lock, so reads go on) and written by a helper thread; once
//! that file is durable, WAL segments it covers are deleted.
//!
//! On start the newest snapshot is loaded and the WAL entries after it replayed. A torn
//! tail is cut off by the WAL; any other damage stops the start with an error that names
//! the file and offset. Later, Raft replaces the single-node "append then apply": the
//! log, commands and state machine stay as they are.

pub mod command;

use crate::v2::{self, V2Store};
use crate::v3::V3State;
use crate::v3::mvcc::Mvcc;
use crate::wal::{self, Entry, SnapshotMeta, Wal, WalError, WalOptions};
use command::{Command, Outcome};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// etcd's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// Most commands written as one WAL frame.
const MAX_BATCH_ENTRIES: usize = 4096;
/// Snapshots kept on disk.
const SNAPSHOTS_KEPT: usize = 2;
/// Term of every entry until Raft arrives.
const SINGLE_NODE_TERM: u64 = 1;
const SNAPSHOT_FORMAT: u32 = 3;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the store is shutting down")]
    Stopped,
    #[error("the write-ahead log failed earlier, refusing writes: {0}")]
    Failed(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot decode log entry {index} in {dir}")]
    DecodeEntry {
        index: u64,
        dir: PathBuf,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot decode snapshot at index {index} in {dir}: {reason}")]
    DecodeSnapshot {
        index: u64,
        dir: PathBuf,
        reason: String,
    },
    #[error("cannot start a store thread")]
    Thread(#[source] std::io::Error),
}

/// How to open the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// etcd-style data dir; the engine uses `member/wal` and `member/snap` under it.
    pub data_dir: PathBuf,
    /// Where the WAL lives, if not `data_dir/member/wal` (etcd's `--wal-dir`).
    pub wal_dir: Option<PathBuf>,
    /// Entries between snapshots.
    pub snapshot_count: u64,
    pub wal: WalOptions,
}

impl EngineOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            data_dir: data_dir.into(),
            wal_dir: None,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            wal: WalOptions::default(),
        }
    }
}

/// The state machine and where it stands in the log.
#[derive(Debug, Default)]
pub struct State {
    pub v2: V2Store,
    pub v3: V3State,
    /// Index of the last applied (and durable) log entry.
    pub applied_index: u64,
    pub term: u64,
}

/// The result of a proposal once it is durable and applied.
#[derive(Debug)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub outcome: Outcome,
}

/// What recovery found, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    pub snapshot_index: u64,
    pub replayed_entries: usize,
}

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<Applied, EngineError>>,
}

#[derive(Debug)]
struct Shared {
    state: RwLock<State>,
    proposals: Mutex<Option<mpsc::Sender<Proposal>>>,
    failed: OnceLock<String>,
    writer: Mutex<Option<JoinHandle<()>>>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("cmd", &self.cmd).finish()
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    applied_index: u64,
    v2: v2::SnapshotRef<'a>,
    v3: &'a Mvcc,
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    applied_index: u64,
    v2: v2::Snapshot,
    v3: Mvcc,
}

impl Engine {
    /// Recover the state from `data_dir` and start the writer thread.
    pub fn open(opts: EngineOptions) -> Result<(Engine, Recovery), EngineError> {
        let member = opts.data_dir.join("member");
        let snap_dir = member.join("snap");
        let wal_dir = opts.wal_dir.clone().unwrap_or_else(|| member.join("wal"));
        let mut state = State {
            term: SINGLE_NODE_TERM,
            ..State::default()
        };
        let mut recovery = Recovery::default();
        if let Some((meta, data)) = wal::load_latest_snapshot(&snap_dir)? {
            let bad = |reason: String| EngineError::DecodeSnapshot {
                index: meta.index,
                dir: snap_dir.clone(),
                reason,
            };
            let snap: SnapshotIn = postcard::from_bytes(&data).map_err(|e| bad(e.to_string()))?;
            if snap.format != SNAPSHOT_FORMAT || snap.applied_index != meta.index {
                return Err(bad(format!(
                    "format {} at index {} (expected format {SNAPSHOT_FORMAT})",
                    snap.format, snap.applied_index
                )));
            }
            state.v2 = V2Store::restore(snap.v2).map_err(|e| bad(e.to_string()))?;
            state.v3.mvcc = snap.v3;
            state.applied_index = meta.index;
            state.term = meta.term;
            recovery.snapshot_index = meta.index;
        }
        let (wal, entries) = Wal::open(&wal_dir, state.applied_index, opts.wal.clone())?;
        for entry in &entries {
            let cmd: Command =
                postcard::from_bytes(&entry.data).map_err(|source| EngineError::DecodeEntry {
                    index: entry.index,
                    dir: wal_dir.clone(),
                    source,
                })?;
            command::apply(
                &mut state.v2,
                &mut state.v3,
                &cmd,
                std::time::Instant::now(),
            );
            state.applied_index = entry.index;
            state.term = entry.term;
        }
        recovery.replayed_entries = entries.len();
        state.v3.resume_leases(std::time::Instant::now());

        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            proposals: Mutex::new(Some(tx)),
            failed: OnceLock::new(),
            writer: Mutex::new(None),
            data_dir: opts.data_dir.clone(),
        });
        let writer = Writer {
            shared: shared.clone(),
            wal,
            snap_dir,
            snapshot_count: opts.snapshot_count.max(1),
            since_snapshot: entries.len() as u64,
            snapshot_done: None,
        };
        let handle = std::thread::Builder::new()
            .name("keel-wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(EngineError::Thread)?;
        *lock(&shared.writer) = Some(handle);
        Ok((Engine { shared }, recovery))
    }

    /// Append `cmd` to the log, wait until it is durable and applied, return its result.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, EngineError> {
        if let Some(reason) = self.shared.failed.get() {
            return Err(EngineError::Failed(reason.clone()));
        }
        let (reply, rx) = oneshot::channel();
        {
            let guard = lock(&self.shared.proposals);
            let tx = guard.as_ref().ok_or(EngineError::Stopped)?;
            tx.send(Proposal { cmd, reply })
                .map_err(|_| EngineError::Stopped)?;
        }
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Read access to the state machine.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Write access, for bookkeeping that is not part of the log (registering watchers).
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A self-contained image of the whole state (the `Snapshot` RPC's payload), which
    /// `keel-store snapshot restore` turns into a new data dir.
    pub fn backup(&self) -> Result<Vec<u8>, EngineError> {
        let state = self.read();
        let out = SnapshotOut {
            format: SNAPSHOT_FORMAT,
            applied_index: state.applied_index,
            v2: state.v2.snapshot(),
            v3: &state.v3.mvcc,
        };
        let body = postcard::to_allocvec(&out).map_err(|e| EngineError::DecodeSnapshot {
            index: state.applied_index,
            dir: self.shared.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let mut out = backup_frame(state.applied_index, state.term, &body);
        // etcdctl accepts a snapshot only if it is a whole number of 512-byte sectors
        // followed by the SHA-256 of those sectors (as etcd's bbolt file plus digest).
        out.resize(out.len().next_multiple_of(512), 0);
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Why the engine stopped accepting writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.get().cloned()
    }

    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// Stop accepting proposals, let the writer finish what is queued, and wait for it.
    pub fn shutdown(&self) {
        lock(&self.shared.proposals).take();
        if let Some(handle) = lock(&self.shared.writer).take() {
            let _ = handle.join();
        }
    }
}

/// Magic of a backup file: `KEELBAK1`, then index u64, term u64, body length u64,
/// CRC-32 of the body u32 (little-endian), then the body.
const BACKUP_MAGIC: &[u8; 8] = b"KEELBAK1";

fn backup_frame(index: u64, term: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 36);
    out.extend_from_slice(BACKUP_MAGIC);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Errors of `restore`.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: not a keel-store backup ({reason})")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} already holds a store; restore into a new data dir")]
    NotEmpty { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Create a new data dir from a backup taken with the `Snapshot` RPC (`etcdctl snapshot
/// save`): the backup becomes the data dir's first snapshot; the WAL starts empty.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<SnapshotMeta, RestoreError> {
    let bytes = std::fs::read(backup).map_err(|source| RestoreError::Read {
        path: backup.to_path_buf(),
        source,
    })?;
    let bad = |reason: &str| RestoreError::Invalid {
        path: backup.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 36 + 32 || &bytes[..8] != BACKUP_MAGIC {
        return Err(bad("bad magic"));
    }
    let (bytes, digest) = bytes.split_at(bytes.len() - 32);
    use sha2::Digest;
    if sha2::Sha256::digest(bytes).as_slice() != digest {
        return Err(bad("SHA-256 at the end does not match"));
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let (index, term, len) = (u64_at(8), u64_at(16), u64_at(24) as usize);
    let crc = u32::from_le_bytes(bytes[32..36].try_into().unwrap_or([0; 4]));
    let padded = &bytes[36..];
    if padded.len() < len || padded.len() - len >= 512 || padded[len..].iter().any(|b| *b != 0) {
        return Err(bad(&format!(
            "body is {} bytes, header says {len}",
            padded.len()
        )));
    }
    let body = &padded[..len];
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    if postcard::from_bytes::<SnapshotIn>(body).is_err() {
        return Err(bad("undecodable state"));
    }
    let member = data_dir.join("member");
    if member.exists() {
        return Err(RestoreError::NotEmpty {
            path: data_dir.to_path_buf(),
        });
    }
    let meta = SnapshotMeta { index, term };
    wal::save_snapshot(&member.join("snap"), &meta, body, SNAPSHOTS_KEPT)?;
    Ok(meta)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Writer {
    shared: Arc<Shared>,
    wal: Wal,
    snap_dir: PathBuf,
    snapshot_count: u64,
    since_snapshot: u64,
    /// A snapshot being written: its index and the channel that says it is durable.
    snapshot_done: Option<(u64, mpsc::Receiver<Result<(), WalError>>)>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Proposal>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_ENTRIES {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.commit(batch) {
                let reason = e.to_string();
                tracing::error!(error = %reason, "WAL write failed; refusing further writes");
                let _ = self.shared.failed.set(reason.clone());
                // Answer everything still queued, then stop.
                while let Ok(p) = rx.try_recv() {
                    let _ = p.reply.send(Err(EngineError::Failed(reason.clone())));
                }
                return;
            }
            self.poll_snapshot(false);
        }
        self.poll_snapshot(true);
    }

    fn commit(&mut self, batch: Vec<Proposal>) -> Result<(), EngineError> {
        let first_index = self.wal.last_index() + 1;
        let mut entries = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            let data =
                postcard::to_allocvec(&p.cmd).map_err(|source| EngineError::DecodeEntry {
                    index: first_index + i as u64,
                    dir: self.wal.dir().to_path_buf(),
                    source,
                })?;
            entries.push(Entry {
                index: first_index + i as u64,
                term: SINGLE_NODE_TERM,
                data,
            });
        }
        if let Err(e) = self.wal.append(&entries) {
            let reason = e.to_string();
            for p in batch {
                let _ = p.reply.send(Err(EngineError::Failed(reason.clone())));
            }
            return Err(e.into());
        }
        let mut replies = Vec::with_capacity(batch.len());
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = std::time::Instant::now();
            for (entry, p) in entries.iter().zip(batch) {
                let state = &mut *state;
                let outcome = command::apply(&mut state.v2, &mut state.v3, &p.cmd, now);
                state.applied_index = entry.index;
                state.term = entry.term;
                replies.push((
                    p.reply,
                    Applied {
                        index: entry.index,
                        term: entry.term,
                        outcome,
                    },
                ));
            }
        }
        for (reply, applied) in replies {
            let _ = reply.send(Ok(applied));
        }
        self.since_snapshot += entries.len() as u64;
        if self.since_snapshot >= self.snapshot_count && self.snapshot_done.is_none() {
            self.start_snapshot()?;
        }
        Ok(())
    }

    /// Serialize the state now and hand the bytes to a thread that makes them durable.
    fn start_snapshot(&mut self) -> Result<(), EngineError> {
        let (index, term, bytes) = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let out = SnapshotOut {
                format: SNAPSHOT_FORMAT,
                applied_index: state.applied_index,
                v2: state.v2.snapshot(),
                v3: &state.v3.mvcc,
            };
            let bytes = postcard::to_allocvec(&out).map_err(|e| EngineError::DecodeSnapshot {
                index: state.applied_index,
                dir: self.snap_dir.clone(),
                reason: e.to_string(),
            })?;
            (state.applied_index, state.term, bytes)
        };
        // Entries after this point go to a new segment, so older segments end at `index`.
        self.wal.roll()?;
        self.since_snapshot = 0;
        let dir = self.snap_dir.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("keel-snapshot".into())
            .spawn(move || {
                let result =
                    wal::save_snapshot(&dir, &SnapshotMeta { index, term }, &bytes, SNAPSHOTS_KEPT)
                        .map(|_| ());
                let _ = tx.send(result);
            })
            .map_err(EngineError::Thread)?;
        self.snapshot_done = Some((index, rx));
        Ok(())
    }

    /// Once a snapshot is durable, drop the WAL segments it covers.
    fn poll_snapshot(&mut self, wait: bool) {
        let Some((index, rx)) = &self.snapshot_done else {
            return;
        };
        let result = if wait {
            rx.recv().ok()
        } else {
            rx.try_recv().ok()
        };
        let index = *index;
        match result {
            None if !wait => return,
            None => tracing::warn!(index, "snapshot thread ended without a result"),
            Some(Ok(())) => match self.wal.compact(index) {
                Ok(removed) => tracing::info!(index, removed, "snapshot saved, WAL compacted"),
                Err(e) => tracing::warn!(index, error = %e, "cannot remove old WAL segments"),
            },
            Some(Err(e)) => tracing::warn!(index, error = %e, "snapshot failed; WAL kept"),
        }
        self.snapshot_done = None;
    }
}
