//! The Raft thread: owns the `RawNode`, the WAL and the pending requests.

use super::storage::LogStore;
use super::{
    Applied, BOOTSTRAP_INDEX, Bootstrap, CATCH_UP_ENTRIES, Engine, EngineError, EngineOptions,
    Input, MemberChange, RaftStatus, ReadReply, Recovery, Reply, SNAPSHOTS_KEPT, Shared, State,
    decode_state, encode_state, lock,
};
use crate::engine::command::Command;
use crate::wal::{self, SnapshotMeta, Wal, WalError};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, Snapshot,
};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, mpsc};
use std::time::{Duration, Instant};

/// Most inputs handled before the next `Ready`.
const MAX_BATCH: usize = 4096;
/// Largest append message (etcd's `maxSizePerMsg`).
const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Append messages in flight per follower (etcd's `maxInflightMsgs`).
const MAX_INFLIGHT: usize = 4096 / 8;

pub(super) fn open(opts: EngineOptions) -> Result<(Engine, Recovery, super::Outbox), EngineError> {
    let member = opts.data_dir.join("member");
    let snap_dir = member.join("snap");
    let wal_dir = opts.wal_dir.clone().unwrap_or_else(|| member.join("wal"));
    let id = opts.raft.id;

    // The newest snapshot, or the bootstrap state.
    let (mut state, mut conf, snap_index, snap_term) = match wal::load_latest_snapshot(&snap_dir)? {
        Some((meta, data)) => {
            let (state, conf) =
                decode_state(&data).map_err(|reason| EngineError::DecodeSnapshot {
                    index: meta.index,
                    dir: snap_dir.clone(),
                    reason,
                })?;
            (state, conf, meta.index, meta.term)
        }
        None => {
            // A joining member may have written a hard state (a term it heard of)
            // before its first snapshot arrived; a new cluster's members always start
            // from their bootstrap snapshot.
            if has_wal(&wal_dir) && matches!(opts.raft.bootstrap, Bootstrap::New(_)) {
                return Err(EngineError::NoSnapshot(wal_dir));
            }
            match &opts.raft.bootstrap {
                Bootstrap::New(members) => {
                    let state = State {
                        members: members.clone(),
                        applied_index: BOOTSTRAP_INDEX,
                        ..State::default()
                    };
                    let conf = voters(members);
                    let data =
                        encode_state(&state, &conf).map_err(|e| EngineError::DecodeSnapshot {
                            index: BOOTSTRAP_INDEX,
                            dir: snap_dir.clone(),
                            reason: e.to_string(),
                        })?;
                    let meta = SnapshotMeta {
                        index: BOOTSTRAP_INDEX,
                        term: 1,
                    };
                    wal::save_snapshot(&snap_dir, &meta, &data, SNAPSHOTS_KEPT)?;
                    (state, conf, BOOTSTRAP_INDEX, 1)
                }
                Bootstrap::Existing => (State::default(), ConfState::default(), 0, 0),
            }
        }
    };
    // A restored backup carries no configuration: the flags give the new cluster's.
    if conf.voters.is_empty()
        && snap_index > 0
        && let Bootstrap::New(members) = &opts.raft.bootstrap
    {
        state.members = members.clone();
        conf = voters(members);
    }
    state.applied_index = snap_index;
    state.term = snap_term;
    state.v3.resume_leases(Instant::now());

    let (wal, entries) = Wal::open(&wal_dir, snap_index, opts.wal.clone())?;
    let mut raft_entries = Vec::with_capacity(entries.len());
    for e in &entries {
        raft_entries.push(decode_entry(e).map_err(|reason| EngineError::DecodeEntry {
            index: e.index,
            dir: wal_dir.clone(),
            reason,
        })?);
    }
    let mut hard = HardState::default();
    if let Some(hs) = wal.hard_state() {
        hard.term = hs.term;
        hard.vote = hs.vote;
        hard.commit = hs.commit;
    }
    hard.term = hard.term.max(snap_term);
    let last = raft_entries.last().map_or(snap_index, |e| e.index);
    hard.commit = hard.commit.clamp(snap_index, last);

    let (inbox, rx) = mpsc::channel();
    let (outbox, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        state: RwLock::new(state),
        inbox: Mutex::new(Some(inbox)),
        failed: OnceLock::new(),
        thread: Mutex::new(None),
        data_dir: opts.data_dir.clone(),
        status: Mutex::new(RaftStatus {
            id,
            ..RaftStatus::default()
        }),
        request_timeout: opts.raft.request_timeout(),
        cluster_id: AtomicU64::new(0),
        removed: std::sync::atomic::AtomicBool::new(false),
        sole_voter: std::sync::atomic::AtomicBool::new(false),
    });
    shared.cluster_id.store(
        shared.state.read().map_or(0, |s| s.members.cluster_id),
        Ordering::Relaxed,
    );
    let only_voter = conf.voters == [id];
    let mut store = LogStore::new(shared.clone(), snap_index, snap_term, conf, hard);
    store.append(&raft_entries);

    let tick = opts.raft.heartbeat.max(Duration::from_millis(1));
    let election_tick = (opts.raft.election.as_millis() / tick.as_millis().max(1)).max(2) as usize;
    let config = Config {
        id,
        election_tick,
        heartbeat_tick: 1,
        applied: snap_index,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: MAX_INFLIGHT,
        check_quorum: true,
        pre_vote: true,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| EngineError::Raft(e.to_string()))?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let mut raw =
        RawNode::new(&config, store, &logger).map_err(|e| EngineError::Raft(e.to_string()))?;
    if only_voter {
        // Nobody to wait for: a one-member cluster leads at once.
        raw.campaign()
            .map_err(|e| EngineError::Raft(e.to_string()))?;
    }
    let mut node = Node {
        raw,
        shared: shared.clone(),
        wal,
        snap_dir,
        snapshot_count: opts.snapshot_count.max(1),
        last_snapshot: snap_index,
        snapshot_done: None,
        outbox,
        id,
        next_req: 1,
        pending: HashMap::new(),
        election: opts.raft.election,
        applied_term: 0,
        reads_queued: Vec::new(),
        reads_in_flight: HashMap::new(),
        reads_waiting: Vec::new(),
        tick,
        next_tick: Instant::now() + tick,
        request_timeout: opts.raft.request_timeout(),
        removed: false,
    };
    // Apply what is known to be committed before anyone reads.
    let before = snap_index;
    while node.raw.has_ready() {
        node.on_ready()?;
    }
    let replayed = node
        .shared
        .state
        .read()
        .map_or(0, |s| s.applied_index - before) as usize;
    node.update_status();
    let handle = std::thread::Builder::new()
        .name("keel-raft".into())
        .spawn(move || node.run(rx))
        .map_err(EngineError::Thread)?;
    *lock(&shared.thread) = Some(handle);
    Ok((
        Engine { shared },
        Recovery {
            snapshot_index: snap_index,
            replayed_entries: replayed,
        },
        out_rx,
    ))
}

fn has_wal(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal")))
    })
}

fn voters(members: &crate::cluster::Members) -> ConfState {
    let mut conf = ConfState::default();
    for m in members.list() {
        if m.is_learner {
            conf.learners.push(m.id);
        } else {
            conf.voters.push(m.id);
        }
    }
    conf
}

/// A Raft entry as the WAL stores it: type u8, context length u32, context, data.
fn encode_entry(e: &Entry) -> wal::Entry {
    let mut data = Vec::with_capacity(5 + e.context.len() + e.data.len());
    data.push(e.get_entry_type() as u8);
    data.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    data.extend_from_slice(&e.context);
    data.extend_from_slice(&e.data);
    wal::Entry {
        index: e.index,
        term: e.term,
        data,
    }
}

fn decode_entry(w: &wal::Entry) -> Result<Entry, String> {
    let (&ty, rest) = w.data.split_first().ok_or("empty entry")?;
    let ty = match ty {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        other => return Err(format!("unknown entry type {other}")),
    };
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("entry too short")?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let ctx = rest.get(4..4 + len).ok_or("context runs past the entry")?;
    let mut e = Entry::default();
    e.set_entry_type(ty);
    e.index = w.index;
    e.term = w.term;
    e.context = ctx.to_vec().into();
    e.data = rest[4 + len..].to_vec().into();
    Ok(e)
}

/// Proposal context: the proposing member and its request number.
fn context(member: u64, req: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&member.to_le_bytes());
    c.extend_from_slice(&req.to_le_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64)> {
    let member = u64::from_le_bytes(c.get(..8)?.try_into().ok()?);
    let req = u64::from_le_bytes(c.get(8..16)?.try_into().ok()?);
    Some((member, req))
}

/// A proposal of this member waiting to be applied here.
struct Pending {
    reply: Reply,
    at: Instant,
    /// This member's term when the proposal was handed to Raft.
    term: u64,
    /// Since when entries of a later term have been applied without it. An entry of
    /// the proposal's term can no longer commit then (it would have been applied
    /// first); only a proposal still in flight to a leader can, so after an election
    /// timeout its caller is told the leader changed instead of waiting for the
    /// request timeout.
    overtaken: Option<Instant>,
}

/// A ReadIndex round sent under one leader and term.
struct ReadRound {
    readers: Vec<ReadReply>,
    at: Instant,
    leader: u64,
    term: u64,
}

struct Node {
    raw: RawNode<LogStore>,
    shared: Arc<Shared>,
    wal: Wal,
    snap_dir: PathBuf,
    snapshot_count: u64,
    last_snapshot: u64,
    /// A snapshot being written: its index and the channel that says it is durable.
    snapshot_done: Option<(u64, mpsc::Receiver<Result<(), WalError>>)>,
    outbox: tokio::sync::mpsc::UnboundedSender<Message>,
    id: u64,
    next_req: u64,
    /// Proposals of this member not yet applied, by request number.
    pending: HashMap<u64, Pending>,
    /// etcd's `--election-timeout`: how long an overtaken proposal may still commit.
    election: Duration,
    /// Term of the last entry applied (proposals of an earlier term are overtaken).
    applied_term: u64,
    /// Linearizable reads waiting for the next ReadIndex round.
    reads_queued: Vec<ReadReply>,
    /// ReadIndex rounds sent, by context.
    reads_in_flight: HashMap<u64, ReadRound>,
    /// Reads whose index is known, waiting for it to be applied.
    reads_waiting: Vec<(u64, Vec<ReadReply>)>,
    tick: Duration,
    next_tick: Instant,
    request_timeout: Duration,
    removed: bool,
}

impl Node {
    fn run(mut self, rx: mpsc::Receiver<Input>) {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..MAX_BATCH {
                        match rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= self.next_tick {
                self.raw.tick();
                self.next_tick = (self.next_tick + self.tick).max(now);
                self.sweep(now);
            }
            self.issue_reads();
            if let Err(e) = self.on_ready() {
                self.fail(&e.to_string());
                // Keep draining so that callers get an answer instead of a timeout.
                while let Ok(input) = rx.recv() {
                    self.refuse(input, &e.to_string());
                }
                return;
            }
            self.update_status();
            self.poll_snapshot(false);
        }
        self.poll_snapshot(true);
    }

    fn fail(&mut self, reason: &str) {
        tracing::error!(error = %reason, "store failed; refusing further writes");
        let _ = self.shared.failed.set(reason.to_string());
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(EngineError::Failed(reason.to_string())));
        }
    }

    fn refuse(&mut self, input: Input, reason: &str) {
        match input {
            Input::Propose { reply, .. } | Input::ChangeMembers { reply, .. } => {
                let _ = reply.send(Err(EngineError::Failed(reason.to_string())));
            }
            Input::Read(reply) => {
                let _ = reply.send(Err(EngineError::Failed(reason.to_string())));
            }
            _ => {}
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Propose { cmd, reply } => {
                if self.removed {
                    let _ = reply.send(Err(EngineError::Removed));
                    return;
                }
                let data = match postcard::to_allocvec(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::Raft(e.to_string())));
                        return;
                    }
                };
                self.submit(reply, |raw, ctx| raw.propose(ctx, data));
            }
            Input::ChangeMembers { change, reply } => self.propose_change(change, reply),
            Input::Read(reply) => self.reads_queued.push(reply),
            Input::Step(msg) => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "raft: message ignored");
                }
            }
            Input::Unreachable(id) => self.raw.report_unreachable(id),
            Input::SnapshotSent { to, ok } => self.raw.report_snapshot(
                to,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            Input::TransferLeader(to) => self.raw.transfer_leader(to),
        }
    }

    fn propose_change(&mut self, change: MemberChange, reply: Reply) {
        if let MemberChange::Promote(id) = &change
            && self.raw.raft.state == StateRole::Leader
        {
            // etcd promotes a learner only once it has 90 % of the leader's log.
            let committed = self.raw.raft.raft_log.committed;
            let matched = self.raw.raft.prs().get(*id).map_or(0, |p| p.matched);
            if (matched as f64) < committed as f64 * 0.9 {
                let _ = reply.send(Err(EngineError::LearnerNotReady));
                return;
            }
        }
        let (node, ty) = match &change {
            MemberChange::Add(m) if m.is_learner => (m.id, ConfChangeType::AddLearnerNode),
            MemberChange::Add(m) => (m.id, ConfChangeType::AddNode),
            MemberChange::Promote(id) => (*id, ConfChangeType::AddNode),
            MemberChange::Remove(id) => (*id, ConfChangeType::RemoveNode),
        };
        let mut single = ConfChangeSingle {
            node_id: node,
            ..Default::default()
        };
        single.set_change_type(ty);
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        match postcard::to_allocvec(&change) {
            Ok(c) => cc.context = c.into(),
            Err(e) => {
                let _ = reply.send(Err(EngineError::Raft(e.to_string())));
                return;
            }
        }
        self.submit(reply, |raw, ctx| raw.propose_conf_change(ctx, cc));
    }

    /// Hand a proposal to Raft under a new request number; its proposer is answered
    /// when the entry is applied here, or now if Raft drops it.
    fn submit(
        &mut self,
        reply: Reply,
        propose: impl FnOnce(&mut RawNode<LogStore>, Vec<u8>) -> raft::Result<()>,
    ) {
        let req = self.next_req;
        self.next_req += 1;
        match propose(&mut self.raw, context(self.id, req)) {
            Ok(()) => {
                let pending = Pending {
                    reply,
                    at: Instant::now(),
                    term: self.raw.raft.term,
                    overtaken: None,
                };
                self.pending.insert(req, pending);
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(EngineError::NoLeader));
            }
            Err(e) => {
                let _ = reply.send(Err(EngineError::Raft(e.to_string())));
            }
        }
    }

    /// Forget requests whose callers gave up, so that nothing piles up while a
    /// partition lasts, and answer proposals overtaken by a new leader for an election
    /// timeout.
    fn sweep(&mut self, now: Instant) {
        let limit = self.request_timeout;
        let grace = self.election;
        for (_, p) in self.pending.extract_if(|_, p| {
            p.reply.is_closed()
                || now.duration_since(p.at) >= limit
                || p.overtaken.is_some_and(|t| now.duration_since(t) >= grace)
        }) {
            if p.overtaken.is_some() {
                let _ = p.reply.send(Err(EngineError::LeaderChanged));
            }
        }
        self.reads_in_flight
            .retain(|_, r| now.duration_since(r.at) < limit);
    }

    /// Reads are idempotent: a ReadIndex round sent under a leader that is gone (its
    /// request or answer died with it), or unanswered for an election timeout (a lost
    /// message), goes out again to the current leader.
    fn retry_lost_reads(&mut self) {
        let (leader, term) = (self.raw.raft.leader_id, self.raw.raft.term);
        if leader == raft::INVALID_ID || self.reads_in_flight.is_empty() {
            return;
        }
        let (now, patience) = (Instant::now(), self.election);
        for (_, round) in self.reads_in_flight.extract_if(|_, r| {
            (r.leader, r.term) != (leader, term) || now.duration_since(r.at) >= patience
        }) {
            let waiting = round.readers.into_iter().filter(|r| !r.is_closed());
            self.reads_queued.extend(waiting);
        }
    }

    fn issue_reads(&mut self) {
        self.retry_lost_reads();
        if self.reads_queued.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            for r in std::mem::take(&mut self.reads_queued) {
                let _ = r.send(Err(EngineError::NoLeader));
            }
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            // A leader drops ReadIndex requests until an entry of its term commits:
            // hold them until this member knows of one.
            return;
        }
        let readers = std::mem::take(&mut self.reads_queued);
        let ctx = self.next_req;
        self.next_req += 1;
        self.raw.read_index(ctx.to_le_bytes().to_vec());
        let round = ReadRound {
            readers,
            at: Instant::now(),
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
        };
        self.reads_in_flight.insert(ctx, round);
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let _ = self.outbox.send(m);
        }
    }

    /// Handle one `Ready` (etcd's `raftNode` loop body).
    pub(super) fn on_ready(&mut self) -> Result<(), EngineError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        let entries = rd.take_entries();
        self.persist(&entries, rd.hs().cloned())?;
        self.send(rd.take_persisted_messages());
        let read_states = rd.take_read_states();
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().hard.commit = commit;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        for rs in read_states {
            let ctx = rs
                .request_ctx
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if let Some(round) = ctx.and_then(|c| self.reads_in_flight.remove(&c)) {
                self.reads_waiting.push((rs.index, round.readers));
            }
        }
        self.release_reads();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn persist(&mut self, entries: &[Entry], hs: Option<HardState>) -> Result<(), EngineError> {
        // Term and vote must be durable before any message goes out; the commit index
        // need not be (Raft learns it again), so a change of only the commit index
        // rides along with the next frame of entries instead of costing a sync.
        let vote_changed = hs.as_ref().is_some_and(|hs| {
            self.wal
                .hard_state()
                .is_none_or(|w| w.term != hs.term || w.vote != hs.vote)
        });
        if let Some(hs) = &hs {
            self.raw.mut_store().hard = hs.clone();
        }
        if entries.is_empty() && !vote_changed {
            return Ok(());
        }
        let hard = &self.raw.store().hard;
        let state = wal::HardState {
            term: hard.term,
            vote: hard.vote,
            commit: hard.commit,
        };
        let wal_entries: Vec<wal::Entry> = entries.iter().map(encode_entry).collect();
        self.wal.save(&wal_entries, Some(state))?;
        self.raw.mut_store().append(entries);
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), EngineError> {
        let meta = snap.get_metadata().clone();
        let (mut new, _) =
            decode_state(&snap.data).map_err(|reason| EngineError::DecodeSnapshot {
                index: meta.index,
                dir: self.snap_dir.clone(),
                reason,
            })?;
        wal::save_snapshot(
            &self.snap_dir,
            &SnapshotMeta {
                index: meta.index,
                term: meta.term,
            },
            &snap.data,
            SNAPSHOTS_KEPT,
        )?;
        self.wal.reset_to(meta.index)?;
        {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.v2 = std::mem::take(&mut new.v2);
            state.v3.mvcc = std::mem::take(&mut new.v3.mvcc);
            state.v3.resume_leases(Instant::now());
            state.members = std::mem::take(&mut new.members);
            state.applied_index = meta.index;
            self.shared
                .cluster_id
                .store(state.members.cluster_id, Ordering::Relaxed);
        }
        self.raw.mut_store().apply_snapshot(&meta);
        self.last_snapshot = meta.index;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            bytes = snap.data.len(),
            "installed the leader's snapshot"
        );
        Ok(())
    }

    /// Apply committed entries in order and answer this member's proposers.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), EngineError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        let now = Instant::now();
        let shared = self.shared.clone();
        let mut state = shared
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let term = self.raw.raft.term;
        let mut membership_changed = false;
        let mut last_term = 0;
        for e in entries {
            last_term = e.term;
            if e.index <= state.applied_index {
                continue;
            }
            let mine = parse_context(&e.context).filter(|(m, _)| *m == self.id);
            let outcome = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => None,
                EntryType::EntryNormal => {
                    let cmd: Command =
                        postcard::from_bytes(&e.data).map_err(|err| EngineError::DecodeEntry {
                            index: e.index,
                            dir: self.wal.dir().to_path_buf(),
                            reason: err.to_string(),
                        })?;
                    membership_changed |= matches!(cmd, Command::UpdateMember { .. });
                    Some(state.apply(&cmd, now))
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    membership_changed = true;
                    Some(self.apply_conf_change(&mut state, &e)?)
                }
            };
            state.applied_index = e.index;
            if let (Some((_, req)), Some(outcome)) = (mine, outcome) {
                replies.push((
                    req,
                    Applied {
                        index: e.index,
                        term,
                        outcome,
                    },
                ));
            }
        }
        state.term = term;
        let applied_index = state.applied_index;
        drop(state);
        if membership_changed {
            self.persist_commit(applied_index)?;
        }
        for (req, applied) in replies {
            if let Some(p) = self.pending.remove(&req) {
                let _ = p.reply.send(Ok(applied));
            }
        }
        if last_term > self.applied_term {
            // Proposals are made at this member's term, never below an applied entry's:
            // only a new term can overtake any.
            self.applied_term = last_term;
            for p in self.pending.values_mut() {
                if p.term < last_term && p.overtaken.is_none() {
                    p.overtaken = Some(now);
                }
            }
        }
        self.release_reads();
        Ok(())
    }

    /// Makes the commit index durable up to `index`. The commit index normally rides
    /// with the next frame of entries, so a member restarting right after a membership
    /// change could replay the log without applying it — and, if a peer's URL changed,
    /// never reach that peer again to learn the commit index (it answers the leader at
    /// the URL it knows). So a change of peer URLs or members is made durable at once.
    fn persist_commit(&mut self, index: u64) -> Result<(), EngineError> {
        let hard = &self.raw.store().hard;
        let state = wal::HardState {
            term: hard.term,
            vote: hard.vote,
            commit: hard.commit.max(index),
        };
        self.wal.save(&[], Some(state))?;
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        state: &mut State,
        e: &Entry,
    ) -> Result<super::command::Outcome, EngineError> {
        use protobuf::Message as _;
        let bad = |reason: String| EngineError::DecodeEntry {
            index: e.index,
            dir: self.wal.dir().to_path_buf(),
            reason,
        };
        // This store proposes only V2 changes.
        if e.get_entry_type() != EntryType::EntryConfChangeV2 {
            return Err(bad("a version 1 configuration change".into()));
        }
        let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| bad(err.to_string()))?;
        let change: Option<MemberChange> = postcard::from_bytes(&cc.context).ok();
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.raw.mut_store().conf = cs,
            Err(err) => {
                tracing::warn!(index = e.index, error = %err, "configuration change refused");
                return Ok(super::command::Outcome::Done);
            }
        }
        match change {
            Some(MemberChange::Add(m)) => {
                tracing::info!(member = %format!("{:x}", m.id), learner = m.is_learner, "member added");
                state.members.members.insert(m.id, m);
            }
            Some(MemberChange::Promote(id)) => {
                if let Some(m) = state.members.members.get_mut(&id) {
                    m.is_learner = false;
                }
                tracing::info!(member = %format!("{id:x}"), "learner promoted");
            }
            Some(MemberChange::Remove(id)) => {
                state.members.members.remove(&id);
                state.members.removed.push(id);
                tracing::info!(member = %format!("{id:x}"), "member removed");
                if id == self.id {
                    self.removed = true;
                    self.shared.removed.store(true, Ordering::Relaxed);
                }
            }
            None => {}
        }
        Ok(super::command::Outcome::Done)
    }

    fn release_reads(&mut self) {
        if self.reads_waiting.is_empty() {
            return;
        }
        let applied = self
            .raw
            .raft
            .raft_log
            .applied()
            .max(self.shared.state.read().map_or(0, |s| s.applied_index));
        let mut still = Vec::new();
        for (index, readers) in self.reads_waiting.drain(..) {
            if index <= applied {
                for r in readers {
                    let _ = r.send(Ok(()));
                }
            } else {
                still.push((index, readers));
            }
        }
        self.reads_waiting = still;
    }

    pub(super) fn update_status(&self) {
        let r = &self.raw.raft;
        let status = RaftStatus {
            id: self.id,
            leader: r.leader_id,
            term: r.term,
            last_index: r.raft_log.last_index(),
            commit: r.raft_log.committed,
            applied: r.raft_log.applied(),
            is_learner: self.raw.store().conf.learners.contains(&self.id),
        };
        *lock(&self.shared.status) = status;
        let conf = &self.raw.store().conf;
        let sole = r.state == StateRole::Leader
            && conf.voters == [self.id]
            && conf.voters_outgoing.is_empty()
            && r.raft_log.applied() >= r.raft_log.committed
            && raft::Storage::term(self.raw.store(), r.raft_log.committed).ok() == Some(r.term);
        self.shared.sole_voter.store(sole, Ordering::Release);
        if r.state == StateRole::Leader {
            // Keep `term` in headers current even before the first entry of a term applies.
            if let Ok(mut s) = self.shared.state.try_write() {
                s.term = r.term;
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), EngineError> {
        let applied = self.raw.raft.raft_log.applied();
        if self.snapshot_done.is_some() || applied < self.last_snapshot + self.snapshot_count {
            return Ok(());
        }
        let (index, bytes) = {
            let state = self
                .shared
                .state
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let bytes = encode_state(&state, &self.raw.store().conf).map_err(|e| {
                EngineError::DecodeSnapshot {
                    index: state.applied_index,
                    dir: self.snap_dir.clone(),
                    reason: e.to_string(),
                }
            })?;
            (state.applied_index, bytes)
        };
        let term = raft::Storage::term(self.raw.store(), index).unwrap_or(self.raw.raft.term);
        // Entries after this point go to a new segment, so older segments end at `index`.
        self.wal.roll()?;
        self.last_snapshot = index;
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

    /// Once a snapshot is durable, drop the WAL segments and in-memory entries it covers.
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
            Some(Ok(())) => {
                match self.wal.compact(index) {
                    Ok(removed) => tracing::info!(index, removed, "snapshot saved, WAL compacted"),
                    Err(e) => tracing::warn!(index, error = %e, "cannot remove old WAL segments"),
                }
                self.raw
                    .mut_store()
                    .compact(index.saturating_sub(CATCH_UP_ENTRIES));
            }
            Some(Err(e)) => tracing::warn!(index, error = %e, "snapshot failed; WAL kept"),
        }
        self.snapshot_done = None;
    }
}

/// raft-rs logs through slog; forward its records to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg());
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::debug!(target: "raft", "{}", record.msg());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_with_only_a_hard_state(dir: &std::path::Path) {
        let (mut wal, _) = Wal::open(&dir.join("member/wal"), 0, Default::default()).unwrap();
        let hs = wal::HardState {
            term: 7,
            vote: 0,
            commit: 0,
        };
        wal.save(&[], Some(hs)).unwrap();
    }

    #[test]
    fn a_joining_member_restarts_before_its_first_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        wal_with_only_a_hard_state(dir.path());
        let mut opts = EngineOptions::new(dir.path());
        opts.raft.bootstrap = Bootstrap::Existing;
        let (engine, recovery, _outbox) = Engine::open(opts).unwrap();
        assert_eq!(recovery.snapshot_index, 0);
        assert_eq!(engine.status().term, 7);
        engine.shutdown();
    }

    #[test]
    fn a_new_clusters_member_without_its_bootstrap_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        wal_with_only_a_hard_state(dir.path());
        let err = Engine::open(EngineOptions::new(dir.path())).unwrap_err();
        assert!(matches!(err, EngineError::NoSnapshot(_)), "{err}");
    }
}
