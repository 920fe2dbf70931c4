//! The v3 state machine: the MVCC keyspace plus what the engine needs next to it (the
//! watch hub and the lease expiry clock), and the v3 commands of the log.

use super::error::V3Error;
use super::mvcc::{Changes, Mvcc};
use super::pb::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use super::watch::WatchHub;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A v3 write, as it is stored in the log. Requests are kept in their protobuf encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum V3Write {
    Put(Vec<u8>),
    DeleteRange(Vec<u8>),
    Txn(Vec<u8>),
    Compact(i64),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Remaining TTLs (ms) of live leases, so a restart resumes them.
    LeaseCheckpoint(Vec<(i64, i64)>),
    /// A keep-alive received by a follower, passed to whoever leads through the log.
    LeaseRenew {
        id: i64,
    },
    Alarm {
        member: u64,
        alarm: i32,
        active: bool,
    },
}

/// What applying a v3 write produced.
#[derive(Debug, Clone)]
pub enum V3Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Done,
}

/// The v3 part of the state.
#[derive(Debug, Default)]
pub struct V3State {
    pub mvcc: Mvcc,
    pub watch: WatchHub,
    /// When each lease expires (leader-local time, not part of the log).
    pub deadlines: HashMap<i64, Instant>,
}

fn decode<M: Message + Default>(b: &[u8]) -> Result<M, V3Error> {
    // Entries were encoded by this process from a valid message; a failure here means
    // a damaged log, which the WAL checksums already rule out.
    M::decode(b).map_err(|_| V3Error::Unsupported("undecodable log entry"))
}

impl V3State {
    /// Apply one v3 write; `now` is when it is applied (for lease deadlines).
    pub fn apply(&mut self, w: &V3Write, now: Instant) -> Result<V3Applied, V3Error> {
        let (applied, changes) = match w {
            V3Write::Put(b) => {
                let (r, c) = self.mvcc.put(&decode::<PutRequest>(b)?)?;
                (V3Applied::Put(r), Some(c))
            }
            V3Write::DeleteRange(b) => {
                let (r, c) = self.mvcc.delete_range(&decode::<DeleteRangeRequest>(b)?);
                (V3Applied::DeleteRange(r), Some(c))
            }
            V3Write::Txn(b) => {
                let (r, c) = self.mvcc.txn(&decode::<TxnRequest>(b)?)?;
                (V3Applied::Txn(r), Some(c))
            }
            V3Write::Compact(rev) => {
                self.mvcc.compact(*rev)?;
                (V3Applied::Done, None)
            }
            V3Write::LeaseGrant { id, ttl } => {
                self.mvcc.lease_grant(*id, *ttl)?;
                self.deadlines
                    .insert(*id, now + Duration::from_secs(*ttl as u64));
                (V3Applied::Done, None)
            }
            V3Write::LeaseRevoke { id } => {
                let c = self.mvcc.lease_revoke(*id)?;
                self.deadlines.remove(id);
                (V3Applied::Done, Some(c))
            }
            V3Write::LeaseRenew { id } => {
                if let Some(l) = self.mvcc.lease(*id) {
                    let ttl = l.ttl;
                    self.deadlines
                        .insert(*id, now + Duration::from_secs(ttl as u64));
                }
                (V3Applied::Done, None)
            }
            V3Write::LeaseCheckpoint(remaining) => {
                self.mvcc.lease_checkpoint(remaining);
                (V3Applied::Done, None)
            }
            V3Write::Alarm {
                member,
                alarm,
                active,
            } => {
                self.mvcc.set_alarm(*member, *alarm, *active);
                (V3Applied::Done, None)
            }
        };
        if let Some(c) = changes {
            self.notify(&c);
        }
        Ok(applied)
    }

    fn notify(&mut self, c: &Changes) {
        self.watch.notify(c);
    }

    /// After recovery: every lease resumes with its checkpointed remaining TTL (or its
    /// full TTL if never checkpointed), counted from `now`.
    pub fn resume_leases(&mut self, now: Instant) {
        self.deadlines = self
            .mvcc
            .leases()
            .map(|l| {
                let ms = l.remaining_ms.unwrap_or(l.ttl * 1000).max(0) as u64;
                (l.id, now + Duration::from_millis(ms))
            })
            .collect();
    }

    /// Remaining TTL of a lease in whole seconds (rounded up), if it exists.
    pub fn remaining_secs(&self, id: i64, now: Instant) -> Option<i64> {
        self.mvcc.lease(id)?;
        let left = self
            .deadlines
            .get(&id)
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(now));
        Some(left.as_millis().div_ceil(1000) as i64)
    }

    /// Leases whose deadline passed.
    pub fn expired_leases(&self, now: Instant) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }
}
