//! Commands: the entries of the log, and how the state machine applies them.
//!
//! A command carries everything its effect depends on (the time it was proposed at,
//! absolute expirations), so applying the same log always yields the same state.

use crate::v2::{Event, Ttl, V2Error, V2Store};
use crate::v3::{V3Applied, V3Error, V3State, V3Write};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A v2 keys API write.
    V2(V2Write),
    /// Expire v2 keys whose TTL ran out by `now` (etcd's `SYNC` request).
    Sync { now: i64 },
    /// A v3 API write.
    V3(V3Write),
    /// A member's name and client URLs, published once it runs (etcd's
    /// `ClusterAttrSetRequest`).
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// New peer URLs of a member (etcd's `MemberUpdate`).
    UpdateMember { id: u64, peer_urls: Vec<String> },
}

/// The v2 write methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum V2Method {
    Put,
    Post,
    Delete,
}

/// A v2 write request as parsed from HTTP (etcd's `etcdserverpb.Request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V2Write {
    pub method: V2Method,
    pub path: String,
    pub value: String,
    pub dir: bool,
    pub prev_value: String,
    pub prev_index: u64,
    pub prev_exist: Option<bool>,
    pub recursive: bool,
    pub refresh: bool,
    /// Absolute expiration in Unix ns (from `ttl`), if any.
    pub expiration: Option<i64>,
    /// When the request was proposed, Unix ns.
    pub now: i64,
}

/// What applying a command produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    V2(Box<Result<Event, V2Error>>),
    Synced {
        expired: usize,
    },
    V3(Box<Result<V3Applied, V3Error>>),
    /// A membership command was applied.
    Done,
}

/// Apply one command to the state machine (etcd's `applyV2Request` / `applierV3`);
/// `now` is the local clock for lease deadlines, which are not part of the log.
pub fn apply(v2: &mut V2Store, v3: &mut V3State, cmd: &Command, now: Instant) -> Outcome {
    match cmd {
        Command::V3(w) => Outcome::V3(Box::new(v3.apply(w, now))),
        Command::Sync { now } => Outcome::Synced {
            expired: v2.delete_expired(*now).len(),
        },
        Command::V2(w) => Outcome::V2(Box::new(apply_v2(v2, w))),
        // Membership is applied by the engine, which owns it.
        Command::Publish { .. } | Command::UpdateMember { .. } => Outcome::Done,
    }
}

fn apply_v2(v2: &mut V2Store, w: &V2Write) -> Result<Event, V2Error> {
    let ttl = Ttl {
        expire_at: w.expiration,
        refresh: w.refresh,
    };
    let compare = w.prev_index > 0 || !w.prev_value.is_empty();
    match w.method {
        V2Method::Post => v2.create(&w.path, w.dir, &w.value, true, ttl, w.now),
        V2Method::Delete if compare => {
            v2.compare_and_delete(&w.path, &w.prev_value, w.prev_index, w.now)
        }
        V2Method::Delete => v2.delete(&w.path, w.dir, w.recursive, w.now),
        V2Method::Put => match w.prev_exist {
            Some(true) if !compare => v2.update(&w.path, &w.value, ttl, w.now),
            Some(false) => v2.create(&w.path, w.dir, &w.value, false, ttl, w.now),
            _ if compare => {
                v2.compare_and_swap(&w.path, &w.prev_value, w.prev_index, &w.value, ttl, w.now)
            }
            _ => v2.set(&w.path, w.dir, &w.value, ttl, w.now),
        },
    }
}
