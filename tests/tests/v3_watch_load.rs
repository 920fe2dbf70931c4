//! Watch under load (keel-store; `KEEL_CONFORMANCE_PEER=etcd` runs it against
//! etcd): 8 writers × 500 puts/deletes over a small key space while 20 watch
//! streams (prefix, single key, range; with and without prev_kv; some created
//! mid-run from an old start revision) follow. Every acknowledged write has
//! its own revision; the expected history is rebuilt from the acks and each
//! watcher must see exactly the matching events, once, in revision order,
//! with correct prev_kv. The final Range must match the history's end state.
//!
//! Run: `cargo test -p keel-tests --test v3_watch_load`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use keel_tests::v3::{self, run};
use keel_tests::{Server, keel_side_flavor};
use tokio::sync::oneshot;

const WRITERS: usize = 8;
const OPS_PER_WRITER: usize = 500;
const KEYS: usize = 24;
const WATCH_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    rev: i64,
    key: String,
    put: bool,
    value: String,
    /// (value, mod_revision) of the key before this event, when asked for.
    prev: Option<(String, i64)>,
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    key: String,
    range_end: Option<String>,
    prefix: bool,
    prev_kv: bool,
    /// Start revision for the watchers created mid-run.
    start: Option<i64>,
}

impl Spec {
    fn matches(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else if let Some(end) = &self.range_end {
            key >= self.key.as_str() && key < end.as_str()
        } else {
            key == self.key
        }
    }
}

fn key(i: usize) -> String {
    format!("wl/k{i:02}")
}

struct Watcher {
    spec: Spec,
    /// Header revision of the `created` response.
    created_rev: i64,
    finish: oneshot::Sender<i64>,
    task: tokio::task::JoinHandle<Result<Vec<Ev>, String>>,
}

async fn start_watcher(client: &mut Client, spec: Spec) -> Watcher {
    let mut o = WatchOptions::new();
    if spec.prefix {
        o = o.with_prefix();
    }
    if let Some(end) = &spec.range_end {
        o = o.with_range(end.as_str());
    }
    if spec.prev_kv {
        o = o.with_prev_key();
    }
    if let Some(s) = spec.start {
        o = o.with_start_revision(s);
    }
    let mut stream = v3::within("watch", client.watch(spec.key.as_str(), Some(o)))
        .await
        .unwrap_or_else(|e| panic!("{}: watch: {e}", spec.name));
    let created = v3::within("watch created", stream.message())
        .await
        .unwrap_or_else(|e| panic!("{}: first watch response: {e}", spec.name))
        .unwrap_or_else(|| panic!("{}: watch stream ended", spec.name));
    assert!(
        created.created(),
        "{}: first response is not `created`: {created:?}",
        spec.name
    );
    let created_rev = created.header().map(|h| h.revision()).unwrap_or(0);
    let (finish, mut finish_rx) = oneshot::channel::<i64>();
    let name = spec.name.clone();
    let task = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut target: Option<i64> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let msg = tokio::select! {
                t = &mut finish_rx, if target.is_none() => {
                    let t = t.map_err(|_| "finish channel closed".to_string())?;
                    target = Some(t);
                    stream.request_progress().await.map_err(|e| format!("progress request: {e}"))?;
                    continue;
                }
                m = tokio::time::timeout(Duration::from_secs(1), stream.message()) => m,
            };
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{name}: no end after 120 s"));
            }
            let msg = match msg {
                Err(_) => {
                    // Quiet for 1 s: ask for progress again (etcd answers
                    // only when the stream's watchers are synced).
                    if target.is_some() {
                        stream
                            .request_progress()
                            .await
                            .map_err(|e| format!("progress request: {e}"))?;
                    }
                    continue;
                }
                Ok(Err(e)) => return Err(format!("{name}: watch stream error: {e}")),
                Ok(Ok(None)) => return Err(format!("{name}: watch stream ended")),
                Ok(Ok(Some(m))) => m,
            };
            if msg.canceled() {
                return Err(format!("{name}: watch canceled: {msg:?}"));
            }
            for e in msg.events() {
                let kv = e.kv().ok_or_else(|| "event without kv".to_string())?;
                events.push(Ev {
                    rev: kv.mod_revision(),
                    key: v3::text(kv.key()),
                    put: e.event_type() == EventType::Put,
                    value: v3::text(kv.value()),
                    prev: e.prev_kv().map(|p| (v3::text(p.value()), p.mod_revision())),
                });
            }
            let rev = msg.header().map(|h| h.revision()).unwrap_or(0);
            if let Some(t) = target
                && msg.events().is_empty()
                && rev >= t
            {
                // A progress notification at or past the final revision:
                // everything up to it has been sent.
                return Ok(events);
            }
        }
    });
    Watcher {
        spec,
        created_rev,
        finish,
        task,
    }
}

#[test]
fn v3_watchers_see_every_event_once_in_order() {
    run(|| async {
        let flavor = keel_side_flavor();
        let server = tokio::task::spawn_blocking(move || Server::start(flavor))
            .await
            .expect("start");
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(v3::connect(&server).await);
        }
        let base = v3::current_revision(&mut clients[0]).await;

        // Live watchers, created before the writers start.
        let mut specs = Vec::new();
        for i in 0..6 {
            specs.push(Spec {
                name: format!("prefix#{i}"),
                key: "wl/".into(),
                range_end: None,
                prefix: true,
                prev_kv: i % 2 == 0,
                start: None,
            });
        }
        for i in 0..6 {
            specs.push(Spec {
                name: format!("key#{i}"),
                key: key(i * 3),
                range_end: None,
                prefix: false,
                prev_kv: i % 2 == 1,
                start: None,
            });
        }
        for i in 0..4 {
            specs.push(Spec {
                name: format!("range#{i}"),
                key: key(5 + i),
                range_end: Some(key(15 + i)),
                prefix: false,
                prev_kv: i % 2 == 0,
                start: None,
            });
        }
        let mut watchers = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let c = &mut clients[i % 4];
            watchers.push(start_watcher(c, spec).await);
        }

        // Writers.
        let acked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = clients[w % 4].clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(w as u64 * 7919 + 1);
                let mut log: Vec<(i64, String, Option<String>)> = Vec::new();
                for i in 0..OPS_PER_WRITER {
                    let k = key(rng.usize(..KEYS));
                    if rng.u8(..10) < 7 {
                        let v = format!("w{w}-{i}");
                        let r = v3::within("put", client.put(k.as_str(), v.as_str(), None))
                            .await
                            .unwrap_or_else(|e| panic!("put {k}: {e}"));
                        log.push((r.header().expect("header").revision(), k, Some(v)));
                    } else {
                        let r = v3::within("delete", client.delete(k.as_str(), None))
                            .await
                            .unwrap_or_else(|e| panic!("delete {k}: {e}"));
                        if r.deleted() > 0 {
                            log.push((r.header().expect("header").revision(), k, None));
                        }
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                log
            }));
        }

        // Mid-run: watchers from an old start revision (replay + live).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < WRITERS * OPS_PER_WRITER / 2 {
            assert!(tokio::time::Instant::now() < deadline, "writers too slow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for i in 0..4 {
            let spec = Spec {
                name: format!("from-start#{i}"),
                key: if i < 2 { "wl/".into() } else { key(i) },
                range_end: None,
                prefix: i < 2,
                prev_kv: i % 2 == 0,
                start: Some(base + 1 + i as i64 * 10),
            };
            let c = &mut clients[i % 4];
            watchers.push(start_watcher(c, spec).await);
        }

        let mut history: Vec<(i64, String, Option<String>)> = Vec::new();
        for t in tasks {
            history.extend(t.await.expect("writer"));
        }
        history.sort_by_key(|h| h.0);
        let last = history.last().map(|h| h.0).unwrap_or(base);
        // Every acknowledged write has its own revision, and together they
        // fill (base, last] without gaps.
        let revs: Vec<i64> = history.iter().map(|h| h.0).collect();
        let expected_revs: Vec<i64> = (base + 1..=last).collect();
        assert_eq!(
            revs, expected_revs,
            "acknowledged writes do not have distinct consecutive revisions"
        );

        // Expected events, with each key's previous (value, mod_revision).
        let mut state: BTreeMap<String, (String, i64, i64, i64)> = BTreeMap::new(); // value, create, mod, version
        let mut events = Vec::new();
        for (rev, k, v) in &history {
            let prev = state.get(k).map(|(v, _, m, _)| (v.clone(), *m));
            match v {
                Some(v) => {
                    let (create, version) = match state.get(k) {
                        Some((_, c, _, ver)) => (*c, ver + 1),
                        None => (*rev, 1),
                    };
                    state.insert(k.clone(), (v.clone(), create, *rev, version));
                }
                None => {
                    state.remove(k);
                }
            }
            events.push(Ev {
                rev: *rev,
                key: k.clone(),
                put: v.is_some(),
                value: v.clone().unwrap_or_default(),
                prev,
            });
        }

        // Final state.
        let r = v3::within(
            "final range",
            clients[0].get("wl/", Some(GetOptions::new().with_prefix())),
        )
        .await
        .expect("final range");
        let got: BTreeMap<String, (String, i64, i64, i64)> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    v3::text(kv.key()),
                    (
                        v3::text(kv.value()),
                        kv.create_revision(),
                        kv.mod_revision(),
                        kv.version(),
                    ),
                )
            })
            .collect();
        let mut failures = Vec::new();
        if got != state {
            failures.push(format!(
                "final Range of wl/ differs from the acknowledged history:\n  range:    {got:?}\n  expected: {state:?}"
            ));
        }

        // Watchers.
        let final_rev = r.header().map(|h| h.revision()).unwrap_or(last);
        let mut total = 0;
        for w in watchers {
            let _ = w.finish.send(final_rev);
            let got = match tokio::time::timeout(WATCH_DEADLINE, w.task).await {
                Err(_) => {
                    failures.push(format!(
                        "{}: did not finish within {WATCH_DEADLINE:?}",
                        w.spec.name
                    ));
                    continue;
                }
                Ok(Err(e)) => {
                    failures.push(format!("{}: task failed: {e}", w.spec.name));
                    continue;
                }
                Ok(Ok(Err(e))) => {
                    failures.push(e);
                    continue;
                }
                Ok(Ok(Ok(evs))) => evs,
            };
            let from = w.spec.start.unwrap_or(w.created_rev + 1);
            let want: Vec<Ev> = events
                .iter()
                .filter(|e| e.rev >= from && w.spec.matches(&e.key))
                .map(|e| Ev {
                    prev: if w.spec.prev_kv { e.prev.clone() } else { None },
                    ..e.clone()
                })
                .collect();
            total += got.len();
            if got != want {
                let first_diff = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                let mut dups = 0;
                let mut out_of_order = 0;
                for pair in got.windows(2) {
                    if pair[0].rev == pair[1].rev && pair[0].key == pair[1].key {
                        dups += 1;
                    } else if pair[0].rev >= pair[1].rev {
                        out_of_order += 1;
                    }
                }
                failures.push(format!(
                    "{} ({:?}, from revision {from}): got {} events, expected {}; {dups} duplicates, \
                     {out_of_order} out of order; first difference at #{first_diff}: got {:?}, expected {:?}",
                    w.spec.name,
                    w.spec,
                    got.len(),
                    want.len(),
                    got.get(first_diff),
                    want.get(first_diff)
                ));
            }
        }
        eprintln!(
            "{}: {} acknowledged writes ({} revisions), 20 watchers received {total} events",
            server.flavor.name(),
            WRITERS * OPS_PER_WRITER,
            history.len()
        );
        assert!(
            failures.is_empty(),
            "{} watch/load failure(s) on {}:\n{}\n--- log tail:\n{}",
            failures.len(),
            server.flavor.name(),
            failures.join("\n"),
            server.log_tail(20)
        );
    });
}
