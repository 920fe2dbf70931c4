//! The closed-loop driver shared by every request/response workload (v2
//! put/get/load, v3 put/range/txn/load/keep-alive): N workers, each with
//! exactly one request in flight, pulling request numbers ("tickets") from a
//! shared counter until `total` or the deadline is reached. Workers are built
//! (and connected) by the caller, so the clock starts only once every
//! connection is up.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::KeyOrder;
use super::hist::Histogram;
use super::rng::Rng;

/// One simulated client.
pub trait Worker: Send + 'static {
    /// Performs request number `ticket` (drawing any randomness from `rng`).
    /// `Err` carries a one-line description for error samples; a worker that
    /// hit a transport error should back off before returning it.
    fn call(
        &mut self,
        ticket: u64,
        rng: &mut Rng,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The keys requests are spread over.
#[derive(Debug, Clone)]
pub struct KeySpace {
    /// Path prefix all keys live under.
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
    pub fn key(&self, ticket: u64, rng: &mut Rng) -> u64 {
        let len = self.len.max(1);
        let off = match self.order {
            KeyOrder::Sequential => ticket % len,
            KeyOrder::Random => rng.below(len),
        };
        self.start + off
    }

    /// The same key space, walked sequentially (for loads).
    pub fn sequential(self) -> Self {
        Self {
            order: KeyOrder::Sequential,
            ..self
        }
    }
}

/// How long a closed-loop run lasts.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Stop after this many requests.
    pub total: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
}

/// What a run observed.
#[derive(Debug)]
pub struct Outcome {
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
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

/// At most this many distinct error messages are kept.
pub const MAX_ERROR_SAMPLES: usize = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Adds `msg` to `samples` unless it is there already or the list is full.
pub fn add_sample(samples: &mut Vec<String>, msg: String) {
    if samples.len() < MAX_ERROR_SAMPLES && !samples.contains(&msg) {
        samples.push(msg);
    }
}

struct Tally {
    ok: u64,
    errors: u64,
    hist: Histogram,
    error_samples: Vec<String>,
}

/// Runs `workers` (one task each) within `bounds`. The clock starts when
/// this is called, so connect the workers first.
pub async fn run<W: Worker>(workers: Vec<W>, bounds: Bounds) -> anyhow::Result<Outcome> {
    let limit = bounds.total.unwrap_or(u64::MAX);
    let tickets = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = bounds.duration.map(|d| start + d);

    let progress = bounds.progress.then(|| {
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

    let mut tasks = Vec::with_capacity(workers.len());
    for (i, mut worker) in workers.into_iter().enumerate() {
        let tickets = tickets.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::with_seed(0x5eed ^ (i as u64).wrapping_mul(0x9e37_79b9));
            let mut t = Tally {
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
                let t0 = Instant::now();
                let res = worker.call(ticket, &mut rng).await;
                match res {
                    Ok(()) => {
                        t.ok += 1;
                        t.hist.record_duration(t0.elapsed());
                    }
                    Err(msg) => {
                        t.errors += 1;
                        add_sample(&mut t.error_samples, msg);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            t
        }));
    }

    let mut out = Outcome {
        ok: 0,
        errors: 0,
        hist: Histogram::new(),
        elapsed: Duration::ZERO,
        error_samples: Vec::new(),
    };
    for task in tasks {
        let t = task.await?;
        out.ok += t.ok;
        out.errors += t.errors;
        out.hist.merge(&t.hist);
        for s in t.error_samples {
            add_sample(&mut out.error_samples, s);
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
    }

    struct Flaky(u64);

    impl Worker for Flaky {
        async fn call(&mut self, ticket: u64, _rng: &mut Rng) -> Result<(), String> {
            self.0 += 1;
            if ticket % 4 == 3 {
                Err(format!("err {}", ticket % 8))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn runs_exactly_total_tickets() {
        let bounds = Bounds {
            total: Some(100),
            duration: None,
            progress: false,
        };
        let out = run(vec![Flaky(0), Flaky(0), Flaky(0)], bounds)
            .await
            .expect("run");
        assert_eq!(out.ok + out.errors, 100);
        assert_eq!(out.errors, 25);
        assert_eq!(out.hist.len(), 75);
        let mut samples = out.error_samples;
        samples.sort();
        assert_eq!(samples, ["err 3", "err 7"]);
    }
}
