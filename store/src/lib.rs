//! # keel-store
//!
//! Keel's bundled etcd-compatible key-value store. It speaks etcd's flags and v2 keys
//! API so that `etcdctl`, `curl` scripts and existing clients work unchanged.
//!
//! Data flow: [`http`] parses a request; reads go straight to the state machine
//! ([`v2::V2Store`]) under a read lock; writes become a [`engine::command::Command`]
//! that the [`engine`] appends to the write-ahead log ([`wal`]), fsyncs (batched with
//! whatever else is queued), applies in log order, and only then answers. Snapshots of
//! the state bound the log and the restart time.
//!
//! Limitations of this release: a single member (no Raft yet: the engine's log and
//! state machine are laid out for it); no v3 gRPC API, TLS or auth yet.

pub mod bench;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod engine;
pub mod http;
pub mod json;
pub mod peer;
pub mod server;
pub mod tls;
pub mod v2;
pub mod v3;
pub mod wal;
