//! The etcd v3 (gRPC) side of the load generator (`--api v3`), built on the
//! client stubs generated from the store's own protos
//! ([`crate::v3::pb::etcdserverpb`]).
//!
//! Like etcd's `benchmark` tool, `--conns` HTTP/2 connections (one tonic
//! [`Channel`] each) are shared round-robin by `--clients` closed-loop
//! clients, each with one request in flight; gRPC multiplexes the clients'
//! requests on the connections. Keys are `<prefix>/k%08d`, values
//! `--value-size` random alphanumeric bytes.
//!
//! * [`kv`]: put, linearizable range and compare-and-swap txn workers, and
//!   the bulk load, driven by [`closed_loop`](super::closed_loop).
//! * [`watch`]: watch fan-out over watch streams, with an exactly-once,
//!   in-order delivery check.
//! * [`lease`]: lease keep-alive throughput over keep-alive streams.

pub mod kv;
pub mod lease;
pub mod watch;

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tonic::transport::Channel;

use super::client::Endpoint;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a transport-level failure so a dead server doesn't spin the
/// loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Opens `n` HTTP/2 connections to `endpoint` (each [`Channel`] is exactly
/// one connection, dialled now).
pub async fn connect(endpoint: &Endpoint, n: usize) -> anyhow::Result<Vec<Channel>> {
    let url = format!("http://{}", endpoint.addr);
    let ep = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("gRPC endpoint {url}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(
            ep.connect()
                .await
                .with_context(|| format!("connect to {url}"))?,
        );
    }
    Ok(out)
}

/// The v3 key for key number `n`: `<prefix>/k%08d`.
pub fn key(prefix: &str, n: u64) -> Bytes {
    Bytes::from(format!("{prefix}/k{n:08}"))
}

/// The key right after every key starting with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and anything after it dropped; `\0` (whole keyspace) when
/// there is no such byte.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One line describing a failed call.
pub fn describe(status: &tonic::Status) -> String {
    let msg = status.message();
    let cut = msg.char_indices().nth(160).map_or(msg.len(), |(i, _)| i);
    format!("gRPC {:?}: {}", status.code(), &msg[..cut])
}

/// Describes `status` for an error sample, first backing off if the failure
/// looks like the connection rather than the request.
pub async fn failed(status: &tonic::Status) -> String {
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) {
        tokio::time::sleep(ERROR_BACKOFF).await;
    }
    describe(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefix_ends() {
        assert_eq!(key("b/put", 42), Bytes::from_static(b"b/put/k00000042"));
        assert_eq!(prefix_end(b"b/w/"), b"b/w0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }
}
