//! The v3 keyspace: a multi-version store with etcd's revision semantics.
//!
//! Every key keeps the list of its versions (oldest first) until a compaction drops the
//! ones no reader may ask for any more. A write transaction gets the next main revision;
//! its changes are numbered by sub-revision. A delete writes a tombstone. Reads at an old
//! revision take, per key, the newest version at or below it. Leases own keys and are
//! part of the state (their expiry clock is not: it is kept by the engine).
//!
//! Like the v2 store it is deterministic: the same commands give the same state.

use super::error::V3Error;
use super::pb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare,
    range_request, request_op, response_op,
};
use super::pb::mvccpb::{Event, KeyValue, event::EventType};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// etcd's largest lease TTL (`MaxLeaseTTL`, seconds).
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    main: i64,
    sub: i64,
    create: i64,
    version: i64,
    lease: i64,
    /// `None` is a tombstone. A boxed slice (16 bytes) rather than `Bytes` (32): with
    /// millions of keys the per-version overhead is most of the memory.
    value: Option<Box<[u8]>>,
}

/// A lease and the keys attached to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    pub keys: BTreeSet<Bytes>,
    /// Remaining TTL (ms) at the last checkpoint, used on restart.
    pub remaining_ms: Option<i64>,
}

/// The events of one applied revision, for watchers.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub revision: i64,
    /// Events in sub-revision order; each carries its previous key-value.
    pub events: Vec<Event>,
}

/// The multi-version keyspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mvcc {
    keys: BTreeMap<Box<[u8]>, Vec<Version>>,
    revision: i64,
    compact_revision: i64,
    leases: BTreeMap<i64, Lease>,
    /// Active alarms: (member id, alarm type).
    alarms: BTreeSet<(u64, i32)>,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            keys: BTreeMap::new(),
            // etcd's store starts at revision 1; the first write is revision 2.
            revision: 1,
            compact_revision: 0,
            leases: BTreeMap::new(),
            alarms: BTreeSet::new(),
        }
    }
}

/// The key range of a request: one key, `[key, end)`, or every key `>= key` when `end`
/// is `"\0"` (and every key when both are `"\0"`).
#[derive(Debug, Clone)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: Option<Bytes>,
    pub single: bool,
}

impl KeyRange {
    pub fn new(key: &Bytes, range_end: &Bytes) -> Self {
        if range_end.is_empty() {
            KeyRange {
                start: key.clone(),
                end: None,
                single: true,
            }
        } else if range_end.as_ref() == b"\0" {
            KeyRange {
                start: key.clone(),
                end: None,
                single: false,
            }
        } else {
            KeyRange {
                start: key.clone(),
                end: Some(range_end.clone()),
                single: false,
            }
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.single {
            return key == self.start.as_ref();
        }
        key >= self.start.as_ref() && self.end.as_ref().is_none_or(|e| key < e.as_ref())
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        if self.single {
            return (
                Bound::Included(self.start.as_ref()),
                Bound::Included(self.start.as_ref()),
            );
        }
        match &self.end {
            Some(e) if e.as_ref() <= self.start.as_ref() => (
                Bound::Included(self.start.as_ref()),
                Bound::Excluded(self.start.as_ref()),
            ),
            Some(e) => (
                Bound::Included(self.start.as_ref()),
                Bound::Excluded(e.as_ref()),
            ),
            None => (Bound::Included(self.start.as_ref()), Bound::Unbounded),
        }
    }
}

fn to_kv(key: &[u8], v: &Version) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: v.create,
        mod_revision: v.main,
        version: v.version,
        value: v
            .value
            .as_deref()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        lease: v.lease,
    }
}

/// The versions of `key`, created empty (with room for one) if it has none yet.
fn versions_mut<'a>(
    keys: &'a mut BTreeMap<Box<[u8]>, Vec<Version>>,
    key: &[u8],
) -> &'a mut Vec<Version> {
    if !keys.contains_key(key) {
        keys.insert(Box::from(key), Vec::with_capacity(1));
    }
    keys.get_mut(key).expect("inserted above")
}

/// The newest live version of a key at or below `rev`.
fn visible(versions: &[Version], rev: i64) -> Option<&Version> {
    let idx = versions.partition_point(|v| v.main <= rev);
    versions[..idx].last().filter(|v| v.value.is_some())
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// A write transaction in progress: changes get `main = revision + 1`.
struct Writer<'a> {
    m: &'a mut Mvcc,
    sub: i64,
    changes: Changes,
}

impl Writer<'_> {
    fn main(&self) -> i64 {
        self.m.revision + 1
    }

    /// Revision reads inside the transaction see.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main()
        } else {
            self.m.revision
        }
    }

    fn put(&mut self, r: &PutRequest) -> Result<PutResponse, V3Error> {
        let main = self.main();
        let prev = self
            .m
            .keys
            .get(r.key.as_ref())
            .and_then(|vs| visible(vs, main))
            .cloned();
        let value = if r.ignore_value {
            prev.as_ref()
                .and_then(|p| p.value.as_deref().map(Bytes::copy_from_slice))
                .ok_or(V3Error::KeyNotFound)?
        } else {
            r.value.clone()
        };
        let lease = if r.ignore_lease {
            prev.as_ref().map(|p| p.lease).ok_or(V3Error::KeyNotFound)?
        } else {
            r.lease
        };
        if lease != 0 && !self.m.leases.contains_key(&lease) {
            return Err(V3Error::LeaseNotFound);
        }
        let (create, version) = match &prev {
            Some(p) => (p.create, p.version + 1),
            None => (main, 1),
        };
        let v = Version {
            main,
            sub: self.sub,
            create,
            version,
            lease,
            value: Some(Box::from(value.as_ref())),
        };
        self.sub += 1;
        let kv = to_kv(&r.key, &v);
        let versions = versions_mut(&mut self.m.keys, &r.key);
        // A second write of the same key in one revision replaces the first.
        if versions.last().is_some_and(|l| l.main == main) {
            versions.pop();
        }
        versions.push(v);
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
            && let Some(l) = self.m.leases.get_mut(&p.lease)
        {
            l.keys.remove(&r.key);
        }
        if lease != 0
            && let Some(l) = self.m.leases.get_mut(&lease)
        {
            l.keys.insert(r.key.clone());
        }
        let prev_kv = prev.map(|p| to_kv(&r.key, &p));
        self.changes.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev_kv.clone(),
        });
        Ok(PutResponse {
            header: header(main),
            prev_kv: if r.prev_kv { prev_kv } else { None },
        })
    }

    fn delete(&mut self, r: &DeleteRangeRequest) -> DeleteRangeResponse {
        let main = self.main();
        let range = KeyRange::new(&r.key, &r.range_end);
        let live: Vec<(Bytes, Version)> = self
            .m
            .keys
            .range::<[u8], _>(range.bounds())
            .filter_map(|(k, vs)| visible(vs, main).map(|v| (Bytes::copy_from_slice(k), v.clone())))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, prev) in &live {
            let tomb = Version {
                main,
                sub: self.sub,
                create: 0,
                version: 0,
                lease: 0,
                value: None,
            };
            self.sub += 1;
            let versions = versions_mut(&mut self.m.keys, key);
            if versions.last().is_some_and(|l| l.main == main) {
                versions.pop();
            }
            versions.push(tomb);
            if prev.lease != 0
                && let Some(l) = self.m.leases.get_mut(&prev.lease)
            {
                l.keys.remove(key);
            }
            let prev_kv = to_kv(key, prev);
            self.changes.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: key.clone(),
                    mod_revision: main,
                    ..Default::default()
                }),
                prev_kv: Some(prev_kv.clone()),
            });
            if r.prev_kv {
                prev_kvs.push(prev_kv);
            }
        }
        DeleteRangeResponse {
            header: header(if live.is_empty() {
                self.read_rev()
            } else {
                main
            }),
            deleted: live.len() as i64,
            prev_kvs,
        }
    }

    fn finish(self) -> Changes {
        let mut changes = self.changes;
        if self.sub > 0 {
            self.m.revision += 1;
            changes.revision = self.m.revision;
        } else {
            changes.revision = self.m.revision;
        }
        changes
    }
}

impl Mvcc {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `Range`: read at `r.revision` (0 = now).
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, V3Error> {
        self.range_at(r, self.revision)
    }

    fn range_at(&self, r: &RangeRequest, current: i64) -> Result<RangeResponse, V3Error> {
        let rev = if r.revision <= 0 { current } else { r.revision };
        if rev > current {
            return Err(V3Error::FutureRev);
        }
        if r.revision > 0 && rev < self.compact_revision {
            return Err(V3Error::Compacted);
        }
        let range = KeyRange::new(&r.key, &r.range_end);
        let mut kvs: Vec<KeyValue> = Vec::new();
        let mut count = 0i64;
        let filtered = r.sort_order != 0
            || r.sort_target != 0
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        for (k, vs) in self.keys.range::<[u8], _>(range.bounds()) {
            let Some(v) = visible(vs, rev) else { continue };
            count += 1;
            if r.count_only {
                continue;
            }
            if !filtered && r.limit > 0 && kvs.len() as i64 > r.limit {
                continue;
            }
            kvs.push(to_kv(k, v));
        }
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let target = range_request::SortTarget::try_from(r.sort_target)
            .unwrap_or(range_request::SortTarget::Key);
        let mut order = range_request::SortOrder::try_from(r.sort_order)
            .unwrap_or(range_request::SortOrder::None);
        if target != range_request::SortTarget::Key && order == range_request::SortOrder::None {
            order = range_request::SortOrder::Ascend;
        }
        if order != range_request::SortOrder::None {
            kvs.sort_by(|a, b| {
                use range_request::SortTarget as T;
                let o = match target {
                    T::Key => a.key.cmp(&b.key),
                    T::Version => a.version.cmp(&b.version),
                    T::Create => a.create_revision.cmp(&b.create_revision),
                    T::Mod => a.mod_revision.cmp(&b.mod_revision),
                    T::Value => a.value.cmp(&b.value),
                };
                if order == range_request::SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        // The header carries the store's revision, not the one read at.
        Ok(RangeResponse {
            header: header(current),
            kvs,
            more,
            count,
        })
    }

    /// `Put` as its own transaction.
    pub fn put(&mut self, r: &PutRequest) -> Result<(PutResponse, Changes), V3Error> {
        let mut w = Writer {
            m: self,
            sub: 0,
            changes: Changes::default(),
        };
        let resp = w.put(r)?;
        Ok((resp, w.finish()))
    }

    /// `DeleteRange` as its own transaction.
    pub fn delete_range(&mut self, r: &DeleteRangeRequest) -> (DeleteRangeResponse, Changes) {
        let mut w = Writer {
            m: self,
            sub: 0,
            changes: Changes::default(),
        };
        let resp = w.delete(r);
        (resp, w.finish())
    }

    /// `Txn`: evaluate the compares, then run one branch as a single revision. The branch
    /// is checked first (leases, `ignore_value` targets) so a failing one changes nothing.
    pub fn txn(&mut self, r: &TxnRequest) -> Result<(TxnResponse, Changes), V3Error> {
        let succeeded = r.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &r.success } else { &r.failure };
        self.check_ops(ops, &mut Vec::new())?;
        let mut w = Writer {
            m: self,
            sub: 0,
            changes: Changes::default(),
        };
        let responses = run_ops(&mut w, ops)?;
        let changes = w.finish();
        Ok((
            TxnResponse {
                header: header(changes.revision),
                succeeded,
                responses,
            },
            changes,
        ))
    }

    /// Would `ops` (and the txns nested in them, on the branches their compares pick
    /// now) fail on a missing lease or key? `pending` tracks keys put earlier in the txn.
    fn check_ops(&self, ops: &[RequestOp], pending: &mut Vec<Bytes>) -> Result<(), V3Error> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    let exists = pending.contains(&p.key)
                        || self
                            .keys
                            .get(p.key.as_ref())
                            .is_some_and(|vs| visible(vs, self.revision).is_some());
                    if (p.ignore_value || p.ignore_lease) && !exists {
                        return Err(V3Error::KeyNotFound);
                    }
                    if p.lease != 0 && !p.ignore_lease && !self.leases.contains_key(&p.lease) {
                        return Err(V3Error::LeaseNotFound);
                    }
                    pending.push(p.key.clone());
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let ok = t.compare.iter().all(|c| self.compare(c));
                    self.check_ops(if ok { &t.success } else { &t.failure }, pending)?;
                }
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > self.revision {
                        return Err(V3Error::FutureRev);
                    }
                    if r.revision > 0 && r.revision < self.compact_revision {
                        return Err(V3Error::Compacted);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// One compare against the current state (etcd's `applyCompare`).
    pub fn compare(&self, c: &Compare) -> bool {
        let range = KeyRange::new(&c.key, &c.range_end);
        let kvs: Vec<KeyValue> = self
            .keys
            .range::<[u8], _>(range.bounds())
            .filter_map(|(k, vs)| visible(vs, self.revision).map(|v| to_kv(k, v)))
            .collect();
        if kvs.is_empty() {
            // A value compare on a missing key always fails; others compare zero values.
            if c.target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(c, kv))
    }

    /// `Compact`: forget versions no read at `rev` or later can see.
    pub fn compact(&mut self, rev: i64) -> Result<(), V3Error> {
        if rev > self.revision {
            return Err(V3Error::FutureRev);
        }
        if rev <= self.compact_revision {
            return Err(V3Error::Compacted);
        }
        self.keys.retain(|_, vs| {
            let idx = vs.partition_point(|v| v.main <= rev);
            // Keep the newest version at or below `rev` (a tombstone only if it is exactly
            // at `rev`, so a watch from `rev` still sees that delete).
            let keep_from = match vs[..idx].last() {
                Some(v) if v.value.is_some() || v.main == rev => idx - 1,
                _ => idx,
            };
            vs.drain(..keep_from);
            if vs.capacity() > 2 * vs.len() {
                vs.shrink_to_fit();
            }
            !vs.is_empty()
        });
        self.compact_revision = rev;
        Ok(())
    }

    /// All events with revision >= `from` on `range`, in revision order (for a watch that
    /// starts in the past).
    pub fn history(&self, range: &KeyRange, from: i64) -> Vec<Changes> {
        let mut events: Vec<(i64, i64, Event)> = Vec::new();
        for (k, vs) in self.keys.range::<[u8], _>(range.bounds()) {
            for (i, v) in vs.iter().enumerate() {
                if v.main < from {
                    continue;
                }
                let prev = vs[..i]
                    .last()
                    .filter(|p| p.value.is_some())
                    .map(|p| to_kv(k, p));
                let ev = match v.value {
                    Some(_) => Event {
                        r#type: EventType::Put as i32,
                        kv: Some(to_kv(k, v)),
                        prev_kv: prev,
                    },
                    None => Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: Bytes::copy_from_slice(k),
                            mod_revision: v.main,
                            ..Default::default()
                        }),
                        prev_kv: prev,
                    },
                };
                events.push((v.main, v.sub, ev));
            }
        }
        events.sort_by_key(|(main, sub, _)| (*main, *sub));
        let mut out: Vec<Changes> = Vec::new();
        for (main, _, ev) in events {
            match out.last_mut() {
                Some(c) if c.revision == main => c.events.push(ev),
                _ => out.push(Changes {
                    revision: main,
                    events: vec![ev],
                }),
            }
        }
        out
    }

    /// Grant a lease (the caller picked a non-zero id and a TTL within bounds).
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<(), V3Error> {
        if self.leases.contains_key(&id) {
            return Err(V3Error::LeaseExist);
        }
        self.leases.insert(
            id,
            Lease {
                id,
                ttl,
                keys: BTreeSet::new(),
                remaining_ms: None,
            },
        );
        Ok(())
    }

    /// Revoke a lease and delete its keys in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Changes, V3Error> {
        let lease = self.leases.remove(&id).ok_or(V3Error::LeaseNotFound)?;
        let mut w = Writer {
            m: self,
            sub: 0,
            changes: Changes::default(),
        };
        for key in &lease.keys {
            w.delete(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            });
        }
        Ok(w.finish())
    }

    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Record remaining TTLs so a restart resumes them (etcd's lease checkpoints).
    pub fn lease_checkpoint(&mut self, remaining: &[(i64, i64)]) {
        for (id, ms) in remaining {
            if let Some(l) = self.leases.get_mut(id) {
                l.remaining_ms = Some(*ms);
            }
        }
    }

    pub fn alarms(&self) -> impl Iterator<Item = &(u64, i32)> {
        self.alarms.iter()
    }

    pub fn set_alarm(&mut self, member: u64, alarm: i32, active: bool) {
        if active {
            self.alarms.insert((member, alarm));
        } else {
            self.alarms.remove(&(member, alarm));
        }
    }

    /// A CRC-32 over every live and historical version up to `rev` (0 = now) since the
    /// last compaction; equal states hash equal.
    pub fn hash_kv(&self, rev: i64) -> Result<u32, V3Error> {
        let rev = if rev <= 0 { self.revision } else { rev };
        if rev > self.revision {
            return Err(V3Error::FutureRev);
        }
        if rev < self.compact_revision {
            return Err(V3Error::Compacted);
        }
        let mut h = crc32fast::Hasher::new();
        for (k, vs) in &self.keys {
            for v in vs.iter().filter(|v| v.main <= rev) {
                h.update(k);
                h.update(&v.main.to_le_bytes());
                h.update(&v.sub.to_le_bytes());
                h.update(&v.version.to_le_bytes());
                h.update(&v.lease.to_le_bytes());
                match &v.value {
                    Some(val) => h.update(val),
                    None => h.update(b"\xfftombstone"),
                }
            }
        }
        Ok(h.finalize())
    }

    /// Approximate bytes held (keys, values, bookkeeping), reported as `dbSize`.
    pub fn size_bytes(&self) -> i64 {
        let mut n = 0usize;
        for (k, vs) in &self.keys {
            n += k.len() + 48;
            for v in vs {
                n += 56 + v.value.as_ref().map_or(0, |b| b.len());
            }
        }
        n as i64
    }
}

fn run_ops(w: &mut Writer<'_>, ops: &[RequestOp]) -> Result<Vec<ResponseOp>, V3Error> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let resp = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                let cur = w.read_rev();
                response_op::Response::ResponseRange(w.m.range_at(r, cur)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(w.put(p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(w.delete(d))
            }
            Some(request_op::Request::RequestTxn(t)) => {
                let succeeded = t.compare.iter().all(|c| w.m.compare(c));
                let branch = if succeeded { &t.success } else { &t.failure };
                let responses = run_ops(w, branch)?;
                response_op::Response::ResponseTxn(TxnResponse {
                    header: header(w.read_rev()),
                    succeeded,
                    responses,
                })
            }
            None => continue,
        };
        out.push(ResponseOp {
            response: Some(resp),
        });
    }
    // Headers of nested responses carry the revision the transaction ends at.
    let end = w.read_rev();
    for r in &mut out {
        set_header_rev(r, end);
    }
    Ok(out)
}

fn set_header_rev(r: &mut ResponseOp, rev: i64) {
    use response_op::Response as R;
    match &mut r.response {
        Some(R::ResponsePut(p)) => p.header = header(rev),
        Some(R::ResponseDeleteRange(d)) => d.header = header(rev),
        // etcd leaves a nested txn's own header empty.
        Some(R::ResponseTxn(t)) => t.header = Some(ResponseHeader::default()),
        Some(R::ResponseRange(_)) | None => {}
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::CompareResult as R;
    use compare::TargetUnion as U;
    let ord = match &c.target_union {
        Some(U::Value(v)) => kv.value.as_ref().cmp(v.as_ref()),
        Some(U::Version(v)) => kv.version.cmp(v),
        Some(U::CreateRevision(v)) => kv.create_revision.cmp(v),
        Some(U::ModRevision(v)) => kv.mod_revision.cmp(v),
        Some(U::Lease(v)) => kv.lease.cmp(v),
        None => {
            // A compare without a target value compares against the zero value.
            match compare::CompareTarget::try_from(c.target)
                .unwrap_or(compare::CompareTarget::Version)
            {
                compare::CompareTarget::Value => kv.value.as_ref().cmp(&[][..]),
                compare::CompareTarget::Version => kv.version.cmp(&0),
                compare::CompareTarget::Create => kv.create_revision.cmp(&0),
                compare::CompareTarget::Mod => kv.mod_revision.cmp(&0),
                compare::CompareTarget::Lease => kv.lease.cmp(&0),
            }
        }
    };
    match R::try_from(c.result).unwrap_or(R::Equal) {
        R::Equal => ord.is_eq(),
        R::Greater => ord.is_gt(),
        R::Less => ord.is_lt(),
        R::NotEqual => !ord.is_eq(),
    }
}

/// Keys a transaction writes, for etcd's "duplicate key" check: a key (or range) may be
/// written only once per branch path.
pub fn check_txn_duplicates(t: &TxnRequest) -> Result<(), V3Error> {
    fn walk(
        ops: &[RequestOp],
        puts: &mut Vec<Bytes>,
        dels: &mut Vec<KeyRange>,
    ) -> Result<(), V3Error> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
                        return Err(V3Error::DuplicateKey);
                    }
                    puts.push(p.key.clone());
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let r = KeyRange::new(&d.key, &d.range_end);
                    if puts.iter().any(|k| r.contains(k)) {
                        return Err(V3Error::DuplicateKey);
                    }
                    dels.push(r);
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let (mut p1, mut d1) = (puts.clone(), dels.clone());
                    walk(&t.success, &mut p1, &mut d1)?;
                    let (mut p2, mut d2) = (puts.clone(), dels.clone());
                    walk(&t.failure, &mut p2, &mut d2)?;
                    puts.extend(p1.into_iter().chain(p2));
                    dels.extend(d1.into_iter().chain(d2));
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(&t.success, &mut Vec::new(), &mut Vec::new())?;
    walk(&t.failure, &mut Vec::new(), &mut Vec::new())
}

/// Number of operations in a transaction, nested ones included (etcd limits it).
pub fn txn_ops(t: &TxnRequest) -> usize {
    t.success.len().max(t.failure.len())
}

/// Convenience for building a range request.
pub fn range_req(key: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(key),
        range_end: Bytes::copy_from_slice(end),
        ..Default::default()
    }
}
