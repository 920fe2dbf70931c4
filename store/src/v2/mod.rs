//! The etcd v2 keyspace: a tree of directories and files with TTLs, the event history
//! and watchers. It is a deterministic state machine: every mutation takes the time it
//! was proposed at (`now`), so replaying the log after a restart rebuilds exactly the
//! same tree, indexes and history. Reads take the wall clock only to render `ttl`.
//!
//! Semantics, errors and JSON shapes follow etcd 3.4's `v2store` package, including its
//! quirks (a `set` resets `createdIndex`, a directory update keeps its `modifiedIndex`,
//! hidden `_` keys are left out of listings).

pub mod error;
pub mod event;
pub mod path;
mod store;
pub mod watch;

pub use error::V2Error;
pub use event::{Action, Event, NodeExtern};
pub use store::{Snapshot, SnapshotRef, Stats, Ttl, V2Store};
pub use watch::Watcher;
