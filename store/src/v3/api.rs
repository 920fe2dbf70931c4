//! The v3 request handlers, shared by the gRPC services ([`super::grpc`]) and the JSON
//! gateway: validation as etcd does it, reads from the state under its read lock,
//! writes proposed to the engine's log.

use super::error::V3Error;
use super::mvcc::{self, KeyRange, MAX_LEASE_TTL_SECS};
use super::pb::etcdserverpb::{
    self as pb, AlarmMember, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvRequest, HashKvResponse, HashResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, Member,
    MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, StatusResponse, TxnRequest, TxnResponse, alarm_request, request_op,
};
use super::state::{V3Applied, V3Write};
use crate::cluster::Cluster;
use crate::engine::Engine;
use crate::engine::command::{Command, Outcome};
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// gRPC framing allowance on top of `--max-request-bytes` (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// The etcd version reported by `Status`.
pub const STATUS_VERSION: &str = crate::http::ETCD_SERVER_VERSION;

/// Limits and knobs of the v3 API.
#[derive(Debug, Clone)]
pub struct V3Options {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Smallest lease TTL granted (etcd: 1.5 election timeouts, rounded up; 2 s by default).
    pub min_lease_ttl_secs: i64,
    /// How often watchers with `progress_notify` get a progress response.
    pub progress_notify_interval: Duration,
}

impl Default for V3Options {
    fn default() -> Self {
        V3Options {
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES as usize,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            min_lease_ttl_secs: 2,
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// The v3 API over one engine.
#[derive(Debug, Clone)]
pub struct V3Api {
    pub engine: Engine,
    pub cluster: Arc<Cluster>,
    pub opts: Arc<V3Options>,
}

impl V3Api {
    pub fn new(engine: Engine, cluster: Arc<Cluster>, opts: V3Options) -> Self {
        V3Api {
            engine,
            cluster,
            opts: Arc::new(opts),
        }
    }

    /// A response header at `revision` (takes the state's read lock: never call it
    /// while holding the state lock; use [`V3Api::header_at`] there).
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let term = self.engine.read().term;
        self.header_at(revision, term)
    }

    /// A response header at `revision` in raft `term`.
    pub fn header_at(&self, revision: i64, term: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.engine.cluster_id(),
            member_id: self.cluster.local.id,
            revision,
            raft_term: term,
        })
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = self.header(rev);
    }

    fn current_header(&self) -> Option<ResponseHeader> {
        let rev = self.engine.read().v3.mvcc.revision();
        self.header(rev)
    }

    async fn propose(&self, w: V3Write) -> Result<V3Applied, V3Error> {
        match self.engine.propose(Command::V3(w)).await {
            Ok(applied) => match applied.outcome {
                Outcome::V3(r) => *r,
                _ => Err(V3Error::Unsupported("unexpected outcome")),
            },
            Err(e) => Err(engine_error(e)),
        }
    }

    fn check_size(&self, m: &impl Message) -> Result<Vec<u8>, V3Error> {
        let b = m.encode_to_vec();
        if b.len() > self.opts.max_request_bytes {
            return Err(V3Error::RequestTooLarge);
        }
        Ok(b)
    }

    pub async fn range(&self, r: &RangeRequest) -> Result<RangeResponse, V3Error> {
        if r.key.is_empty() {
            return Err(V3Error::EmptyKey);
        }
        if !r.serializable {
            self.engine.read_index().await.map_err(engine_error)?;
        }
        let mut resp = self.engine.read().v3.mvcc.range(r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn put(&self, r: &PutRequest) -> Result<PutResponse, V3Error> {
        check_put(r)?;
        let b = self.check_size(r)?;
        match self.propose(V3Write::Put(b)).await? {
            V3Applied::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(V3Error::Unsupported("unexpected outcome")),
        }
    }

    pub async fn delete_range(
        &self,
        r: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, V3Error> {
        if r.key.is_empty() {
            return Err(V3Error::EmptyKey);
        }
        let b = self.check_size(r)?;
        match self.propose(V3Write::DeleteRange(b)).await? {
            V3Applied::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(V3Error::Unsupported("unexpected outcome")),
        }
    }

    pub async fn txn(&self, r: &TxnRequest) -> Result<TxnResponse, V3Error> {
        check_txn(r, self.opts.max_txn_ops)?;
        mvcc::check_txn_duplicates(r)?;
        if is_flat_read_only(&r.success) && is_flat_read_only(&r.failure) {
            // Nothing to write: answer from the current state, as etcd does, after a
            // ReadIndex unless every range asks for a serializable read.
            let linearizable = r.success.iter().chain(&r.failure).any(|op| {
                matches!(&op.request, Some(request_op::Request::RequestRange(rr)) if !rr.serializable)
            }) || (r.success.is_empty() && r.failure.is_empty());
            if linearizable {
                self.engine.read_index().await.map_err(engine_error)?;
            }
            let state = self.engine.read();
            let m = &state.v3.mvcc;
            let succeeded = r.compare.iter().all(|c| m.compare(c));
            let branch = if succeeded { &r.success } else { &r.failure };
            let mut responses = Vec::new();
            for op in branch {
                if let Some(request_op::Request::RequestRange(rr)) = &op.request {
                    responses.push(pb::ResponseOp {
                        response: Some(pb::response_op::Response::ResponseRange(m.range(rr)?)),
                    });
                }
            }
            let rev = m.revision();
            drop(state);
            return Ok(TxnResponse {
                header: self.header(rev),
                succeeded,
                responses,
            });
        }
        let b = self.check_size(r)?;
        match self.propose(V3Write::Txn(b)).await? {
            V3Applied::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => Err(V3Error::Unsupported("unexpected outcome")),
        }
    }

    pub async fn compact(&self, r: &CompactionRequest) -> Result<CompactionResponse, V3Error> {
        self.propose(V3Write::Compact(r.revision)).await?;
        Ok(CompactionResponse {
            header: self.current_header(),
        })
    }

    pub async fn lease_grant(&self, r: &LeaseGrantRequest) -> Result<LeaseGrantResponse, V3Error> {
        if r.ttl > MAX_LEASE_TTL_SECS {
            return Err(V3Error::LeaseTtlTooLarge);
        }
        let ttl = r.ttl.max(self.opts.min_lease_ttl_secs);
        let id = if r.id != 0 { r.id } else { self.new_lease_id() };
        self.propose(V3Write::LeaseGrant { id, ttl }).await?;
        Ok(LeaseGrantResponse {
            header: self.current_header(),
            id,
            ttl,
            error: String::new(),
        })
    }

    fn new_lease_id(&self) -> i64 {
        let state = self.engine.read();
        loop {
            // Positive, non-zero and unused, like etcd's member-seeded generator.
            let id = (fastrand::u64(..) >> 1) as i64;
            if id != 0 && state.v3.mvcc.lease(id).is_none() {
                return id;
            }
        }
    }

    pub async fn lease_revoke(
        &self,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, V3Error> {
        self.propose(V3Write::LeaseRevoke { id: r.id }).await?;
        Ok(LeaseRevokeResponse {
            header: self.current_header(),
        })
    }

    /// Renew a lease; its TTL, or 0 if it does not exist (etcd answers so, not an error).
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<(Option<ResponseHeader>, i64), V3Error> {
        if !self.engine.is_leader() {
            // The leader expires leases; a follower's renewal reaches it through the log.
            self.propose(V3Write::LeaseRenew { id }).await?;
        }
        let mut state = self.engine.write();
        let ttl = match state.v3.mvcc.lease(id) {
            Some(l) => l.ttl,
            None => 0,
        };
        if ttl > 0 {
            state
                .v3
                .deadlines
                .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
        }
        let rev = state.v3.mvcc.revision();
        drop(state);
        Ok((self.header(rev), ttl))
    }

    pub fn lease_time_to_live(&self, r: &LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        let state = self.engine.read();
        let rev = state.v3.mvcc.revision();
        let resp = match (
            state.v3.mvcc.lease(r.id),
            state.v3.remaining_secs(r.id, Instant::now()),
        ) {
            (Some(l), Some(left)) => LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                ttl: left,
                granted_ttl: l.ttl,
                keys: if r.keys {
                    l.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            _ => LeaseTimeToLiveResponse {
                header: None,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        };
        drop(state);
        LeaseTimeToLiveResponse {
            header: self.header(rev),
            ..resp
        }
    }

    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        let state = self.engine.read();
        let leases = state
            .v3
            .mvcc
            .leases()
            .map(|l| LeaseStatus { id: l.id })
            .collect();
        let rev = state.v3.mvcc.revision();
        drop(state);
        LeaseLeasesResponse {
            header: self.header(rev),
            leases,
        }
    }

    pub fn members(&self) -> Vec<Member> {
        self.engine.members().list().map(member_pb).collect()
    }

    pub fn member_list(&self) -> MemberListResponse {
        let mut header = self.current_header();
        // etcd's MemberList header carries no revision.
        if let Some(h) = &mut header {
            h.revision = 0;
        }
        MemberListResponse {
            header,
            members: self.members(),
        }
    }

    pub fn status(&self) -> StatusResponse {
        let state = self.engine.read();
        let db = state.v3.mvcc.size_bytes().max(4096);
        let errors = state
            .v3
            .mvcc
            .alarms()
            .map(|(m, a)| format!("memberID:{m} alarm:{}", alarm_name(*a)))
            .collect();
        let rev = state.v3.mvcc.revision();
        drop(state);
        let raft = self.engine.status();
        StatusResponse {
            header: self.header(rev),
            version: STATUS_VERSION.to_string(),
            db_size: db,
            leader: raft.leader,
            raft_index: raft.commit,
            raft_term: raft.term,
            raft_applied_index: raft.applied,
            errors,
            db_size_in_use: db,
            is_learner: raft.is_learner,
        }
    }

    pub async fn alarm(&self, r: &AlarmRequest) -> Result<AlarmResponse, V3Error> {
        use alarm_request::AlarmAction;
        match AlarmAction::try_from(r.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => {}
            a => {
                let member = if r.member_id == 0 {
                    self.cluster.local.id
                } else {
                    r.member_id
                };
                self.propose(V3Write::Alarm {
                    member,
                    alarm: r.alarm,
                    active: a == AlarmAction::Activate,
                })
                .await?;
            }
        }
        let state = self.engine.read();
        let alarms = state
            .v3
            .mvcc
            .alarms()
            .filter(|(m, a)| {
                (r.member_id == 0 || *m == r.member_id) && (r.alarm == 0 || *a == r.alarm)
            })
            .map(|(m, a)| AlarmMember {
                member_id: *m,
                alarm: *a,
            })
            .collect();
        drop(state);
        // etcd answers alarms without a header (an empty list is `{}` on the gateway).
        Ok(AlarmResponse {
            header: None,
            alarms,
        })
    }

    pub fn hash(&self) -> Result<HashResponse, V3Error> {
        let state = self.engine.read();
        let hash = state.v3.mvcc.hash_kv(0)?;
        let rev = state.v3.mvcc.revision();
        drop(state);
        Ok(HashResponse {
            header: self.header(rev),
            hash,
        })
    }

    pub fn hash_kv(&self, r: &HashKvRequest) -> Result<HashKvResponse, V3Error> {
        let state = self.engine.read();
        let hash = state.v3.mvcc.hash_kv(r.revision)?;
        let (rev, compact) = (state.v3.mvcc.revision(), state.v3.mvcc.compact_revision());
        drop(state);
        Ok(HashKvResponse {
            header: self.header(rev),
            hash,
            compact_revision: compact,
        })
    }
}

fn alarm_name(a: i32) -> &'static str {
    match pb::AlarmType::try_from(a) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

/// Only ranges (nested txns go through the log for simplicity).
fn is_flat_read_only(ops: &[RequestOp]) -> bool {
    ops.iter().all(|op| {
        matches!(
            &op.request,
            Some(request_op::Request::RequestRange(_)) | None
        )
    })
}

/// etcd's `checkPutRequest`: a key, and no value or lease next to `ignore_value` /
/// `ignore_lease`.
fn check_put(r: &PutRequest) -> Result<(), V3Error> {
    if r.key.is_empty() {
        return Err(V3Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(V3Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(V3Error::LeaseProvided);
    }
    Ok(())
}

/// etcd's txn validation: op counts and empty keys, nested txns included.
fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<(), V3Error> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(V3Error::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(V3Error::EmptyKey);
        }
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(x)) if x.key.is_empty() => {
                return Err(V3Error::EmptyKey);
            }
            Some(request_op::Request::RequestPut(x)) => check_put(x)?,
            Some(request_op::Request::RequestDeleteRange(x)) if x.key.is_empty() => {
                return Err(V3Error::EmptyKey);
            }
            Some(request_op::Request::RequestTxn(t)) => check_txn(t, max_ops)?,
            _ => {}
        }
    }
    Ok(())
}

/// The key range a watch asks for, with etcd's conventions (empty key = `"\0"`).
pub fn watch_range(key: &bytes::Bytes, range_end: &bytes::Bytes) -> KeyRange {
    let key = if key.is_empty() {
        bytes::Bytes::from_static(b"\0")
    } else {
        key.clone()
    };
    KeyRange::new(&key, range_end)
}

/// A member as the v3 API lists it.
pub fn member_pb(m: &crate::cluster::Member) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// etcd's v3 error for an engine that cannot serve.
pub fn engine_error(e: crate::engine::EngineError) -> V3Error {
    use crate::engine::EngineError;
    match e {
        EngineError::NoLeader => V3Error::NoLeader,
        EngineError::LeaderChanged => V3Error::LeaderChanged,
        EngineError::Removed => {
            V3Error::Unsupported("the member has been permanently removed from the cluster")
        }
        EngineError::LearnerNotReady => V3Error::LearnerNotReady,
        _ => V3Error::Timeout,
    }
}
