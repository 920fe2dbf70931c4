//! v3 crash safety of keel-store (`KEEL_CONFORMANCE_PEER=etcd` runs it
//! against etcd): 12 rounds of concurrent puts and txns through the v3 API,
//! SIGKILL after a random number of acknowledgements, restart. After every
//! restart: each acknowledged put/txn is there with its value and exactly the
//! acknowledged mod_revision, no revision was acknowledged twice, the store
//! revision never goes back, and the leases granted (long TTL) still exist
//! with TTL ≤ granted and their keys attached.
//!
//! Run: `cargo test -p keel-tests --test v3_crash`

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    Txn, TxnOp,
};
use keel_tests::v3::{self, run};
use keel_tests::{Server, keel_side_flavor};
use nix::sys::signal::Signal;

const ROUNDS: usize = 12;
const WRITERS: usize = 4;
const LEASE_TTL: i64 = 3600;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// key → (value, mod_revision) of every acknowledged write.
type Acked = BTreeMap<String, (String, i64)>;

/// One round's acknowledged writes: (keys, value, revision).
type RoundAcks = Arc<Mutex<Vec<(Vec<String>, String, i64)>>>;

async fn writer(
    mut client: Client,
    round: usize,
    w: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    acked: RoundAcks,
) {
    let mut rng = fastrand::Rng::with_seed((round * 100 + w) as u64);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let value = format!("v{round}-{w}-{seq}");
        if rng.u8(..10) < 7 {
            let k = format!("crash/r{round:02}/w{w}/p{seq:05}");
            match tokio::time::timeout(OP_TIMEOUT, client.put(k.as_str(), value.as_str(), None))
                .await
            {
                Ok(Ok(r)) => {
                    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                    acked.lock().expect("lock").push((vec![k], value, rev));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                _ => return,
            }
        } else {
            // Create-if-absent of two keys in one txn.
            let k1 = format!("crash/r{round:02}/w{w}/t{seq:05}a");
            let k2 = format!("crash/r{round:02}/w{w}/t{seq:05}b");
            let t = Txn::new()
                .when([Compare::create_revision(k1.as_str(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(k1.as_str(), value.as_str(), None),
                    TxnOp::put(k2.as_str(), value.as_str(), None),
                ]);
            match tokio::time::timeout(OP_TIMEOUT, client.txn(t)).await {
                Ok(Ok(r)) => {
                    assert!(r.succeeded(), "txn on fresh keys {k1} failed its compare");
                    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                    acked.lock().expect("lock").push((vec![k1, k2], value, rev));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                _ => return,
            }
        }
    }
}

#[test]
fn v3_acknowledged_writes_and_leases_survive_sigkill() {
    run(|| async {
        let flavor = keel_side_flavor();
        let mut server = tokio::task::spawn_blocking(move || Server::start(flavor))
            .await
            .expect("start");
        let mut client = v3::connect(&server).await;

        // Leases with a long TTL and keys attached: one before any crash,
        // one more per round.
        let mut leases: Vec<(i64, Vec<String>)> = Vec::new();
        let mut acked: Acked = BTreeMap::new();
        let mut rev_owner: HashMap<i64, String> = HashMap::new();
        let mut max_seen = 0i64;
        let mut failures: Vec<String> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(0x5eed);

        for round in 0..ROUNDS {
            // A lease for this round, acknowledged before the load starts.
            let id = 0x7e57_0000 + round as i64;
            let g = v3::within(
                "lease grant",
                client.lease_grant(LEASE_TTL, Some(LeaseGrantOptions::new().with_id(id))),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: lease grant: {e}"));
            assert_eq!(g.id(), id);
            let mut lkeys = Vec::new();
            for j in 0..2 {
                let k = format!("crash/lease/{id:x}/{j}");
                let r = v3::within(
                    "put with lease",
                    client.put(k.as_str(), "leased", Some(PutOptions::new().with_lease(id))),
                )
                .await
                .unwrap_or_else(|e| panic!("round {round}: put {k} with lease: {e}"));
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                acked.insert(k.clone(), ("leased".into(), rev));
                lkeys.push(k);
            }
            leases.push((id, lkeys));

            // Load, then SIGKILL after a random number of acks.
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicUsize::new(0));
            let round_acked: RoundAcks = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for w in 0..WRITERS {
                tasks.push(tokio::spawn(writer(
                    client.clone(),
                    round,
                    w,
                    stop.clone(),
                    count.clone(),
                    round_acked.clone(),
                )));
            }
            let target = rng.usize(20..300);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while count.load(Ordering::Relaxed) < target {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: only {} of {target} writes acknowledged in 20 s",
                    count.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Blocking is fine: the test body is not on a runtime worker.
            let st = server.kill(Signal::SIGKILL);
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                v3::within("writer exit", t).await.expect("writer task");
            }
            drop(client);

            // Record this round's acks.
            let round_acked = std::mem::take(&mut *round_acked.lock().expect("lock"));
            let n_acked = round_acked.len();
            for (keys, value, rev) in round_acked {
                if let Some(prev) = rev_owner.insert(rev, keys[0].clone()) {
                    failures.push(format!(
                        "round {round}: revision {rev} acknowledged for {} and for {prev}",
                        keys[0]
                    ));
                }
                max_seen = max_seen.max(rev);
                for k in keys {
                    acked.insert(k, (value.clone(), rev));
                }
            }

            // Restart and check.
            server = tokio::task::spawn_blocking(move || {
                server.restart();
                server
            })
            .await
            .expect("restart");
            client = v3::connect(&server).await;
            let r = v3::within(
                "range after restart",
                client.get("crash/", Some(GetOptions::new().with_prefix())),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: range after restart: {e}"));
            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
            if rev < max_seen {
                failures.push(format!(
                    "round {round}: revision went back: {rev} after restart, {max_seen} acknowledged before"
                ));
            }
            max_seen = max_seen.max(rev);
            let got: HashMap<String, (String, i64)> = r
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        v3::text(kv.key()),
                        (v3::text(kv.value()), kv.mod_revision()),
                    )
                })
                .collect();
            let mut lost = 0;
            for (k, (v, rev)) in &acked {
                match got.get(k) {
                    Some((gv, grev)) if gv == v && grev == rev => {}
                    other => {
                        lost += 1;
                        if lost <= 10 {
                            failures.push(format!(
                                "round {round}: acknowledged {k}={v} at revision {rev}, after restart: {other:?}"
                            ));
                        }
                    }
                }
            }
            if lost > 10 {
                failures.push(format!(
                    "round {round}: … {lost} acknowledged writes lost or changed in total"
                ));
            }

            // Leases.
            for (id, keys) in &leases {
                match v3::within(
                    "lease ttl",
                    client.lease_time_to_live(*id, Some(LeaseTimeToLiveOptions::new().with_keys())),
                )
                .await
                {
                    Ok(t) => {
                        let mut got_keys: Vec<String> =
                            t.keys().iter().map(|k| v3::text(k)).collect();
                        got_keys.sort();
                        if t.ttl() <= 0
                            || t.ttl() > LEASE_TTL
                            || t.granted_ttl() != LEASE_TTL
                            || &got_keys != keys
                        {
                            failures.push(format!(
                                "round {round}: lease {id:x} after restart: TTL {} (granted {}), keys {got_keys:?}; \
                                 expected 0 < TTL <= {LEASE_TTL}, granted {LEASE_TTL}, keys {keys:?}",
                                t.ttl(),
                                t.granted_ttl()
                            ));
                        }
                    }
                    Err(e) => failures.push(format!(
                        "round {round}: lease {id:x} time-to-live after restart: {e}"
                    )),
                }
            }
            eprintln!(
                "round {round}: killed after {n_acked} acks (target {target}, exit {st:?}); revision now {rev}; {} keys checked",
                acked.len()
            );
            if !failures.is_empty() {
                break;
            }
        }
        let leases_listed = v3::within("leases", client.leases()).await.expect("leases");
        let mut ids: Vec<i64> = leases_listed.leases().iter().map(|l| l.id()).collect();
        ids.sort();
        let want: Vec<i64> = leases.iter().map(|l| l.0).collect();
        if ids != want {
            failures.push(format!(
                "lease list after the last restart: {ids:x?}, expected {want:x?}"
            ));
        }
        assert!(
            failures.is_empty(),
            "{} crash-safety failure(s) on {}:\n{}\n--- log tail:\n{}",
            failures.len(),
            server.flavor.name(),
            failures.join("\n"),
            server.log_tail(30)
        );
    });
}
