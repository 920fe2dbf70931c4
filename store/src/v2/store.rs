//! The v2 tree and its operations (etcd `v2store/store.go`, `node.go`).

use super::error::{V2Error, code};
use super::event::{Action, Event, NodeExtern};
use super::path::{clean, components, join};
use super::watch::{Watcher, WatcherHub};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Expiration times before 2000-01-01 mean "permanent" (etcd's `minExpireTime`).
const MIN_EXPIRE_UNIX_NANOS: i64 = 946_684_800 * NANOS_PER_SEC;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Node {
    created_index: u64,
    modified_index: u64,
    expire_at: Option<i64>,
    kind: Kind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Kind {
    File(String),
    Dir(BTreeMap<String, Node>),
}

impl Node {
    fn dir(index: u64, expire_at: Option<i64>) -> Self {
        Node {
            created_index: index,
            modified_index: index,
            expire_at,
            kind: Kind::Dir(BTreeMap::new()),
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    fn value(&self) -> &str {
        match &self.kind {
            Kind::File(v) => v,
            Kind::Dir(_) => "",
        }
    }

    fn children(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    /// `expiration` and `ttl` as etcd renders them at time `now`.
    fn expiration_and_ttl(&self, now: i64) -> (Option<i64>, i64) {
        match self.expire_at {
            None => (None, 0),
            Some(at) => {
                let left = at - now;
                let mut ttl = left / NANOS_PER_SEC;
                if left % NANOS_PER_SEC > 0 {
                    ttl += 1;
                }
                (Some(at), ttl)
            }
        }
    }

    /// etcd's `node.Repr`: the node, its children when `recursive`, hidden ones left out.
    fn repr(&self, path: &str, recursive: bool, now: i64) -> NodeExtern {
        let (expiration, ttl) = self.expiration_and_ttl(now);
        let mut out = NodeExtern {
            key: path.to_string(),
            value: None,
            dir: self.is_dir(),
            expiration,
            ttl,
            nodes: Vec::new(),
            modified_index: self.modified_index,
            created_index: self.created_index,
        };
        match &self.kind {
            Kind::File(v) => out.value = Some(v.clone()),
            Kind::Dir(children) if recursive => out.nodes = list(path, children, true, now),
            Kind::Dir(_) => {}
        }
        out
    }
}

fn list(
    path: &str,
    children: &BTreeMap<String, Node>,
    recursive: bool,
    now: i64,
) -> Vec<NodeExtern> {
    children
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(name, child)| child.repr(&join(path, name), recursive, now))
        .collect()
}

/// Operation counters, as `/v2/stats/store` reports them.
#[derive(Debug, Default)]
pub struct Stats {
    pub gets_success: AtomicU64,
    pub gets_fail: AtomicU64,
    pub sets_success: AtomicU64,
    pub sets_fail: AtomicU64,
    pub delete_success: AtomicU64,
    pub delete_fail: AtomicU64,
    pub update_success: AtomicU64,
    pub update_fail: AtomicU64,
    pub create_success: AtomicU64,
    pub create_fail: AtomicU64,
    pub compare_and_swap_success: AtomicU64,
    pub compare_and_swap_fail: AtomicU64,
    pub compare_and_delete_success: AtomicU64,
    pub compare_and_delete_fail: AtomicU64,
    pub expire_count: AtomicU64,
}

fn bump(ok: &AtomicU64, fail: &AtomicU64, success: bool) {
    if success { ok } else { fail }.fetch_add(1, Ordering::Relaxed);
}

/// What a snapshot of the v2 keyspace holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    root: Node,
    current_index: u64,
    /// The event history as (refresh, JSON of the event).
    history: Vec<(bool, String)>,
}

/// Borrowed form of [`Snapshot`], for writing one without cloning the tree.
#[derive(Debug, Serialize)]
pub struct SnapshotRef<'a> {
    root: &'a Node,
    current_index: u64,
    history: Vec<(bool, String)>,
}

/// The v2 keyspace state machine.
#[derive(Debug)]
pub struct V2Store {
    root: Node,
    current_index: u64,
    /// (expiration, path) of every node with a TTL.
    ttl_keys: BTreeSet<(i64, String)>,
    pub hub: WatcherHub,
    pub stats: Stats,
}

impl Default for V2Store {
    fn default() -> Self {
        Self::new()
    }
}

/// How a write treats expiration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ttl {
    /// Absolute expiration (Unix ns); `None` = permanent.
    pub expire_at: Option<i64>,
    /// Only reset the TTL, keep the value, notify no watcher.
    pub refresh: bool,
}

impl V2Store {
    pub fn new() -> Self {
        V2Store {
            root: Node::dir(0, None),
            current_index: 0,
            ttl_keys: BTreeSet::new(),
            hub: WatcherHub::default(),
            stats: Stats::default(),
        }
    }

    /// The store index: the index of the last change.
    pub fn index(&self) -> u64 {
        self.current_index
    }

    /// Earliest pending expiration, if any key has a TTL.
    pub fn next_expiry(&self) -> Option<i64> {
        self.ttl_keys.first().map(|(at, _)| *at)
    }

    /// Number of nodes with a TTL.
    pub fn ttl_key_count(&self) -> usize {
        self.ttl_keys.len()
    }

    fn node(&self, path: &str) -> Result<&Node, V2Error> {
        let mut cur = &self.root;
        let mut cur_path = String::from("/");
        for name in components(path) {
            let Some(children) = cur.children() else {
                return Err(V2Error::new(code::NOT_DIR, cur_path, self.current_index));
            };
            let child_path = join(&cur_path, name);
            match children.get(name) {
                Some(child) => cur = child,
                None => {
                    return Err(V2Error::new(
                        code::KEY_NOT_FOUND,
                        child_path,
                        self.current_index,
                    ));
                }
            }
            cur_path = child_path;
        }
        Ok(cur)
    }

    fn node_mut(&mut self, path: &str) -> Option<&mut Node> {
        let mut cur = &mut self.root;
        for name in components(path) {
            match &mut cur.kind {
                Kind::Dir(children) => cur = children.get_mut(name)?,
                Kind::File(_) => return None,
            }
        }
        Some(cur)
    }

    /// Read a key (`GET`), rendering TTLs at `now`.
    pub fn get(&self, key: &str, recursive: bool, now: i64) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.node(&path).map(|n| {
            let mut e = Event::new(Action::Get, &path, n.modified_index, n.created_index);
            let (expiration, ttl) = n.expiration_and_ttl(now);
            let node = e.node_mut();
            match &n.kind {
                Kind::File(v) => node.value = Some(v.clone()),
                Kind::Dir(children) => {
                    node.dir = true;
                    node.nodes = list(&path, children, recursive, now);
                }
            }
            node.expiration = expiration;
            node.ttl = ttl;
            if path == "/" {
                // etcd's root has no key and no indexes.
                node.key.clear();
            }
            e.etcd_index = self.current_index;
            e
        });
        bump(
            &self.stats.gets_success,
            &self.stats.gets_fail,
            result.is_ok(),
        );
        result
    }

    /// Start a watch (`GET ?wait=true`); `since` 0 means "from the next change".
    pub fn watch(
        &mut self,
        key: &str,
        recursive: bool,
        stream: bool,
        since: u64,
    ) -> Result<Watcher, V2Error> {
        let since = if since == 0 {
            self.current_index + 1
        } else {
            since
        };
        self.hub
            .watch(&clean(key), recursive, stream, since, self.current_index)
    }

    fn root_read_only(&self, path: &str) -> Result<(), V2Error> {
        if path == "/" {
            Err(V2Error::new(code::ROOT_RONLY, "/", self.current_index))
        } else {
            Ok(())
        }
    }

    /// `PUT` without conditions: create or replace a file, or create a directory.
    pub fn set(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.set_inner(&path, dir, value, ttl, now);
        bump(
            &self.stats.sets_success,
            &self.stats.sets_fail,
            result.is_ok(),
        );
        result
    }

    fn set_inner(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        let prev = match self.node(path) {
            Ok(n) => Some(n),
            Err(e) if e.error_code == code::KEY_NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        let mut value = value.to_string();
        if ttl.refresh {
            match prev {
                Some(n) => value = n.value().to_string(),
                None => {
                    return Err(self.node(path).err().unwrap_or_else(|| {
                        V2Error::new(code::KEY_NOT_FOUND, path, self.current_index)
                    }));
                }
            }
        }
        let prev_node = prev.map(|n| n.repr(path, false, now));
        let mut e =
            self.internal_create(path, dir, &value, true, ttl.expire_at, Action::Set, now)?;
        e.etcd_index = self.current_index;
        e.prev_node = prev_node;
        self.publish(&e, ttl.refresh);
        Ok(e)
    }

    /// `PUT ?prevExist=false` or `POST` (with `unique`, an in-order key under `key`).
    pub fn create(
        &mut self,
        key: &str,
        dir: bool,
        value: &str,
        unique: bool,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        let mut path = key.to_string();
        if unique {
            path = format!("{path}/{:020}", self.current_index + 1);
        }
        let path = clean(&path);
        let result =
            self.internal_create(&path, dir, value, false, ttl.expire_at, Action::Create, now);
        bump(
            &self.stats.create_success,
            &self.stats.create_fail,
            result.is_ok(),
        );
        let mut e = result?;
        e.etcd_index = self.current_index;
        self.publish(&e, false);
        Ok(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        replace: bool,
        expire_at: Option<i64>,
        action: Action,
        now: i64,
    ) -> Result<Event, V2Error> {
        self.root_read_only(path)?;
        let expire_at = expire_at.filter(|at| *at >= MIN_EXPIRE_UNIX_NANOS);
        let next = self.current_index + 1;
        let current = self.current_index;
        let (parent_path, name) = match path.rfind('/') {
            Some(i) => (&path[..i.max(1)], &path[i + 1..]),
            None => ("/", path),
        };

        // Walk to the parent, creating missing directories (etcd's `checkDir`).
        let mut cur = &mut self.root;
        let mut cur_path = String::from("/");
        for seg in components(parent_path) {
            let Kind::Dir(children) = &mut cur.kind else {
                unreachable!("walk only descends into directories");
            };
            let child = children
                .entry(seg.to_string())
                .or_insert_with(|| Node::dir(next, None));
            cur_path = join(&cur_path, seg);
            if !child.is_dir() {
                return Err(V2Error::new(code::NOT_DIR, cur_path, current));
            }
            cur = child;
        }
        let Kind::Dir(children) = &mut cur.kind else {
            unreachable!("walk only descends into directories");
        };

        let mut e = Event::new(action, path, next, next);
        let mut removed_expiry = None;
        if let Some(existing) = children.get(name) {
            if !replace {
                return Err(V2Error::new(code::NODE_EXIST, path, current));
            }
            if existing.is_dir() {
                return Err(V2Error::new(code::NOT_FILE, path, current));
            }
            removed_expiry = existing.expire_at;
        }
        let node = if dir {
            e.node_mut().dir = true;
            Node::dir(next, expire_at)
        } else {
            e.node_mut().value = Some(value.to_string());
            Node {
                created_index: next,
                modified_index: next,
                expire_at,
                kind: Kind::File(value.to_string()),
            }
        };
        let (expiration, ttl) = node.expiration_and_ttl(now);
        children.insert(name.to_string(), node);
        if let Some(at) = removed_expiry {
            self.ttl_keys.remove(&(at, path.to_string()));
        }
        if let Some(at) = expire_at {
            self.ttl_keys.insert((at, path.to_string()));
            let n = e.node_mut();
            n.expiration = expiration;
            n.ttl = ttl;
        }
        self.current_index = next;
        Ok(e)
    }

    /// `PUT ?prevExist=true` without compare: change the value and/or TTL of a node.
    pub fn update(&mut self, key: &str, value: &str, ttl: Ttl, now: i64) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.update_inner(&path, value, ttl, now);
        bump(
            &self.stats.update_success,
            &self.stats.update_fail,
            result.is_ok(),
        );
        result
    }

    fn update_inner(
        &mut self,
        path: &str,
        value: &str,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        self.root_read_only(path)?;
        let current = self.current_index;
        let next = current + 1;
        let n = self.node(path)?;
        if n.is_dir() && !value.is_empty() {
            return Err(V2Error::new(code::NOT_FILE, path, current));
        }
        let value = if ttl.refresh {
            n.value().to_string()
        } else {
            value.to_string()
        };
        let mut e = Event::new(Action::Update, path, next, n.created_index);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(path, false, now));
        let is_dir = n.is_dir();
        if is_dir {
            e.node_mut().dir = true;
        } else {
            e.node_mut().value = Some(value.clone());
        }
        self.write_and_retime(path, (!is_dir).then_some(value), next, ttl.expire_at);
        let (expiration, t) = self.node(path)?.expiration_and_ttl(now);
        e.node_mut().expiration = expiration;
        e.node_mut().ttl = t;
        self.current_index = next;
        self.publish(&e, ttl.refresh);
        Ok(e)
    }

    /// Write a file's value (directories keep value and modifiedIndex, as in etcd) and
    /// move the node's expiration, keeping the TTL index in step.
    fn write_and_retime(
        &mut self,
        path: &str,
        value: Option<String>,
        index: u64,
        expire_at: Option<i64>,
    ) {
        let expire_at = expire_at.filter(|at| *at >= MIN_EXPIRE_UNIX_NANOS);
        let Some(n) = self.node_mut(path) else { return };
        if let (Some(v), Kind::File(old)) = (value, &mut n.kind) {
            *old = v;
            n.modified_index = index;
        }
        let old = std::mem::replace(&mut n.expire_at, expire_at);
        if let Some(at) = old {
            self.ttl_keys.remove(&(at, path.to_string()));
        }
        if let Some(at) = expire_at {
            self.ttl_keys.insert((at, path.to_string()));
        }
    }

    fn compare(n: &Node, prev_value: &str, prev_index: u64) -> Result<(), String> {
        let index_match = prev_index == 0 || n.modified_index == prev_index;
        let value_match = prev_value.is_empty() || n.value() == prev_value;
        match (value_match, index_match) {
            (true, true) => Ok(()),
            (false, true) => Err(format!("[{prev_value} != {}]", n.value())),
            (true, false) => Err(format!("[{prev_index} != {}]", n.modified_index)),
            (false, false) => Err(format!(
                "[{prev_value} != {}] [{prev_index} != {}]",
                n.value(),
                n.modified_index
            )),
        }
    }

    /// `PUT ?prevValue=…&prevIndex=…`: compare-and-swap on a file.
    #[allow(clippy::too_many_arguments)]
    pub fn compare_and_swap(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.cas_inner(&path, prev_value, prev_index, value, ttl, now);
        bump(
            &self.stats.compare_and_swap_success,
            &self.stats.compare_and_swap_fail,
            result.is_ok(),
        );
        result
    }

    fn cas_inner(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        value: &str,
        ttl: Ttl,
        now: i64,
    ) -> Result<Event, V2Error> {
        self.root_read_only(path)?;
        let current = self.current_index;
        let n = self.node(path)?;
        if n.is_dir() {
            return Err(V2Error::new(code::NOT_FILE, path, current));
        }
        Self::compare(n, prev_value, prev_index)
            .map_err(|cause| V2Error::new(code::TEST_FAILED, cause, current))?;
        let value = if ttl.refresh {
            n.value().to_string()
        } else {
            value.to_string()
        };
        let next = current + 1;
        let mut e = Event::new(Action::CompareAndSwap, path, next, n.created_index);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(path, false, now));
        self.write_and_retime(path, Some(value.clone()), next, ttl.expire_at);
        let (expiration, t) = self.node(path)?.expiration_and_ttl(now);
        let node = e.node_mut();
        node.value = Some(value);
        node.expiration = expiration;
        node.ttl = t;
        self.current_index = next;
        self.publish(&e, ttl.refresh);
        Ok(e)
    }

    /// `DELETE`: remove a file, or a directory with `dir` (empty) or `recursive`.
    pub fn delete(
        &mut self,
        key: &str,
        dir: bool,
        recursive: bool,
        now: i64,
    ) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.delete_inner(&path, dir || recursive, recursive, now);
        bump(
            &self.stats.delete_success,
            &self.stats.delete_fail,
            result.is_ok(),
        );
        result
    }

    fn delete_inner(
        &mut self,
        path: &str,
        dir: bool,
        recursive: bool,
        now: i64,
    ) -> Result<Event, V2Error> {
        self.root_read_only(path)?;
        let current = self.current_index;
        let next = current + 1;
        let n = self.node(path)?;
        if n.is_dir() {
            if !dir {
                return Err(V2Error::new(code::NOT_FILE, path, current));
            }
            if !recursive && n.children().is_some_and(|c| !c.is_empty()) {
                return Err(V2Error::new(code::DIR_NOT_EMPTY, path, current));
            }
        }
        let mut e = Event::new(Action::Delete, path, next, n.created_index);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(path, false, now));
        if n.is_dir() {
            e.node_mut().dir = true;
        }
        self.current_index = next;
        self.remove_subtree(path, Arc::new(e.clone()));
        Ok(e)
    }

    /// `DELETE ?prevValue=…&prevIndex=…`: compare-and-delete on a file.
    pub fn compare_and_delete(
        &mut self,
        key: &str,
        prev_value: &str,
        prev_index: u64,
        now: i64,
    ) -> Result<Event, V2Error> {
        let path = clean(key);
        let result = self.cad_inner(&path, prev_value, prev_index, now);
        bump(
            &self.stats.compare_and_delete_success,
            &self.stats.compare_and_delete_fail,
            result.is_ok(),
        );
        result
    }

    fn cad_inner(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        now: i64,
    ) -> Result<Event, V2Error> {
        // etcd checks no read-only root here: the root fails as a directory, with the
        // cause left empty (its internal path is the key prefix etcd trims).
        let current = self.current_index;
        let n = self.node(path)?;
        if n.is_dir() {
            let cause = if path == "/" { "" } else { path };
            return Err(V2Error::new(code::NOT_FILE, cause, current));
        }
        Self::compare(n, prev_value, prev_index)
            .map_err(|cause| V2Error::new(code::TEST_FAILED, cause, current))?;
        let next = current + 1;
        let mut e = Event::new(Action::CompareAndDelete, path, next, n.created_index);
        e.etcd_index = next;
        e.prev_node = Some(n.repr(path, false, now));
        self.current_index = next;
        self.remove_subtree(path, Arc::new(e.clone()));
        Ok(e)
    }

    /// Expire every node whose expiration is at or before `cutoff`, one `expire` event
    /// each, oldest first.
    pub fn delete_expired(&mut self, cutoff: i64) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some((at, path)) = self.ttl_keys.first().cloned() {
            if at > cutoff {
                break;
            }
            let Ok(n) = self.node(&path) else {
                // Stale entry (cannot happen while the index is kept in step).
                self.ttl_keys.remove(&(at, path));
                continue;
            };
            let next = self.current_index + 1;
            let mut e = Event::new(Action::Expire, &path, next, n.created_index);
            e.etcd_index = next;
            e.prev_node = Some(n.repr(&path, false, cutoff));
            if n.is_dir() {
                e.node_mut().dir = true;
            }
            self.current_index = next;
            self.stats.expire_count.fetch_add(1, Ordering::Relaxed);
            self.remove_subtree(&path, Arc::new(e.clone()));
            out.push(e);
        }
        out
    }

    /// Detach the node at `path` with its subtree, drop their TTLs, notify watchers of
    /// each removed path (children first), then publish the event.
    fn remove_subtree(&mut self, path: &str, e: Arc<Event>) {
        let (parent_path, name) = match path.rfind('/') {
            Some(i) => (&path[..i.max(1)], &path[i + 1..]),
            None => ("/", path),
        };
        let removed = match self.node_mut(parent_path).map(|p| &mut p.kind) {
            Some(Kind::Dir(children)) => children.remove(name),
            _ => None,
        };
        if let Some(node) = removed {
            let mut paths = Vec::new();
            collect_removed(&node, path, &mut paths);
            for (p, expire) in paths {
                if let Some(at) = expire {
                    self.ttl_keys.remove(&(at, p.clone()));
                }
                self.hub.notify_watchers(&e, &p, true);
            }
        }
        self.hub.notify(e);
    }

    fn publish(&mut self, e: &Event, refresh: bool) {
        if refresh {
            let mut r = e.clone();
            r.refresh = true;
            self.hub.add(Arc::new(r));
        } else {
            self.hub.notify(Arc::new(e.clone()));
        }
    }

    /// A serializable image of the keyspace and its history, borrowing the tree (it
    /// serializes to the same bytes as an owned [`Snapshot`]).
    pub fn snapshot(&self) -> SnapshotRef<'_> {
        SnapshotRef {
            root: &self.root,
            current_index: self.current_index,
            history: self
                .hub
                .history
                .events()
                .map(|e| {
                    (
                        e.refresh,
                        String::from_utf8_lossy(&crate::json::to_vec(e.as_ref())).into_owned(),
                    )
                })
                .collect(),
        }
    }

    /// Rebuild a store from a snapshot (watchers are not part of it).
    pub fn restore(snap: Snapshot) -> Result<Self, serde_json::Error> {
        let mut store = V2Store::new();
        store.root = snap.root;
        store.current_index = snap.current_index;
        let mut ttl = Vec::new();
        collect_ttl(&store.root, "/", &mut ttl);
        store.ttl_keys = ttl.into_iter().collect();
        for (refresh, json) in snap.history {
            let mut e: Event = serde_json::from_str(&json)?;
            e.refresh = refresh;
            e.etcd_index = e.index();
            store.hub.history.push(Arc::new(e));
        }
        Ok(store)
    }

    /// Number of files and directories (root excluded).
    pub fn node_count(&self) -> usize {
        fn count(n: &Node) -> usize {
            n.children()
                .map_or(0, |c| c.values().map(|c| 1 + count(c)).sum())
        }
        count(&self.root)
    }
}

fn collect_removed(n: &Node, path: &str, out: &mut Vec<(String, Option<i64>)>) {
    if let Some(children) = n.children() {
        for (name, child) in children {
            collect_removed(child, &join(path, name), out);
        }
    }
    out.push((path.to_string(), n.expire_at));
}

fn collect_ttl(n: &Node, path: &str, out: &mut Vec<(i64, String)>) {
    if let Some(at) = n.expire_at {
        out.push((at, path.to_string()));
    }
    if let Some(children) = n.children() {
        for (name, child) in children {
            collect_ttl(child, &join(path, name), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000 * NANOS_PER_SEC;

    fn json(e: &Event) -> String {
        String::from_utf8(crate::json::to_vec(e)).unwrap()
    }

    #[test]
    fn set_resets_created_index_and_update_keeps_it() {
        let mut s = V2Store::new();
        s.set("/a", false, "1", Ttl::default(), NOW).unwrap();
        let e = s.set("/a", false, "2", Ttl::default(), NOW).unwrap();
        assert_eq!((e.index(), e.node.as_ref().unwrap().created_index), (2, 2));
        let e = s.update("/a", "3", Ttl::default(), NOW).unwrap();
        assert_eq!((e.index(), e.node.as_ref().unwrap().created_index), (3, 2));
    }

    #[test]
    fn directory_update_keeps_modified_index() {
        let mut s = V2Store::new();
        let ttl = Ttl {
            expire_at: Some(NOW + 30 * NANOS_PER_SEC),
            refresh: false,
        };
        s.set("/d", true, "", ttl, NOW).unwrap();
        let e = s
            .update(
                "/d",
                "",
                Ttl {
                    expire_at: Some(NOW + 60 * NANOS_PER_SEC),
                    refresh: false,
                },
                NOW,
            )
            .unwrap();
        assert_eq!(e.index(), 2);
        assert_eq!(e.node.as_ref().unwrap().ttl, 60);
        let listed = s.get("/", false, NOW).unwrap();
        assert_eq!(listed.node.unwrap().nodes[0].modified_index, 1);
    }

    #[test]
    fn errors_name_the_right_path() {
        let mut s = V2Store::new();
        s.set("/f", false, "x", Ttl::default(), NOW).unwrap();
        let e = s.get("/missing/deep", false, NOW).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (100, "/missing"));
        let e = s
            .set("/f/child", false, "x", Ttl::default(), NOW)
            .unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str(), e.index), (104, "/f", 1));
        let e = s.delete("/", true, true, NOW).unwrap_err();
        assert_eq!((e.error_code, e.cause.as_str()), (107, "/"));
        let e = s
            .compare_and_swap("/f", "y", 7, "z", Ttl::default(), NOW)
            .unwrap_err();
        assert_eq!(e.cause, "[y != x] [7 != 1]");
    }

    #[test]
    fn expiry_removes_subtree_and_emits_expire() {
        let mut s = V2Store::new();
        let ttl = Ttl {
            expire_at: Some(NOW + NANOS_PER_SEC),
            refresh: false,
        };
        s.set("/t", true, "", ttl, NOW).unwrap();
        s.set(
            "/t/k",
            false,
            "v",
            Ttl {
                expire_at: Some(NOW + 5 * NANOS_PER_SEC),
                refresh: false,
            },
            NOW,
        )
        .unwrap();
        assert!(s.delete_expired(NOW).is_empty());
        let events = s.delete_expired(NOW + NANOS_PER_SEC);
        assert_eq!(events.len(), 1);
        assert_eq!(
            json(&events[0]),
            r#"{"action":"expire","node":{"key":"/t","dir":true,"modifiedIndex":3,"createdIndex":1},"prevNode":{"key":"/t","dir":true,"expiration":"2027-01-15T08:00:01Z","modifiedIndex":1,"createdIndex":1}}"#
        );
        assert_eq!(s.ttl_key_count(), 0, "the child's TTL went with it");
        assert!(s.delete_expired(NOW + 10 * NANOS_PER_SEC).is_empty());
    }

    #[tokio::test]
    async fn parent_delete_reaches_child_watchers_and_stream_sees_delete_twice() {
        let mut s = V2Store::new();
        s.set("/w/sub/k", false, "x", Ttl::default(), NOW).unwrap();
        s.set("/s", false, "1", Ttl::default(), NOW).unwrap();
        let mut child = s.watch("/w/sub/k", false, false, 0).unwrap();
        let mut stream = s.watch("/s", false, true, 0).unwrap();
        s.delete("/w", false, true, NOW).unwrap();
        s.delete("/s", false, false, NOW).unwrap();
        let e = child.events.recv().await.unwrap();
        assert_eq!((e.action, e.key()), (Action::Delete, "/w"));
        assert_eq!(stream.events.recv().await.unwrap().index(), 4);
        assert_eq!(stream.events.recv().await.unwrap().index(), 4);
    }

    #[test]
    fn hidden_keys_are_left_out_of_listings() {
        let mut s = V2Store::new();
        s.set("/d/_h", false, "h", Ttl::default(), NOW).unwrap();
        s.set("/d/v", false, "v", Ttl::default(), NOW).unwrap();
        let listing = s.get("/d", true, NOW).unwrap();
        let keys: Vec<_> = listing
            .node
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.key)
            .collect();
        assert_eq!(keys, ["/d/v"]);
        assert_eq!(
            s.get("/d/_h", false, NOW)
                .unwrap()
                .node
                .unwrap()
                .value
                .as_deref(),
            Some("h")
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, bool),
        Create(u8),
        Delete(u8, bool),
        Cas(u8, u8),
        Post(u8),
        Expire,
    }

    fn key(k: u8) -> String {
        ["/a", "/b", "/a/x", "/a/y/z", "/c/_h", "/b/q"][usize::from(k) % 6].to_string()
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<bool>()).prop_map(|(k, d)| Op::Set(k, d)),
            any::<u8>().prop_map(Op::Create),
            (any::<u8>(), any::<bool>()).prop_map(|(k, r)| Op::Delete(k, r)),
            (any::<u8>(), any::<u8>()).prop_map(|(k, i)| Op::Cas(k, i)),
            any::<u8>().prop_map(Op::Post),
            Just(Op::Expire),
        ]
    }

    proptest! {
        /// Any history restores from a snapshot to the same keyspace, index and history,
        /// and the index grows by exactly one per successful change.
        #[test]
        fn snapshot_restore_is_exact(ops in proptest::collection::vec(op(), 0..60)) {
            let mut s = V2Store::new();
            for (i, op) in ops.iter().enumerate() {
                let now = NOW + i as i64 * NANOS_PER_SEC;
                let ttl = Ttl { expire_at: Some(now + 3 * NANOS_PER_SEC), refresh: false };
                let before = s.index();
                let changed = match op {
                    Op::Set(k, d) => s.set(&key(*k), *d, "v", if *d { ttl } else { Ttl::default() }, now).is_ok(),
                    Op::Create(k) => s.create(&key(*k), false, "c", false, ttl, now).is_ok(),
                    Op::Delete(k, r) => s.delete(&key(*k), *r, *r, now).is_ok(),
                    Op::Cas(k, i) => s.compare_and_swap(&key(*k), "", u64::from(*i % 8), "s", Ttl::default(), now).is_ok(),
                    Op::Post(k) => s.create(&key(*k), false, "p", true, Ttl::default(), now).is_ok(),
                    Op::Expire => { let n = s.delete_expired(now).len() as u64; prop_assert_eq!(s.index(), before + n); continue; }
                };
                prop_assert_eq!(s.index(), before + u64::from(changed));
            }
            let bytes = postcard::to_allocvec(&s.snapshot()).unwrap();
            let restored = V2Store::restore(postcard::from_bytes(&bytes).unwrap()).unwrap();
            prop_assert_eq!(restored.index(), s.index());
            prop_assert_eq!(json(&restored.get("/", true, NOW).unwrap()), json(&s.get("/", true, NOW).unwrap()));
            prop_assert_eq!(restored.ttl_key_count(), s.ttl_key_count());
            let a: Vec<String> = s.hub.history.events().map(|e| json(e)).collect();
            let b: Vec<String> = restored.hub.history.events().map(|e| json(e)).collect();
            prop_assert_eq!(a, b);
        }
    }
}
