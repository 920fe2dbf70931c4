//! v3 watchers: who wants which events. Each gRPC watch stream owns an output channel;
//! its watchers are registered here with their key range, filters and the first revision
//! they want. After every applied revision the engine calls [`WatchHub::notify`] under
//! the state lock, so a watcher registered under the same lock sees history first and
//! then every later revision exactly once, in order.

use super::mvcc::{Changes, KeyRange};
use super::pb::mvccpb::{Event, event::EventType};
use tokio::sync::mpsc;

/// What a watch stream receives from the hub.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Events of one revision for one watcher.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
    },
}

/// One registered watcher.
#[derive(Debug)]
pub struct WatcherSpec {
    pub stream: u64,
    pub watch_id: i64,
    pub range: KeyRange,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    /// First revision to deliver.
    pub start: i64,
}

#[derive(Debug)]
struct Slot {
    spec: WatcherSpec,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// All registered v3 watchers.
#[derive(Debug, Default)]
pub struct WatchHub {
    slots: Vec<Slot>,
    next_stream: u64,
}

impl WatchHub {
    /// A fresh stream id.
    pub fn new_stream(&mut self) -> u64 {
        self.next_stream += 1;
        self.next_stream
    }

    pub fn register(&mut self, spec: WatcherSpec, tx: mpsc::UnboundedSender<Delivery>) {
        self.slots.push(Slot { spec, tx });
    }

    pub fn cancel(&mut self, stream: u64, watch_id: i64) -> bool {
        let before = self.slots.len();
        self.slots
            .retain(|s| !(s.spec.stream == stream && s.spec.watch_id == watch_id));
        before != self.slots.len()
    }

    pub fn remove_stream(&mut self, stream: u64) {
        self.slots.retain(|s| s.spec.stream != stream);
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// Deliver one revision's changes to every interested watcher.
    pub fn notify(&mut self, changes: &Changes) {
        if changes.events.is_empty() {
            return;
        }
        self.slots.retain(|s| {
            if changes.revision < s.spec.start {
                return true;
            }
            match filter(&s.spec, &changes.events) {
                Some(events) => {
                    s.tx.send(Delivery::Events {
                        watch_id: s.spec.watch_id,
                        revision: changes.revision,
                        events,
                    })
                    .is_ok()
                }
                None => !s.tx.is_closed(),
            }
        });
    }
}

/// The events `spec` wants out of `events`, or `None` if none.
pub fn filter(spec: &WatcherSpec, events: &[Event]) -> Option<Vec<Event>> {
    let out: Vec<Event> = events
        .iter()
        .filter(|e| e.kv.as_ref().is_some_and(|kv| spec.range.contains(&kv.key)))
        .filter(|e| {
            let put = e.r#type == EventType::Put as i32;
            !(put && spec.no_put || !put && spec.no_delete)
        })
        .map(|e| {
            let mut e = e.clone();
            if !spec.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect();
    (!out.is_empty()).then_some(out)
}
