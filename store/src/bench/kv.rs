//! v2 PUT/GET workers for the `put`, `get` and `load` workloads: each worker
//! owns one keep-alive HTTP/1.1 connection and is driven by
//! [`closed_loop`](super::closed_loop).

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use super::client::{Conn, Endpoint};
use super::closed_loop::{self, Bounds, KeySpace, Outcome, Worker};
use super::rng::Rng;

/// The request each worker repeats.
#[derive(Debug, Clone)]
pub enum Op {
    /// PUT with this form body.
    Put(Bytes),
    /// GET.
    Get,
}

/// A closed-loop run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What each request does.
    pub op: Op,
    /// Concurrent workers (connections).
    pub clients: usize,
    /// Keys to use (`prefix` is a directory under `/v2/keys`).
    pub keys: KeySpace,
    /// How long to run.
    pub bounds: Bounds,
}

impl Plan {
    /// Writes every key of `keys` exactly once, sequentially.
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

/// Pause after a transport error so a dead server doesn't spin the loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Describes a failed response for error samples.
pub fn describe_status(status: hyper::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = text.char_indices().nth(160).map_or(text.len(), |(i, _)| i);
    format!("HTTP {status}: {}", &text[..cut])
}

fn path(prefix: &str, key: u64) -> String {
    format!("/v2/keys/{prefix}/k{key:08}")
}

struct V2Worker {
    conn: Conn,
    keys: KeySpace,
    op: Op,
}

impl Worker for V2Worker {
    async fn call(&mut self, ticket: u64, rng: &mut Rng) -> Result<(), String> {
        let path = path(&self.keys.prefix, self.keys.key(ticket, rng));
        let (method, body) = match &self.op {
            Op::Put(v) => (Method::PUT, Some(v.clone())),
            Op::Get => (Method::GET, None),
        };
        match self.conn.request(method, &path, body).await {
            Ok(r) if r.status.is_success() => Ok(()),
            Ok(r) => Err(describe_status(r.status, &r.body)),
            Err(e) => {
                tokio::time::sleep(ERROR_BACKOFF).await;
                Err(e.chain())
            }
        }
    }
}

/// Runs `plan` against `endpoint`. All connections are established before
/// the clock starts.
pub async fn run(endpoint: &Endpoint, plan: &Plan) -> anyhow::Result<Outcome> {
    let mut workers = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        let mut conn = Conn::new(endpoint.clone());
        conn.connect().await?;
        workers.push(V2Worker {
            conn,
            keys: plan.keys.clone(),
            op: plan.op.clone(),
        });
    }
    closed_loop::run(workers, plan.bounds).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        assert_eq!(path("p", 7), "/v2/keys/p/k00000007");
    }
}
