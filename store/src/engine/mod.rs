//! The engine: one replicated log of commands and one state machine applying it.
//!
//! ```text
//!  HTTP/gRPC handlers ──propose(Command)──▶ raft thread ──RawNode──▶ peers (transport)
//!        ▲                                       │ Ready: entries + hard state ─▶ WAL (one fdatasync)
//!        └──── reply (index, outcome) ◀── apply committed entries under the state's write lock
//!  linearizable reads ──read_index()──▶ raft thread (ReadIndex) ──▶ wait until applied
//!  reads ────────────── state read lock ──▶ V2Store / V3State
//! ```
//!
//! Consensus is the `raft` crate (a port of etcd's own raft). One thread owns the
//! `RawNode`: it takes proposals, peer messages and read requests from a channel, ticks
//! every heartbeat interval, and handles each `Ready` as etcd does: messages out,
//! entries and hard state into the WAL as one frame with one `fdatasync`, committed
//! entries applied in order, each proposer answered when its entry is applied on this
//! member. A one-member cluster runs the same pipeline (it campaigns at once).
//!
//! Every `snapshot_count` applied entries the state is serialized (under the read
//! lock, so reads go on) and written by a helper thread; once durable, WAL segments it
//! covers are deleted and the in-memory log keeps `CATCH_UP_ENTRIES` for slow
//! followers. A member too far behind receives a snapshot of the leader's applied
//! state instead.
//!
//! On start the newest snapshot is loaded, the WAL after it read back into the Raft
//! log, and the entries the hard state says are committed applied before serving.

pub mod command;
mod node;
mod storage;

use crate::cluster::Members;
use crate::v2::{self, V2Store};
use crate::v3::V3State;
use crate::v3::mvcc::Mvcc;
use crate::wal::{self, SnapshotMeta, WalError, WalOptions};
use command::{Command, Outcome};
use raft::eraftpb::{ConfState, Message};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// etcd's default `--snapshot-count`.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// Snapshots kept on disk.
const SNAPSHOTS_KEPT: usize = 2;
const SNAPSHOT_FORMAT: u32 = 4;
/// Entries kept in memory behind a snapshot so that a slow follower can catch up
/// without one (etcd's `SnapshotCatchUpEntries`).
const CATCH_UP_ENTRIES: u64 = 5000;
/// Index and term of the bootstrap snapshot of a new cluster. The log proper starts
/// after it, so a member added later always starts from a snapshot.
const BOOTSTRAP_INDEX: u64 = 1;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the store is shutting down")]
    Stopped,
    #[error("the write-ahead log failed earlier, refusing writes: {0}")]
    Failed(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot decode log entry {index} in {dir}: {reason}")]
    DecodeEntry {
        index: u64,
        dir: PathBuf,
        reason: String,
    },
    #[error("cannot decode snapshot at index {index} in {dir}: {reason}")]
    DecodeSnapshot {
        index: u64,
        dir: PathBuf,
        reason: String,
    },
    #[error("cannot start a store thread")]
    Thread(#[source] std::io::Error),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A proposal was overtaken by a new leader's term without being applied: it was
    /// most likely lost with the old leader, but may still commit (outcome unknown).
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    Removed,
    #[error("{0} holds a WAL but no snapshot; it was not written by this version of keel-store")]
    NoSnapshot(PathBuf),
    #[error("raft: {0}")]
    Raft(String),
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("membership: peerURL exists")]
    PeerUrlExists,
    #[error("membership: member not found")]
    NotFound(u64),
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// How a member without any data starts.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// A new cluster with these members (`--initial-cluster-state new`).
    New(Members),
    /// Join a running cluster that already added this member
    /// (`--initial-cluster-state existing`); the leader sends it a snapshot.
    Existing,
}

/// Raft settings of this member.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// This member's id.
    pub id: u64,
    /// etcd's `--heartbeat-interval`: one Raft tick.
    pub heartbeat: Duration,
    /// etcd's `--election-timeout`.
    pub election: Duration,
    pub bootstrap: Bootstrap,
}

impl RaftOptions {
    /// A one-member cluster of `name` at `peer_urls`.
    pub fn single(name: &str, peer_urls: Vec<String>, token: &str) -> Self {
        let members = Members::bootstrap(&[(name.to_string(), peer_urls.clone())], token);
        RaftOptions {
            id: crate::cluster::member_id(&peer_urls, token),
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(1000),
            bootstrap: Bootstrap::New(members),
        }
    }

    /// etcd's request timeout: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election
    }
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
    pub raft: RaftOptions,
}

impl EngineOptions {
    /// A one-member store with etcd's default name and peer URL.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            data_dir: data_dir.into(),
            wal_dir: None,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            wal: WalOptions::default(),
            raft: RaftOptions::single(
                "default",
                vec![crate::config::DEFAULT_PEER_URL.to_string()],
                "etcd-cluster",
            ),
        }
    }
}

/// The state machine and where it stands in the log.
#[derive(Debug, Default)]
pub struct State {
    pub v2: V2Store,
    pub v3: V3State,
    pub members: Members,
    /// Index of the last applied log entry.
    pub applied_index: u64,
    /// The current Raft term.
    pub term: u64,
}

impl State {
    /// Apply one command of the log.
    fn apply(&mut self, cmd: &Command, now: std::time::Instant) -> Outcome {
        match cmd {
            Command::Publish {
                id,
                name,
                client_urls,
            } => {
                if let Some(m) = self.members.members.get_mut(id) {
                    m.name.clone_from(name);
                    m.client_urls.clone_from(client_urls);
                }
                Outcome::Done
            }
            Command::UpdateMember { id, peer_urls } => {
                if let Some(m) = self.members.members.get_mut(id) {
                    m.peer_urls.clone_from(peer_urls);
                }
                Outcome::Done
            }
            _ => command::apply(&mut self.v2, &mut self.v3, cmd, now),
        }
    }
}

/// The result of a proposal once it is committed and applied on this member.
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

/// Where this member stands in Raft (etcd's `Status` RPC numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// The leader this member knows of; 0 if none.
    pub leader: u64,
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_index: u64,
    pub commit: u64,
    pub applied: u64,
    pub is_learner: bool,
}

type Reply = oneshot::Sender<Result<Applied, EngineError>>;
type ReadReply = oneshot::Sender<Result<(), EngineError>>;

/// A change of membership, carried in a Raft configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    Add(crate::cluster::Member),
    Remove(u64),
    Promote(u64),
}

/// Work for the Raft thread.
enum Input {
    Propose { cmd: Command, reply: Reply },
    ChangeMembers { change: MemberChange, reply: Reply },
    Read(ReadReply),
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotSent { to: u64, ok: bool },
    TransferLeader(u64),
}

#[derive(Debug)]
struct Shared {
    state: RwLock<State>,
    inbox: Mutex<Option<mpsc::Sender<Input>>>,
    failed: OnceLock<String>,
    thread: Mutex<Option<JoinHandle<()>>>,
    data_dir: PathBuf,
    status: Mutex<RaftStatus>,
    request_timeout: Duration,
    /// The cluster id, readable without the state lock (response headers).
    cluster_id: AtomicU64,
    /// This member was removed from the cluster.
    removed: std::sync::atomic::AtomicBool,
    /// This member is the cluster's only voter and leads, with an entry of its term
    /// committed and applied (reads need no ReadIndex round).
    sole_voter: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Propose { cmd, .. } => f.debug_tuple("Propose").field(cmd).finish(),
            Input::ChangeMembers { change, .. } => {
                f.debug_tuple("ChangeMembers").field(change).finish()
            }
            Input::Read(_) => f.write_str("Read"),
            Input::Step(m) => f.debug_tuple("Step").field(&m.get_msg_type()).finish(),
            Input::Unreachable(id) => f.debug_tuple("Unreachable").field(id).finish(),
            Input::SnapshotSent { to, ok } => f
                .debug_struct("SnapshotSent")
                .field("to", to)
                .field("ok", ok)
                .finish(),
            Input::TransferLeader(id) => f.debug_tuple("TransferLeader").field(id).finish(),
        }
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// Messages the engine wants delivered to other members.
pub type Outbox = tokio::sync::mpsc::UnboundedReceiver<Message>;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    applied_index: u64,
    v2: v2::SnapshotRef<'a>,
    v3: &'a Mvcc,
    members: &'a Members,
    voters: &'a [u64],
    learners: &'a [u64],
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    applied_index: u64,
    v2: v2::Snapshot,
    v3: Mvcc,
    members: Members,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// The state machine as snapshot bytes.
fn encode_state(state: &State, conf: &ConfState) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&SnapshotOut {
        format: SNAPSHOT_FORMAT,
        applied_index: state.applied_index,
        v2: state.v2.snapshot(),
        v3: &state.v3.mvcc,
        members: &state.members,
        voters: &conf.voters,
        learners: &conf.learners,
    })
}

/// Snapshot bytes back into a state machine and the configuration it was taken in.
fn decode_state(bytes: &[u8]) -> Result<(State, ConfState), String> {
    let snap: SnapshotIn = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    if snap.format != SNAPSHOT_FORMAT {
        return Err(format!(
            "format {} (expected format {SNAPSHOT_FORMAT})",
            snap.format
        ));
    }
    let state = State {
        v2: V2Store::restore(snap.v2).map_err(|e| e.to_string())?,
        v3: V3State {
            mvcc: snap.v3,
            ..V3State::default()
        },
        members: snap.members,
        applied_index: snap.applied_index,
        term: 0,
    };
    let conf = ConfState {
        voters: snap.voters,
        learners: snap.learners,
        ..Default::default()
    };
    Ok((state, conf))
}

impl Engine {
    /// Recover the state from `data_dir` (or bootstrap it), replay what the log says
    /// is committed, and start the Raft thread. Messages for other members come out of
    /// the returned [`Outbox`].
    pub fn open(opts: EngineOptions) -> Result<(Engine, Recovery, Outbox), EngineError> {
        node::open(opts)
    }

    fn send(&self, input: Input) -> Result<(), EngineError> {
        let guard = lock(&self.shared.inbox);
        let tx = guard.as_ref().ok_or(EngineError::Stopped)?;
        tx.send(input).map_err(|_| EngineError::Stopped)
    }

    async fn wait<T>(
        &self,
        rx: oneshot::Receiver<Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(EngineError::Stopped),
            Err(_) => Err(EngineError::Timeout),
        }
    }

    /// Replicate `cmd`, wait until it is committed and applied here, return its result.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, EngineError> {
        if let Some(reason) = self.shared.failed.get() {
            return Err(EngineError::Failed(reason.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::Propose { cmd, reply })?;
        self.wait(rx).await
    }

    /// Change the membership through a Raft configuration change.
    pub async fn change_members(&self, change: MemberChange) -> Result<Applied, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Input::ChangeMembers { change, reply })?;
        self.wait(rx).await
    }

    /// Wait until this member has applied everything committed before the call (Raft's
    /// ReadIndex, confirmed by a quorum): a read after this is linearizable.
    pub async fn read_index(&self) -> Result<(), EngineError> {
        if self.shared.sole_voter.load(Ordering::Acquire) {
            // The only voter leads until the configuration changes, and it answers a
            // write only after applying it: its state is already linearizable.
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Input::Read(reply))?;
        self.wait(rx).await
    }

    /// A message from another member.
    pub fn step(&self, msg: Message) {
        let _ = self.send(Input::Step(Box::new(msg)));
    }

    /// The transport could not reach `id`.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.send(Input::Unreachable(id));
    }

    /// A snapshot message to `to` was delivered (or not).
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.send(Input::SnapshotSent { to, ok });
    }

    /// Ask the leader to hand leadership to `to` (etcd's `MoveLeader`).
    pub fn transfer_leader(&self, to: u64) -> Result<(), EngineError> {
        self.send(Input::TransferLeader(to))
    }

    /// Where this member stands in Raft.
    pub fn status(&self) -> RaftStatus {
        *lock(&self.shared.status)
    }

    pub fn is_leader(&self) -> bool {
        let s = self.status();
        s.leader != 0 && s.leader == s.id
    }

    /// The cluster id (0 until a joining member has received the leader's snapshot).
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id.load(Ordering::Relaxed)
    }

    /// Whether this member has been removed from the cluster (it should stop).
    pub fn is_removed(&self) -> bool {
        self.shared.removed.load(Ordering::Relaxed)
    }

    /// The current membership.
    pub fn members(&self) -> Members {
        self.read().members.clone()
    }

    /// Add a member (etcd's `MemberAdd`); its id mixes in the time, as etcd's does.
    pub async fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<crate::cluster::Member, MemberError> {
        // Check against every change committed before this request (a member added
        // through another member a moment ago), not only what this member applied.
        self.read_index().await?;
        if peer_urls
            .iter()
            .any(|u| self.read().members.by_peer_url(u).is_some())
        {
            return Err(MemberError::PeerUrlExists);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let member = crate::cluster::Member {
            id: crate::cluster::member_id(&peer_urls, &now.to_string()),
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner,
        };
        self.change_members(MemberChange::Add(member.clone()))
            .await?;
        Ok(member)
    }

    /// Remove a member (etcd's `MemberRemove`).
    pub async fn remove_member(&self, id: u64) -> Result<(), MemberError> {
        self.read_index().await?;
        self.known(id)?;
        self.change_members(MemberChange::Remove(id)).await?;
        Ok(())
    }

    /// Make a learner a voting member (etcd's `MemberPromote`).
    pub async fn promote_member(&self, id: u64) -> Result<(), MemberError> {
        self.read_index().await?;
        if !self.known(id)?.is_learner {
            return Err(MemberError::NotLearner);
        }
        self.change_members(MemberChange::Promote(id)).await?;
        Ok(())
    }

    /// New peer URLs for a member (etcd's `MemberUpdate`).
    pub async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<(), MemberError> {
        self.read_index().await?;
        self.known(id)?;
        if peer_urls.iter().any(|u| {
            self.read()
                .members
                .by_peer_url(u)
                .is_some_and(|m| m.id != id)
        }) {
            return Err(MemberError::PeerUrlExists);
        }
        self.propose(Command::UpdateMember { id, peer_urls })
            .await?;
        Ok(())
    }

    fn known(&self, id: u64) -> Result<crate::cluster::Member, MemberError> {
        self.read()
            .members
            .get(id)
            .cloned()
            .ok_or(MemberError::NotFound(id))
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
        // No configuration: a restored store takes its membership from its own flags.
        let body = encode_state(&state, &ConfState::default()).map_err(|e| {
            EngineError::DecodeSnapshot {
                index: state.applied_index,
                dir: self.shared.data_dir.clone(),
                reason: e.to_string(),
            }
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

    /// Stop accepting proposals, let the Raft thread finish what is queued, and wait.
    pub fn shutdown(&self) {
        lock(&self.shared.inbox).take();
        if let Some(handle) = lock(&self.shared.thread).take() {
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
    if let Err(e) = decode_state(body) {
        return Err(bad(&format!("undecodable state: {e}")));
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
