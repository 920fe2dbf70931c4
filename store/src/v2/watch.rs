//! Watchers and the event history (etcd `v2store/watcher_hub.go`, `event_history.go`).
//!
//! Every change is appended to a ring of the last [`HISTORY_EVENTS`] events over the whole
//! keyspace. A watch asks for the first event at or after `waitIndex` on a key (or under
//! it, if recursive): if it is in the ring it is answered at once; if `waitIndex` is older
//! than the ring, error 401; otherwise the watcher is parked on its key's path and the
//! next matching change is pushed into its channel. The rules for which watcher sees
//! which event (exact path, recursive, hidden `_` keys, deleting a parent directory, the
//! doubled delete event of a streaming watcher) are etcd's, quirks included.

use super::error::{V2Error, code};
use super::event::{Action, Event};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How many events the history keeps (etcd's `newWatchHub(1000)`).
pub const HISTORY_EVENTS: usize = 1000;
/// Events a watcher may have pending before it is dropped as too slow (etcd: 100).
pub const WATCHER_QUEUE_EVENTS: usize = 100;

/// The last [`HISTORY_EVENTS`] events, contiguous in index.
#[derive(Debug, Default)]
pub struct EventHistory {
    events: VecDeque<Arc<Event>>,
}

impl EventHistory {
    pub fn push(&mut self, e: Arc<Event>) {
        if self.events.len() == HISTORY_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Index of the oldest event kept (0 when empty).
    pub fn start_index(&self) -> u64 {
        self.events.front().map(|e| e.index()).unwrap_or(0)
    }

    pub fn last_index(&self) -> u64 {
        self.events.back().map(|e| e.index()).unwrap_or(0)
    }

    pub fn events(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }

    /// The first event at or after `index` that concerns `key`.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        index: u64,
    ) -> Result<Option<Arc<Event>>, V2Error> {
        let start = self.start_index();
        if index < start {
            return Err(V2Error::new(
                code::EVENT_INDEX_CLEARED,
                format!("the requested history has been cleared [{start}/{index}]"),
                0,
            ));
        }
        if index > self.last_index() {
            return Ok(None);
        }
        let prefix = if key.ends_with('/') {
            key.to_string()
        } else {
            format!("{key}/")
        };
        let offset = (index - start) as usize;
        for e in self.events.iter().skip(offset) {
            if e.refresh {
                continue;
            }
            let mut ok = e.key() == key;
            if recursive {
                ok = ok || e.key().starts_with(&prefix);
            }
            if matches!(e.action, Action::Delete | Action::Expire)
                && let Some(prev) = &e.prev_node
                && prev.dir
            {
                ok = ok || key.starts_with(prev.key.as_str());
            }
            if ok {
                return Ok(Some(e.clone()));
            }
        }
        Ok(None)
    }
}

#[derive(Debug)]
struct Slot {
    id: u64,
    recursive: bool,
    stream: bool,
    since_index: u64,
    tx: mpsc::Sender<Arc<Event>>,
}

/// A registered watch; events arrive on `events`. Dropping it does not unregister it:
/// call [`WatcherHub::remove`] (the HTTP layer does so when the client goes away).
#[derive(Debug)]
pub struct Watcher {
    pub id: u64,
    pub key: String,
    /// Store index when the watch began (the `X-Etcd-Index` of the response).
    pub start_index: u64,
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Whether it is parked in the hub (false when answered from history).
    pub registered: bool,
}

/// Parked watchers by the path they watch, and the event history.
#[derive(Debug, Default)]
pub struct WatcherHub {
    watchers: HashMap<String, Vec<Slot>>,
    count: usize,
    next_id: u64,
    pub history: EventHistory,
}

impl WatcherHub {
    /// Number of parked watchers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Start a watch on `key` from `since_index` (store index `store_index` now).
    pub fn watch(
        &mut self,
        key: &str,
        recursive: bool,
        stream: bool,
        since_index: u64,
        store_index: u64,
    ) -> Result<Watcher, V2Error> {
        let found = self
            .history
            .scan(key, recursive, since_index)
            .map_err(|mut e| {
                e.index = store_index;
                e
            })?;
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE_EVENTS);
        self.next_id += 1;
        let id = self.next_id;
        let mut watcher = Watcher {
            id,
            key: key.to_string(),
            start_index: store_index,
            events: rx,
            registered: false,
        };
        if let Some(e) = found {
            // Answered from history; like etcd the watcher is not parked afterwards.
            let _ = tx.try_send(e);
            return Ok(watcher);
        }
        self.watchers
            .entry(key.to_string())
            .or_default()
            .push(Slot {
                id,
                recursive,
                stream,
                since_index,
                tx,
            });
        self.count += 1;
        watcher.registered = true;
        Ok(watcher)
    }

    /// Unregister a watcher (no-op if it is gone already).
    pub fn remove(&mut self, key: &str, id: u64) {
        if let Some(list) = self.watchers.get_mut(key) {
            let before = list.len();
            list.retain(|s| s.id != id);
            self.count -= before - list.len();
            if list.is_empty() {
                self.watchers.remove(key);
            }
        }
    }

    /// Record an event in history without notifying anyone (TTL refreshes).
    pub fn add(&mut self, e: Arc<Event>) {
        self.history.push(e);
    }

    /// Record an event and notify the watchers of its key and of every parent path.
    pub fn notify(&mut self, e: Arc<Event>) {
        self.history.push(e.clone());
        let key = e.key().to_string();
        self.notify_watchers(&e, "/", false);
        let mut cur = String::new();
        for seg in key.split('/').filter(|s| !s.is_empty()) {
            cur.push('/');
            cur.push_str(seg);
            self.notify_watchers(&e, &cur, false);
        }
    }

    /// Notify the watchers parked exactly at `node_path`. `deleted` is set when the node
    /// at that path is being removed as part of the event (a parent delete or expiry).
    pub fn notify_watchers(&mut self, e: &Arc<Event>, node_path: &str, deleted: bool) {
        let Some(list) = self.watchers.get_mut(node_path) else {
            return;
        };
        let original_path = e.key() == node_path;
        let hidden = !original_path && is_hidden(node_path, e.key());
        let before = list.len();
        list.retain(|w| {
            if hidden {
                return true;
            }
            let interested =
                (w.recursive || original_path || deleted) && e.index() >= w.since_index;
            if !interested {
                return true;
            }
            // A full or closed channel drops the watcher (etcd closes it as too slow).
            let delivered = w.tx.try_send(e.clone()).is_ok();
            delivered && w.stream
        });
        self.count -= before - list.len();
        if list.is_empty() {
            self.watchers.remove(node_path);
        }
    }
}

/// Whether `key_path`, seen from a watch on `watch_path`, passes through a hidden
/// (`_`-prefixed) component.
fn is_hidden(watch_path: &str, key_path: &str) -> bool {
    if watch_path.len() > key_path.len() {
        return false;
    }
    let after = super::path::clean(&format!("/{}", &key_path[watch_path.len()..]));
    after.contains("/_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: Action, key: &str, index: u64) -> Arc<Event> {
        Arc::new(Event::new(action, key, index, index))
    }

    #[test]
    fn history_window_and_scan() {
        let mut h = EventHistory::default();
        for i in 1..=1100u64 {
            h.push(ev(Action::Set, &format!("/k{i}"), i));
        }
        assert_eq!(h.start_index(), 101);
        let err = h.scan("/k5", false, 5).unwrap_err();
        assert_eq!(err.error_code, 401);
        assert_eq!(err.cause, "the requested history has been cleared [101/5]");
        assert_eq!(h.scan("/k200", false, 150).unwrap().unwrap().index(), 200);
        assert!(h.scan("/k200", false, 201).unwrap().is_none());
        assert!(h.scan("/nope", false, 2000).unwrap().is_none());
    }

    #[test]
    fn hidden_keys_are_not_seen_recursively() {
        assert!(is_hidden("/dir", "/dir/_h"));
        assert!(is_hidden("/", "/a/_b/c"));
        assert!(!is_hidden("/dir", "/dir/a"));
    }

    #[tokio::test]
    async fn stream_and_one_shot_watchers() {
        let mut hub = WatcherHub::default();
        let mut once = hub.watch("/a", false, false, 1, 0).unwrap();
        let mut stream = hub.watch("/a", false, true, 1, 0).unwrap();
        let mut rec = hub.watch("/", true, true, 1, 0).unwrap();
        hub.notify(ev(Action::Set, "/a", 1));
        hub.notify(ev(Action::Set, "/a", 2));
        assert_eq!(once.events.recv().await.unwrap().index(), 1);
        assert!(
            once.events.recv().await.is_none(),
            "one-shot watcher is closed"
        );
        assert_eq!(stream.events.recv().await.unwrap().index(), 1);
        assert_eq!(stream.events.recv().await.unwrap().index(), 2);
        assert_eq!(rec.events.recv().await.unwrap().index(), 1);
        assert_eq!(hub.count(), 2);
    }
}
