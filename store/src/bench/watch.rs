//! v2 watch fan-out (and the [`Outcome`] shared with the v3 fan-out): W
//! watchers long-poll one key with `?wait=true&waitIndex=N` (re-arming at
//! `modifiedIndex + 1` after each event) while a single closed-loop writer
//! PUTs to that key.
//!
//! Delivery latency is `watcher received - writer's PUT acknowledged`,
//! clamped at 0 (a server may notify watchers before answering the writer).
//! Afterwards every watcher's received indexes are checked against the
//! indexes the writer was given; any not received are "missed" (e.g. the
//! watcher fell behind the server's event history and got errorCode 401).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;

use super::client::{Conn, Endpoint};
use super::closed_loop::MAX_ERROR_SAMPLES;
use super::hist::Histogram;
use super::kv::describe_status;

/// A fan-out run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `/v2/keys/...` path of the watched key.
    pub key_path: String,
    /// Form body of each write.
    pub value: Bytes,
    /// Number of watchers.
    pub watchers: usize,
    /// Writer puts (at most).
    pub total: Option<u64>,
    /// Writer time limit.
    pub duration: Option<Duration>,
    /// How long watchers may catch up after the last put.
    pub grace: Duration,
}

/// What a fan-out run observed.
#[derive(Debug)]
pub struct Outcome {
    /// Successful writer puts.
    pub puts: u64,
    /// Failed writer puts.
    pub put_errors: u64,
    /// Writer PUT latency, microseconds.
    pub put_hist: Histogram,
    /// Writer phase wall time.
    pub write_elapsed: Duration,
    /// Watchers.
    pub watchers: usize,
    /// puts x watchers.
    pub expected: u64,
    /// Writer events received by watchers.
    pub delivered: u64,
    /// Writer events never received.
    pub missed: u64,
    /// Delivery latency, microseconds.
    pub delivery_hist: Histogram,
    /// First put sent -> last event delivered.
    pub delivery_elapsed: Duration,
    /// errorCode 401 (history cleared) answers seen by watchers (v2 only).
    pub history_cleared: Option<u64>,
    /// Other watch request failures (v3: canceled watchers, broken streams).
    pub watch_errors: u64,
    /// Events received again (v3 checks exactly-once delivery; v2 re-arms
    /// past each index, so it cannot see duplicates).
    pub duplicated: Option<u64>,
    /// Events received after one with a higher revision (v3 only).
    pub out_of_order: Option<u64>,
    /// Events for revisions the writer never produced (v3 only).
    pub unexpected: Option<u64>,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
}

#[derive(Deserialize)]
struct NodeBody {
    node: Node,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    modified_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error_code: u64,
    #[serde(default)]
    cause: String,
    #[serde(default)]
    index: u64,
}

/// etcd's "event index cleared" error code.
const EVENT_INDEX_CLEARED: u64 = 401;
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Time allowed for all watchers to arm before the first write.
const ARM_TIME: Duration = Duration::from_millis(200);

/// Published when the writer finishes: last index written and the deadline
/// by which watchers must have caught up.
type Finish = Option<(u64, Instant)>;

struct WatcherResult {
    /// `(index, received at)`, in receive order (ascending index).
    seen: Vec<(u64, Instant)>,
    cleared: u64,
    errors: u64,
    error_samples: Vec<String>,
}

fn modified_index(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<NodeBody>(body)
        .ok()
        .map(|b| b.node.modified_index)
}

/// Where to resume after a 401: the oldest index still in the server's
/// history, from etcd's cause "the requested history has been cleared
/// [oldest/requested]", else just past the current index.
fn resume_after_cleared(e: &ErrorBody) -> u64 {
    e.cause
        .rsplit_once('[')
        .and_then(|(_, r)| r.split_once('/'))
        .and_then(|(oldest, _)| oldest.trim().parse().ok())
        .unwrap_or(e.index + 1)
}

async fn wait_finish(rx: &mut watch::Receiver<Finish>, next: u64) {
    loop {
        let fin = *rx.borrow_and_update();
        if let Some((last, deadline)) = fin {
            if next > last {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            return;
        }
        if rx.changed().await.is_err() {
            // Writer gone without publishing: nothing more will come.
            return;
        }
    }
}

async fn watcher(
    mut conn: Conn,
    key_path: Arc<str>,
    mut next: u64,
    mut rx: watch::Receiver<Finish>,
) -> WatcherResult {
    let mut r = WatcherResult {
        seen: Vec::new(),
        cleared: 0,
        errors: 0,
        error_samples: Vec::new(),
    };
    let note = |r: &mut WatcherResult, msg: String| {
        r.errors += 1;
        if r.error_samples.len() < MAX_ERROR_SAMPLES {
            r.error_samples.push(msg);
        }
    };
    loop {
        if let Some((last, _)) = *rx.borrow()
            && next > last
        {
            break;
        }
        let path = format!("{key_path}?wait=true&waitIndex={next}");
        let res = tokio::select! {
            res = conn.request(Method::GET, &path, None) => res,
            () = wait_finish(&mut rx, next) => break,
        };
        match res {
            Ok(resp) if resp.status == StatusCode::OK => {
                let now = Instant::now();
                if resp.body.is_empty() {
                    // Server ended the long poll without an event; re-arm.
                    continue;
                }
                match modified_index(&resp.body) {
                    Some(idx) => {
                        r.seen.push((idx, now));
                        next = idx + 1;
                    }
                    None => note(&mut r, describe_status(resp.status, &resp.body)),
                }
            }
            Ok(resp) => match serde_json::from_slice::<ErrorBody>(&resp.body) {
                Ok(e) if e.error_code == EVENT_INDEX_CLEARED => {
                    r.cleared += 1;
                    next = resume_after_cleared(&e).max(next + 1);
                }
                _ => {
                    note(&mut r, describe_status(resp.status, &resp.body));
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            },
            Err(e) => {
                note(&mut r, e.chain());
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    r
}

/// Runs the fan-out described by `plan`.
pub async fn run(endpoint: &Endpoint, plan: &Plan) -> anyhow::Result<Outcome> {
    let key_path: Arc<str> = Arc::from(plan.key_path.as_str());
    let mut writer = Conn::new(endpoint.clone());
    // Establish the key and the starting index.
    let init = writer
        .request(Method::PUT, &key_path, Some(plan.value.clone()))
        .await?;
    anyhow::ensure!(
        init.status.is_success(),
        "initial put failed: {}",
        describe_status(init.status, &init.body)
    );
    let base = modified_index(&init.body)
        .or(init.etcd_index)
        .ok_or_else(|| anyhow::anyhow!("initial put: no modifiedIndex in response"))?;

    let (tx, rx) = watch::channel::<Finish>(None);
    let mut tasks = Vec::with_capacity(plan.watchers);
    for _ in 0..plan.watchers {
        let mut c = Conn::new(endpoint.clone());
        c.connect().await?;
        tasks.push(tokio::spawn(watcher(
            c,
            key_path.clone(),
            base + 1,
            rx.clone(),
        )));
    }
    tokio::time::sleep(ARM_TIME).await;

    // Writer: closed loop, one put in flight.
    let limit = plan.total.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let mut acks: Vec<(u64, Instant)> = Vec::new();
    let mut put_hist = Histogram::new();
    let mut put_errors = 0u64;
    let mut error_samples = Vec::new();
    let mut n = 0u64;
    while n < limit && deadline.is_none_or(|d| Instant::now() < d) {
        n += 1;
        let t0 = Instant::now();
        let res = writer
            .request(Method::PUT, &key_path, Some(plan.value.clone()))
            .await;
        let now = Instant::now();
        let failure = match res {
            Ok(r) if r.status.is_success() => match modified_index(&r.body).or(r.etcd_index) {
                Some(idx) => {
                    acks.push((idx, now));
                    put_hist.record_duration(now - t0);
                    None
                }
                None => Some(describe_status(r.status, &r.body)),
            },
            Ok(r) => Some(describe_status(r.status, &r.body)),
            Err(e) => Some(e.chain()),
        };
        if let Some(msg) = failure {
            put_errors += 1;
            if error_samples.len() < MAX_ERROR_SAMPLES {
                error_samples.push(format!("writer: {msg}"));
            }
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    let write_elapsed = start.elapsed();
    let last = acks.last().map_or(base, |a| a.0);
    // Nothing after this can fail to send: receivers are alive in the tasks.
    let _ = tx.send(Some((last, Instant::now() + plan.grace)));

    let mut out = Outcome {
        puts: acks.len() as u64,
        put_errors,
        put_hist,
        write_elapsed,
        watchers: plan.watchers,
        expected: acks.len() as u64 * plan.watchers as u64,
        delivered: 0,
        missed: 0,
        delivery_hist: Histogram::new(),
        delivery_elapsed: Duration::ZERO,
        history_cleared: Some(0),
        watch_errors: 0,
        duplicated: None,
        out_of_order: None,
        unexpected: None,
        error_samples,
    };
    let mut last_recv = start;
    for t in tasks {
        let w = t.await?;
        *out.history_cleared.get_or_insert(0) += w.cleared;
        out.watch_errors += w.errors;
        for s in w.error_samples {
            if out.error_samples.len() < MAX_ERROR_SAMPLES && !out.error_samples.contains(&s) {
                out.error_samples.push(s);
            }
        }
        let (delivered, missed) = verify(&acks, &w.seen, &mut out.delivery_hist, &mut last_recv);
        out.delivered += delivered;
        out.missed += missed;
    }
    out.delivery_elapsed = last_recv.saturating_duration_since(start);
    Ok(out)
}

/// Matches a watcher's received `(index, time)` list against the writer's
/// acknowledged `(index, time)` list (both ascending). Records delivery
/// latencies into `hist`, raises `last_recv`, and returns
/// `(delivered, missed)`. Indexes not produced by the writer are ignored.
fn verify(
    acks: &[(u64, Instant)],
    seen: &[(u64, Instant)],
    hist: &mut Histogram,
    last_recv: &mut Instant,
) -> (u64, u64) {
    let mut delivered = 0;
    let mut s = seen.iter().peekable();
    for &(idx, acked) in acks {
        while s.next_if(|(i, _)| *i < idx).is_some() {}
        if let Some(&(_, recv)) = s.next_if(|(i, _)| *i == idx) {
            delivered += 1;
            hist.record_duration(recv.saturating_duration_since(acked));
            *last_recv = (*last_recv).max(recv);
        }
    }
    (delivered, acks.len() as u64 - delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_counts_missed_and_clamps_latency() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let acks = [(10, t), (12, t + ms(1)), (15, t + ms(2))];
        // 11 is foreign, 12 missing, 15 arrived before its ack.
        let seen = [(10, t + ms(3)), (11, t), (15, t + ms(1))];
        let mut h = Histogram::new();
        let mut last = t;
        assert_eq!(verify(&acks, &seen, &mut h, &mut last), (2, 1));
        assert_eq!(h.len(), 2);
        assert_eq!(h.max(), 3000);
        assert_eq!(h.min(), 0);
        assert_eq!(last, t + ms(3));
    }

    #[test]
    fn resume_point_after_cleared_history() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"the requested history has been cleared [1008/3]","index":2007}"#,
        )
        .expect("json");
        assert_eq!(resume_after_cleared(&e), 1008);
        let e = ErrorBody {
            error_code: 401,
            cause: String::new(),
            index: 50,
        };
        assert_eq!(resume_after_cleared(&e), 51);
    }
}
