//! The etcd v3 API: the MVCC keyspace ([`mvcc`]), its state next to the v2 store
//! ([`state`]), watchers ([`watch`]), errors as etcd words them ([`error`]) and the
//! generated protocol types ([`pb`]).

pub mod error;
pub mod mvcc;
pub mod pb;
pub mod state;
pub mod watch;

pub use error::V3Error;
pub use state::{V3Applied, V3State, V3Write};
pub mod api;
pub mod gateway;
pub mod grpc;
