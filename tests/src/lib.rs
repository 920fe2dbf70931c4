//! Test helpers for Keel: a harness that runs etcd and keel-store side by
//! side on free loopback ports, a raw HTTP client, response normalisation and
//! an etcdctl runner. Used by the conformance suites in `tests/`.

pub mod cluster;
pub mod ctl;
pub mod dbus;
pub mod dns;
pub mod fleet;
pub mod http;
pub mod image;
pub mod linearizability;
pub mod norm;
pub mod pair;
pub mod pki;
pub mod server;
pub mod update_server;
pub mod v3;

pub use http::{Req, Resp};
pub use pair::{BodyMode, Cmp, Pair, PairWatch, Side};
pub use server::{Flavor, Server, keel_side_flavor};
