//! v3 KV workers: `Put`, linearizable `Range` of one existing key, and a
//! compare-and-swap `Txn` (`mod_revision(key) == last seen ? put : range`),
//! plus the bulk load (sequential puts of every key once).
//!
//! For the txn each client owns a disjoint slice of the key space and
//! remembers the mod revision it last wrote for each of its keys, so every
//! compare should succeed; a failed compare is counted as an error (it means
//! a lost or reordered write) and the client re-learns the revision from the
//! failure branch's range. Keys a client has not written yet are assumed
//! absent; one that exists (an earlier run's) costs a second txn in that
//! call, not an error.

use std::collections::HashMap;

use bytes::Bytes;
use tonic::transport::Channel;

use super::super::closed_loop::{self, Bounds, KeySpace, Outcome, Worker};
use super::super::rng::Rng;
use super::{failed, key};
use crate::v3::pb::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, kv_client::KvClient,
    request_op, response_op,
};

/// The request each client repeats.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put this value.
    Put(Bytes),
    /// Linearizable range of one key, which must exist.
    Range,
    /// Compare-and-swap: put this value if the key's mod revision is the one
    /// this client last wrote.
    Txn(Bytes),
}

/// A closed-loop v3 run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What each request does.
    pub op: Op,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys to use (`prefix` is the key prefix).
    pub keys: KeySpace,
    /// How long to run.
    pub bounds: Bounds,
}

impl Plan {
    /// Puts every key of `keys` exactly once, sequentially.
    pub fn load(clients: usize, keys: KeySpace, value: Bytes) -> Self {
        Self {
            op: Op::Put(value),
            clients,
            bounds: Bounds {
                total: Some(keys.len),
                duration: None,
                progress: true,
            },
            keys: keys.sequential(),
        }
    }
}

/// Key number for `ticket` among those owned by client `i` of `n`: the
/// key-space offset drawn by `keys`, moved to the nearest offset `≡ i (mod
/// n)` inside the key space. Needs `keys.len >= n`.
fn owned_key(keys: &KeySpace, i: u64, n: u64, ticket: u64, rng: &mut Rng) -> u64 {
    let off = keys.key(ticket, rng) - keys.start;
    let mut owned = off - off % n + i;
    if owned >= keys.len {
        // off - off % n >= n here, because i < n <= len.
        owned -= n;
    }
    keys.start + owned
}

struct KvWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    op: Op,
    /// This client's index and the number of clients (txn key ownership).
    index: u64,
    clients: u64,
    /// Txn: mod revision this client last saw per owned key.
    revisions: HashMap<u64, i64>,
}

impl KvWorker {
    async fn put(&mut self, n: u64, value: Bytes) -> Result<(), String> {
        let req = PutRequest {
            key: key(&self.keys.prefix, n),
            value,
            ..Default::default()
        };
        match self.kv.put(req).await {
            Ok(_) => Ok(()),
            Err(s) => Err(failed(&s).await),
        }
    }

    async fn range(&mut self, n: u64) -> Result<(), String> {
        let req = RangeRequest {
            key: key(&self.keys.prefix, n),
            ..Default::default()
        };
        match self.kv.range(req).await {
            Ok(r) if r.get_ref().kvs.len() == 1 => Ok(()),
            Ok(r) => Err(format!("range returned {} keys", r.get_ref().kvs.len())),
            Err(s) => Err(failed(&s).await),
        }
    }

    /// One CAS on key `n`. A key this client has not touched yet is assumed
    /// absent (mod revision 0); if it exists after all, the failure branch
    /// tells its revision and the CAS is retried once within the same call.
    async fn txn(&mut self, n: u64, value: Bytes) -> Result<(), String> {
        let known = self.revisions.get(&n).copied();
        let expected = known.unwrap_or(0);
        match self.cas(n, expected, value.clone()).await? {
            None => Ok(()),
            Some(current) if known.is_none() => match self.cas(n, current, value).await? {
                None => Ok(()),
                Some(now) => Err(format!(
                    "txn compare failed twice: expected mod_revision {current}, key has {now}"
                )),
            },
            Some(current) => Err(format!(
                "txn compare failed: expected mod_revision {expected}, key has {current}"
            )),
        }
    }

    /// `Txn(mod_revision(key n) == expected ? put : range)`; remembers the
    /// key's new revision and returns `None` on success, or the key's current
    /// mod revision when the compare failed.
    async fn cas(&mut self, n: u64, expected: i64, value: Bytes) -> Result<Option<i64>, String> {
        let k = key(&self.keys.prefix, n);
        let req = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: k.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(expected)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.clone(),
                    value,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            }],
        };
        let resp = match self.kv.txn(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(failed(&s).await),
        };
        if resp.succeeded {
            let rev = resp.header.map_or(0, |h| h.revision);
            self.revisions.insert(n, rev);
            return Ok(None);
        }
        let current = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(rr)) => Some(rr),
                _ => None,
            })
            .and_then(|rr| rr.kvs.first().map(|kv| kv.mod_revision))
            .unwrap_or(0);
        self.revisions.insert(n, current);
        Ok(Some(current))
    }
}

impl Worker for KvWorker {
    async fn call(&mut self, ticket: u64, rng: &mut Rng) -> Result<(), String> {
        match self.op.clone() {
            Op::Put(v) => {
                let n = self.keys.key(ticket, rng);
                self.put(n, v).await
            }
            Op::Range => {
                let n = self.keys.key(ticket, rng);
                self.range(n).await
            }
            Op::Txn(v) => {
                let n = owned_key(&self.keys, self.index, self.clients, ticket, rng);
                self.txn(n, v).await
            }
        }
    }
}

/// Runs `plan` with its clients spread round-robin over `channels`.
pub async fn run(channels: &[Channel], plan: &Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!channels.is_empty(), "no connections");
    if matches!(plan.op, Op::Txn(_)) {
        anyhow::ensure!(
            plan.keys.len >= plan.clients as u64,
            "txn needs --key-space >= --clients (each client owns its keys)"
        );
    }
    let workers = (0..plan.clients)
        .map(|i| KvWorker {
            kv: KvClient::new(channels[i % channels.len()].clone()),
            keys: plan.keys.clone(),
            op: plan.op.clone(),
            index: i as u64,
            clients: plan.clients as u64,
            revisions: HashMap::new(),
        })
        .collect();
    closed_loop::run(workers, plan.bounds).await
}

#[cfg(test)]
mod tests {
    use super::super::super::KeyOrder;
    use super::*;

    #[test]
    fn owned_keys_are_disjoint_and_in_range() {
        for (start, len, n) in [(0, 10, 3), (100, 7, 7), (5, 1000, 16), (0, 17, 16)] {
            let keys = KeySpace {
                prefix: "p".into(),
                start,
                len,
                order: KeyOrder::Random,
            };
            let mut rng = Rng::with_seed(9);
            for i in 0..n {
                for t in 0..500 {
                    let k = owned_key(&keys, i, n, t, &mut rng);
                    assert!((start..start + len).contains(&k), "{k} outside");
                    assert_eq!((k - start) % n, i, "client {i} got {k}");
                }
            }
        }
        // Sequential order walks each client's keys in turn.
        let keys = KeySpace {
            prefix: "p".into(),
            start: 0,
            len: 6,
            order: KeyOrder::Sequential,
        };
        let mut rng = Rng::with_seed(1);
        let got: Vec<u64> = (0..6)
            .map(|t| owned_key(&keys, 1, 2, t, &mut rng))
            .collect();
        assert_eq!(got, [1, 1, 3, 3, 5, 5]);
    }
}
