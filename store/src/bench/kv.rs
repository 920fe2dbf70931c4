//! Closed-loop PUT/GET driver shared by the `put`, `get` and `load`
//! workloads: N workers, one connection and one outstanding request each,
//! pulling request numbers from a shared counter until `total` or the
//! deadline is reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use super::KeyOrder;
use super::client::{Conn, Endpoint};
use super::hist::Histogram;
use super::rng::Rng;

/// The request each worker repeats.
#[derive(Debug, Clone)]
pub enum Op {
    /// PUT with this form body.
    Put(Bytes),
    /// GET.
    Get,
}

/// The keys requests are spread over.
#[derive(Debug, Clone)]
pub struct KeySpace {
    /// Directory under `/v2/keys`.
    pub prefix: String,
    /// First key number.
    pub start: u64,
    /// Number of keys (>= 1).
    pub len: u64,
    /// How to pick the key for each request.
    pub order: KeyOrder,
}

impl KeySpace {
    /// Key number for request `ticket` (sequential) or drawn from `rng`.
    fn key(&self, ticket: u64, rng: &mut Rng) -> u64 {
        let len = self.len.max(1);
        let off = match self.order {
            KeyOrder::Sequential => ticket % len,
            KeyOrder::Random => rng.below(len),
        };
        self.start + off
    }

    fn path(&self, key: u64) -> String {
        format!("/v2/keys/{}/k{key:08}", self.prefix)
    }
}

/// A closed-loop run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What each request does.
    pub op: Op,
    /// Concurrent workers (connections).
    pub clients: usize,
    /// Stop after this many requests.
    pub total: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Keys to use.
    pub keys: KeySpace,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
}

impl Plan {
    /// Writes every key of `keys` exactly once, sequentially.
    pub fn load(clients: usize, keys: KeySpace, value: Bytes) -> Self {
        Self {
            op: Op::Put(value),
            clients,
            total: Some(keys.len),
            duration: None,
            keys: KeySpace {
                order: KeyOrder::Sequential,
                ..keys
            },
            progress: true,
        }
    }
}

/// What a run observed.
#[derive(Debug)]
pub struct Outcome {
    /// Successful (2xx) requests.
    pub ok: u64,
    /// Failed requests (non-2xx or transport errors).
    pub errors: u64,
    /// Latency of successful requests, microseconds.
    pub hist: Histogram,
    /// Wall time of the timed phase.
    pub elapsed: Duration,
    /// A few distinct error messages, for diagnosis.
    pub error_samples: Vec<String>,
}

impl Outcome {
    /// Short description of the errors seen.
    pub fn error_summary(&self) -> String {
        if self.error_samples.is_empty() {
            "no errors".to_owned()
        } else {
            self.error_samples.join("; ")
        }
    }
}

const MAX_ERROR_SAMPLES: usize = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Pause after a transport error so a dead server doesn't spin the loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Describes a failed response for error samples.
pub fn describe_status(status: hyper::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = text.char_indices().nth(160).map_or(text.len(), |(i, _)| i);
    format!("HTTP {status}: {}", &text[..cut])
}

struct Worker {
    ok: u64,
    errors: u64,
    hist: Histogram,
    error_samples: Vec<String>,
}

impl Worker {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&msg) {
            self.error_samples.push(msg);
        }
    }
}

/// Runs `plan` against `endpoint`. All connections are established before
/// the clock starts.
pub async fn run(endpoint: &Endpoint, plan: &Plan) -> anyhow::Result<Outcome> {
    let mut conns = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        let mut c = Conn::new(endpoint.clone());
        c.connect().await?;
        conns.push(c);
    }

    let limit = plan.total.unwrap_or(u64::MAX);
    let tickets = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let keys = Arc::new(plan.keys.clone());

    let progress = plan.progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(start + PROGRESS_EVERY),
                PROGRESS_EVERY,
            );
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                let of = if limit == u64::MAX {
                    String::new()
                } else {
                    format!("/{limit}")
                };
                eprintln!("  ... {n}{of} requests, {:.0}/s", n as f64 / secs);
            }
        })
    });

    let mut tasks = Vec::with_capacity(plan.clients);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let tickets = tickets.clone();
        let done = done.clone();
        let keys = keys.clone();
        let op = plan.op.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::with_seed(0x5eed ^ (i as u64).wrapping_mul(0x9e37_79b9));
            let mut w = Worker {
                ok: 0,
                errors: 0,
                hist: Histogram::new(),
                error_samples: Vec::new(),
            };
            loop {
                let ticket = tickets.fetch_add(1, Ordering::Relaxed);
                if ticket >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let path = keys.path(keys.key(ticket, &mut rng));
                let (method, body) = match &op {
                    Op::Put(v) => (Method::PUT, Some(v.clone())),
                    Op::Get => (Method::GET, None),
                };
                let t0 = Instant::now();
                let res = conn.request(method, &path, body).await;
                let lat = t0.elapsed();
                match res {
                    Ok(r) if r.status.is_success() => {
                        w.ok += 1;
                        w.hist.record_duration(lat);
                    }
                    Ok(r) => w.error(describe_status(r.status, &r.body)),
                    Err(e) => {
                        w.error(e.chain());
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            w
        }));
    }

    let mut out = Outcome {
        ok: 0,
        errors: 0,
        hist: Histogram::new(),
        elapsed: Duration::ZERO,
        error_samples: Vec::new(),
    };
    for t in tasks {
        let w = t.await?;
        out.ok += w.ok;
        out.errors += w.errors;
        out.hist.merge(&w.hist);
        for s in w.error_samples {
            if out.error_samples.len() < MAX_ERROR_SAMPLES && !out.error_samples.contains(&s) {
                out.error_samples.push(s);
            }
        }
    }
    out.elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_wrap_and_offset() {
        let ks = KeySpace {
            prefix: "p".into(),
            start: 100,
            len: 3,
            order: KeyOrder::Sequential,
        };
        let mut rng = Rng::with_seed(1);
        let got: Vec<u64> = (0..5).map(|t| ks.key(t, &mut rng)).collect();
        assert_eq!(got, [100, 101, 102, 100, 101]);
        assert_eq!(ks.path(7), "/v2/keys/p/k00000007");
    }
}
