//! v3 watch fan-out: `watchers` watchers on one key (or on a prefix) spread
//! over `streams` gRPC watch streams, while one closed-loop writer on its own
//! connection puts to that key (or to random keys under the prefix).
//!
//! Every watcher records `(mod_revision, received at)` for each event; after
//! the writer stops (and a grace period for stragglers) each watcher's list
//! is checked against the revisions the writer was acknowledged: every one
//! must arrive exactly once and in order. Delivery latency is `received -
//! writer's put acknowledged`, clamped at 0.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::super::closed_loop::{KeySpace, add_sample};
use super::super::hist::Histogram;
use super::super::rng::Rng;
use super::super::watch::Outcome;
use super::{describe, key, prefix_end};
use crate::v3::pb::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient, watch_request,
};

/// What the watchers watch and the writer writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// One key, written over and over.
    Key(Bytes),
    /// Every key under `keys.prefix + "/"`; the writer picks keys from
    /// `keys`.
    Prefix(KeySpace),
}

/// A fan-out run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Watched key or prefix.
    pub target: Target,
    /// Value of each write.
    pub value: Bytes,
    /// Number of watchers.
    pub watchers: usize,
    /// Watch streams the watchers are spread over.
    pub streams: usize,
    /// Writer puts (at most).
    pub total: Option<u64>,
    /// Writer time limit.
    pub duration: Option<Duration>,
    /// How long watchers may catch up after the last put.
    pub grace: Duration,
}

/// Time allowed for all watchers to be registered before the first write
/// (they are confirmed by `created` answers; this is just settling time).
const SETTLE_TIME: Duration = Duration::from_millis(200);

/// Published when the writer finishes: last revision written and the
/// deadline by which watchers must have caught up.
type Finish = Option<(i64, Instant)>;

/// What one stream's watchers received.
struct StreamResult {
    /// Per watcher: `(mod_revision, received at)` in receive order.
    seen: Vec<Vec<(i64, Instant)>>,
    /// Canceled watchers and stream failures.
    errors: u64,
    error_samples: Vec<String>,
}

/// Opens one watch stream and creates `n` watchers on it; returns the
/// stream, its request sender (kept open for the run) and the watch ids in
/// creation order.
async fn open_stream(
    channel: Channel,
    target: &Target,
    n: usize,
) -> anyhow::Result<(
    Streaming<WatchResponse>,
    mpsc::UnboundedSender<WatchRequest>,
    Vec<i64>,
)> {
    let (k, range_end) = match target {
        Target::Key(k) => (k.clone(), Bytes::new()),
        Target::Prefix(keys) => {
            let p = format!("{}/", keys.prefix).into_bytes();
            let end = prefix_end(&p);
            (Bytes::from(p), Bytes::from(end))
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // Queue the creates before opening: a gRPC server may hold back the
    // response headers until its first message.
    for _ in 0..n {
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: k.clone(),
                    range_end: range_end.clone(),
                    ..Default::default()
                },
            )),
        })?;
    }
    let mut stream = crate::v3::pb::etcdserverpb::watch_client::WatchClient::new(channel)
        .watch(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("open watch stream: {}", describe(&s)))?
        .into_inner();
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let r = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("watch create: {}", describe(&s)))?
            .ok_or_else(|| anyhow::anyhow!("watch stream ended during create"))?;
        anyhow::ensure!(!r.canceled, "watch create canceled: {}", r.cancel_reason);
        if r.created {
            ids.push(r.watch_id);
        }
    }
    Ok((stream, tx, ids))
}

/// Receives events for the watchers `ids` until every one has seen the last
/// revision or the grace deadline passes.
async fn receive(
    mut stream: Streaming<WatchResponse>,
    ids: Vec<i64>,
    mut finish: watch::Receiver<Finish>,
) -> StreamResult {
    let mut r = StreamResult {
        seen: vec![Vec::new(); ids.len()],
        errors: 0,
        error_samples: Vec::new(),
    };
    // Watch ids are small and dense per stream, but map them defensively.
    let index = |id: i64| ids.iter().position(|&x| x == id);
    let caught_up = |r: &StreamResult, last: i64| {
        r.seen
            .iter()
            .all(|s| s.last().map_or(i64::MIN, |&(rev, _)| rev) >= last)
    };
    loop {
        let fin = *finish.borrow_and_update();
        if let Some((last, deadline)) = fin {
            if caught_up(&r, last) {
                break;
            }
            let msg = tokio::select! {
                m = stream.message() => m,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => break,
            };
            if !handle(&mut r, msg, &index) {
                break;
            }
        } else {
            let msg = tokio::select! {
                m = stream.message() => m,
                c = finish.changed() => {
                    if c.is_err() {
                        break;
                    }
                    continue;
                }
            };
            if !handle(&mut r, msg, &index) {
                break;
            }
        }
    }
    r
}

/// Records one stream message; false when the stream is over.
fn handle(
    r: &mut StreamResult,
    msg: Result<Option<WatchResponse>, tonic::Status>,
    index: &impl Fn(i64) -> Option<usize>,
) -> bool {
    let now = Instant::now();
    match msg {
        Ok(Some(resp)) => {
            if resp.canceled {
                r.errors += 1;
                add_sample(
                    &mut r.error_samples,
                    format!("watch {} canceled: {}", resp.watch_id, resp.cancel_reason),
                );
            }
            if let Some(i) = index(resp.watch_id) {
                let seen = &mut r.seen[i];
                seen.extend(
                    resp.events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .map(|kv| (kv.mod_revision, now)),
                );
            }
            true
        }
        Ok(None) => {
            r.errors += 1;
            add_sample(&mut r.error_samples, "watch stream ended".to_owned());
            false
        }
        Err(s) => {
            r.errors += 1;
            add_sample(&mut r.error_samples, describe(&s));
            false
        }
    }
}

/// Runs the fan-out: watch streams on `channels` (round-robin), the writer
/// on `writer`.
pub async fn run(writer: Channel, channels: &[Channel], plan: &Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!channels.is_empty(), "no connections");
    let mut kv = KvClient::new(writer);
    let mut rng = Rng::with_seed(0x77a7c4);
    let next_key = |rng: &mut Rng, n: u64| match &plan.target {
        Target::Key(k) => k.clone(),
        Target::Prefix(keys) => key(&keys.prefix, keys.key(n, rng)),
    };
    // One write before the watchers exist, so the keyspace is warm.
    kv.put(PutRequest {
        key: next_key(&mut rng, 0),
        value: plan.value.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("initial put: {}", describe(&s)))?;

    let streams = plan.streams.clamp(1, plan.watchers.max(1));
    let (tx, rx) = watch::channel::<Finish>(None);
    let mut senders = Vec::with_capacity(streams);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        // Spread the watchers as evenly as possible.
        let n = plan.watchers / streams + usize::from(s < plan.watchers % streams);
        let (stream, sender, ids) =
            open_stream(channels[s % channels.len()].clone(), &plan.target, n).await?;
        senders.push(sender);
        tasks.push(tokio::spawn(receive(stream, ids, rx.clone())));
    }
    tokio::time::sleep(SETTLE_TIME).await;

    // Writer: closed loop, one put in flight.
    let limit = plan.total.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let mut acks: Vec<(i64, Instant)> = Vec::new();
    let mut put_hist = Histogram::new();
    let mut put_errors = 0u64;
    let mut error_samples = Vec::new();
    let mut n = 0u64;
    while n < limit && deadline.is_none_or(|d| Instant::now() < d) {
        n += 1;
        let req = PutRequest {
            key: next_key(&mut rng, n),
            value: plan.value.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        let res = kv.put(req).await;
        let now = Instant::now();
        match res.map(|r| r.into_inner().header.map(|h| h.revision)) {
            Ok(Some(rev)) => {
                acks.push((rev, now));
                put_hist.record_duration(now - t0);
            }
            Ok(None) => {
                put_errors += 1;
                add_sample(&mut error_samples, "writer: put without header".to_owned());
            }
            Err(s) => {
                put_errors += 1;
                add_sample(&mut error_samples, format!("writer: {}", describe(&s)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let write_elapsed = start.elapsed();
    // With no acknowledged write every watcher is trivially caught up.
    let last = acks.last().map_or(i64::MIN, |a| a.0);
    // Receivers live in the tasks, so this cannot fail.
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
        history_cleared: None,
        watch_errors: 0,
        duplicated: Some(0),
        out_of_order: Some(0),
        unexpected: Some(0),
        error_samples,
    };
    let mut last_recv = start;
    let mut watchers_seen = 0usize;
    for t in tasks {
        let r = t.await?;
        out.watch_errors += r.errors;
        for s in r.error_samples {
            add_sample(&mut out.error_samples, s);
        }
        for seen in &r.seen {
            watchers_seen += 1;
            let c = check(&acks, seen, &mut out.delivery_hist, &mut last_recv);
            out.delivered += c.delivered;
            out.missed += c.missed;
            *out.duplicated.get_or_insert(0) += c.duplicated;
            *out.out_of_order.get_or_insert(0) += c.out_of_order;
            *out.unexpected.get_or_insert(0) += c.unexpected;
        }
    }
    drop(senders);
    anyhow::ensure!(
        watchers_seen == plan.watchers,
        "{watchers_seen} of {} watchers reported",
        plan.watchers
    );
    out.delivery_elapsed = last_recv.saturating_duration_since(start);
    Ok(out)
}

/// One watcher's delivery check.
#[derive(Debug, Default, PartialEq, Eq)]
struct Check {
    /// Acknowledged revisions received (first copy).
    delivered: u64,
    /// Acknowledged revisions never received.
    missed: u64,
    /// Events whose revision had already been received.
    duplicated: u64,
    /// Events received after an event with a higher revision.
    out_of_order: u64,
    /// Events with a revision the writer was never acknowledged.
    unexpected: u64,
}

/// Checks a watcher's `(revision, received at)` list against the writer's
/// acknowledged `(revision, acked at)` list (ascending): records delivery
/// latencies (received - acked, clamped at 0) of first copies into `hist`
/// and raises `last_recv`.
fn check(
    acks: &[(i64, Instant)],
    seen: &[(i64, Instant)],
    hist: &mut Histogram,
    last_recv: &mut Instant,
) -> Check {
    let mut c = Check::default();
    let mut got = HashSet::with_capacity(seen.len());
    let mut highest = i64::MIN;
    for &(rev, recv) in seen {
        if !got.insert(rev) {
            c.duplicated += 1;
            continue;
        }
        if rev < highest {
            c.out_of_order += 1;
        }
        highest = highest.max(rev);
        match acks.binary_search_by_key(&rev, |a| a.0) {
            Ok(i) => {
                c.delivered += 1;
                hist.record_duration(recv.saturating_duration_since(acks[i].1));
                *last_recv = (*last_recv).max(recv);
            }
            Err(_) => c.unexpected += 1,
        }
    }
    c.missed = acks.len() as u64 - c.delivered;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_every_anomaly() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let acks = [(10, t), (12, t + ms(1)), (15, t + ms(2)), (16, t + ms(3))];
        // 11 is foreign, 12 arrives twice, 16 before 15, 10 early (latency 0).
        let seen = [
            (10, t),
            (11, t + ms(1)),
            (12, t + ms(4)),
            (12, t + ms(5)),
            (16, t + ms(6)),
            (15, t + ms(7)),
        ];
        let mut h = Histogram::new();
        let mut last = t;
        let c = check(&acks, &seen, &mut h, &mut last);
        assert_eq!(
            c,
            Check {
                delivered: 4,
                missed: 0,
                duplicated: 1,
                out_of_order: 1,
                unexpected: 1,
            }
        );
        assert_eq!(h.len(), 4);
        assert_eq!(h.min(), 0);
        assert_eq!(h.max(), 5000);
        assert_eq!(last, t + ms(7));
    }

    #[test]
    fn check_perfect_and_missing() {
        let t = Instant::now();
        let acks: Vec<(i64, Instant)> = (1..=5).map(|r| (r, t)).collect();
        let mut h = Histogram::new();
        let mut last = t;
        let c = check(&acks, &acks, &mut h, &mut last);
        assert_eq!((c.delivered, c.missed, c.duplicated), (5, 0, 0));
        let c = check(&acks, &acks[1..3], &mut h, &mut last);
        assert_eq!((c.delivered, c.missed, c.out_of_order), (2, 3, 0));
        let c = check(&acks, &[], &mut h, &mut last);
        assert_eq!(c.missed, 5);
    }
}
