//! keel-store as a Raft cluster: separate processes on loopback, faults injected by
//! signals, clients through the v2 HTTP and v3 gRPC APIs (etcdctl), and a
//! linearizability check of the histories recorded under faults.

use keel_tests::Flavor;
use keel_tests::cluster::{Cluster, ELECTION_MS};
use keel_tests::http::{self, Req};
use keel_tests::linearizability::{self, Input, Op, Output, Verdict};
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A v2 write through member `i`; Ok(body) on 200/201.
fn v2_put(c: &Cluster, i: usize, key: &str, value: &str) -> Result<String, String> {
    let r = http::send(
        c.members[i].addr(),
        &Req::put(&format!("/v2/keys/{key}"), &format!("value={value}")),
        Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    if r.status == 200 || r.status == 201 {
        Ok(r.text())
    } else {
        Err(format!("{} {}", r.status, r.text()))
    }
}

/// Every key and value of member `i`, read locally (serializable), through etcdctl.
fn v3_dump(c: &Cluster, i: usize) -> Vec<(String, String)> {
    let (ok, out) = c.etcdctl(i, &["get", "", "--prefix", "--consistency=s", "-w", "json"]);
    assert!(ok, "etcdctl get on member {i}: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("etcdctl json");
    let mut kvs = Vec::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        use base64::Engine as _;
        let d = |f: &str| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(kv[f].as_str().unwrap_or(""))
                    .expect("base64"),
            )
            .expect("utf8")
        };
        kvs.push((d("key"), d("value")));
    }
    kvs
}

/// The v2 keyspace of member `i` (local read).
fn v2_dump(c: &Cluster, i: usize) -> serde_json::Value {
    let r = http::send(
        c.members[i].addr(),
        &Req::get("/v2/keys/?recursive=true&sorted=true"),
        Duration::from_secs(10),
    )
    .expect("v2 dump");
    let mut v = r.json().expect("json");
    // Only the tree: the response's own index header differs per member.
    v["node"].take()
}

/// Wait until every running member holds the same v2 and v3 data.
fn assert_converged(c: &mut Cluster) {
    let running: Vec<usize> = (0..c.members.len())
        .filter(|&i| c.members[i].is_running())
        .collect();
    // A quorum read on each member first: it has applied everything committed.
    for &i in &running {
        let (ok, out) = c.etcdctl(i, &["get", "health-probe"]);
        assert!(ok, "linearizable read on member {i}: {out}");
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let v3: Vec<_> = running.iter().map(|&i| v3_dump(c, i)).collect();
        let v2: Vec<_> = running.iter().map(|&i| v2_dump(c, i)).collect();
        if v3.windows(2).all(|w| w[0] == w[1]) && v2.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {running:?} do not converge:\nv3 {v3:?}\nv2 {v2:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until `etcdctl member list` shows every member started with its name, peer
/// and client URLs (each publishes them through the log once it runs).
fn wait_published(c: &Cluster) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (ok, list) = c.etcdctl(0, &["member", "list"]);
        if ok
            && c.members.iter().all(|m| {
                list.contains(&format!(
                    ", started, {}, {}, {}, false",
                    m.name,
                    m.peer_url(),
                    m.client_url()
                ))
            })
        {
            return;
        }
        assert!(Instant::now() < deadline, "members never published: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retry a v3 put until acknowledged; returns how long it took.
fn put_until_acknowledged(c: &Cluster, i: usize, key: &str, value: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, out) = c.etcdctl(i, &["put", key, value]);
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "put {key} never acknowledged: {out}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_members_replicate_fail_over_and_refuse_writes_without_a_majority() {
    let mut c = Cluster::start(Flavor::Keel, 3, &[]);
    // Writes through every member, read back from every member.
    for i in 0..3 {
        v2_put(&c, i, &format!("v2/m{i}"), &format!("from-{i}")).expect("v2 put");
        put_until_acknowledged(&c, i, &format!("v3/m{i}"), &format!("from-{i}"));
    }
    assert_converged(&mut c);
    assert_eq!(v3_dump(&c, 0).len(), 3);

    // etcdctl sees one cluster with one leader.
    let (ok, out) = c.etcdctl(0, &["endpoint", "status", "--cluster"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(
        out.matches(", true, false,").count(),
        1,
        "one leader: {out}"
    );
    wait_published(&c);

    // Kill the leader: the others elect a new one and take writes again.
    let leader = c.wait_leader(TIMEOUT);
    c.kill(leader);
    let other = (leader + 1) % 3;
    let failover = put_until_acknowledged(&c, other, "after-leader-loss", "1");
    eprintln!("leader {leader} killed; first acknowledged write after {failover:?}");
    assert!(failover < Duration::from_secs(10), "{failover:?}");
    let new_leader = c.wait_leader(TIMEOUT);
    assert_ne!(new_leader, leader);

    // Kill another: one member of three cannot commit anything.
    let follower = (0..3)
        .find(|&i| i != leader && i != new_leader)
        .unwrap_or(other);
    c.kill(new_leader);
    let (ok, out) = c.etcdctl(follower, &["put", "no-quorum", "x"]);
    assert!(!ok, "a write without a majority was acknowledged: {out}");
    assert!(
        out.contains("etcdserver: no leader") || out.contains("etcdserver: request timed out"),
        "{out}"
    );
    let v2 = v2_put(&c, follower, "no-quorum-v2", "x").expect_err("v2 write without majority");
    assert!(v2.contains("\"errorCode\":30"), "{v2}");
    assert!(!c.healthy(follower));

    // Both come back from disk; the cluster converges, the refused writes never appear.
    c.restart(leader);
    c.restart(new_leader);
    for i in 0..3 {
        c.wait_healthy(i, TIMEOUT);
    }
    put_until_acknowledged(&c, follower, "after-recovery", "2");
    assert_converged(&mut c);
    let keys: Vec<String> = v3_dump(&c, 0).into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"after-leader-loss".to_string()), "{keys:?}");
    assert!(!keys.contains(&"no-quorum".to_string()), "{keys:?}");
}

/// A request in flight to a leader that dies is answered once the next leader is
/// known, not after the 6 s request timeout: a linearizable read (idempotent) goes out
/// again to the new leader and returns the value; a write whose proposal died with the
/// old leader is told "etcdserver: leader changed" (outcome unknown to the client, as
/// for a timeout) an election timeout after the new leader's first entry is applied.
/// The leader is frozen first so that the request surely reaches it and is lost.
#[test]
fn requests_in_flight_to_a_dying_leader_are_answered_after_the_election() {
    let mut c = Cluster::start(Flavor::Keel, 3, &[]);
    put_until_acknowledged(&c, 0, "k", "before");
    for request in [
        &["get", "k", "--print-value-only"][..],
        &["put", "k", "lost"],
    ] {
        let leader = c.wait_leader(TIMEOUT);
        let via = (leader + 1) % 3;
        c.signal(leader, Signal::SIGSTOP);
        let child = c
            .etcdctl_command(via, request)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run etcdctl");
        // Well inside the election timeout: the follower still forwards to the leader.
        std::thread::sleep(Duration::from_millis(ELECTION_MS / 2));
        c.kill(leader);
        let (ok, out) = keel_tests::cluster::etcdctl_output(
            child.wait_with_output().expect("wait for etcdctl"),
        );
        match request[0] {
            // Answered at the first attempt: etcdctl logs a retried error otherwise.
            "get" => assert!(ok && out.trim() == "before", "{out}"),
            _ => assert!(!ok && out.contains("etcdserver: leader changed"), "{out}"),
        }
        c.restart(leader);
        c.wait_healthy(leader, TIMEOUT);
    }
    // The frozen leader never saw the write: it is not in the log.
    let (ok, out) = c.etcdctl(0, &["get", "k", "--print-value-only"]);
    assert!(ok && out.trim() == "before", "{out}");
}

#[test]
fn five_members_tolerate_two_failures() {
    let mut c = Cluster::start(Flavor::Keel, 5, &[]);
    let leader = c.wait_leader(TIMEOUT);
    c.kill(leader);
    c.kill((leader + 1) % 5);
    let alive: Vec<usize> = (0..5).filter(|&i| c.members[i].is_running()).collect();
    for (n, &i) in alive.iter().enumerate() {
        put_until_acknowledged(&c, i, &format!("k{n}"), "v");
    }
    assert_converged(&mut c);
    c.kill(alive[0]);
    let (ok, out) = c.etcdctl(alive[1], &["put", "third-failure", "x"]);
    assert!(!ok, "2 of 5 acknowledged a write: {out}");
}

#[test]
fn every_member_restarts_from_disk_after_sigkill_with_identical_state() {
    let mut c = Cluster::start(Flavor::Keel, 3, &["--snapshot-count", "200"]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let addrs: Vec<_> = c.members.iter().map(|m| m.addr()).collect();
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{n}");
                let value = format!("v{n}");
                let addr = addrs[(n % 3) as usize];
                if let Ok(r) = http::send(
                    addr,
                    &Req::put(&format!("/v2/keys/{key}"), &format!("value={value}")),
                    Duration::from_secs(2),
                ) && (r.status == 200 || r.status == 201)
                {
                    acked.lock().expect("lock").push((key, value));
                }
                n += 1;
            }
        })
    };
    while acked.lock().expect("lock").len() < 600 {
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..3 {
        c.kill(i);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for i in 0..3 {
        c.spawn(i);
    }
    for i in 0..3 {
        c.wait_healthy(i, TIMEOUT);
    }
    assert_converged(&mut c);
    let tree = v2_dump(&c, 0);
    let stored: std::collections::HashMap<String, String> = tree["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|d| d["key"] == "/load"))
        .and_then(|d| d["nodes"].as_array())
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    (
                        n["key"]
                            .as_str()
                            .unwrap_or("")
                            .trim_start_matches('/')
                            .to_string(),
                        n["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let acked = acked.lock().expect("lock");
    for (k, v) in acked.iter() {
        assert_eq!(stored.get(k), Some(v), "acknowledged write {k} lost");
    }
    eprintln!(
        "{} acknowledged writes survived SIGKILL of all members",
        acked.len()
    );
}

#[test]
fn members_join_as_learners_catch_up_get_promoted_and_removed_under_load() {
    let mut c = Cluster::start(Flavor::Keel, 3, &["--snapshot-count", "100"]);
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.members[0].addr();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = http::send(
                    addr,
                    &Req::put(&format!("/v2/keys/w/{}", n % 50), &format!("value={n}")),
                    Duration::from_secs(2),
                );
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let learner = c.add_member(1, true);
    c.wait_healthy(learner, TIMEOUT);
    // It publishes its name and client URLs through the log once it has caught up.
    let deadline = Instant::now() + TIMEOUT;
    let list = loop {
        let (ok, list) = c.etcdctl(0, &["member", "list"]);
        if ok && list.contains(&format!(", started, m{learner}, ")) {
            break list;
        }
        assert!(Instant::now() < deadline, "learner never started: {list}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        list.trim_end()
            .lines()
            .any(|l| l.contains(&format!("m{learner}")) && l.ends_with(", true")),
        "learner flag: {list}"
    );

    // A learner never votes: with two of the three voters gone, the remaining voter
    // and the learner are not a majority.
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    assert!(writes > 20, "only {writes} writes during the join");
    assert_converged(&mut c);
    c.kill(1);
    c.kill(2);
    let (ok, out) = c.etcdctl(0, &["put", "learner-vote", "x"]);
    assert!(!ok, "a learner counted towards the quorum: {out}");
    c.restart(1);
    c.restart(2);
    for i in 0..3 {
        c.wait_healthy(i, TIMEOUT);
    }

    // Promote it; now it counts: four voters survive the loss of one.
    let id = list
        .lines()
        .find(|l| l.contains(&format!(", m{learner}, ")))
        .and_then(|l| l.split(',').next())
        .expect("learner id")
        .to_string();
    let (ok, out) = c.etcdctl(0, &["member", "promote", &id]);
    assert!(ok, "{out}");
    let (ok, out) = c.etcdctl(learner, &["endpoint", "status"]);
    assert!(
        ok && out.contains(", false, false,") || out.contains(", true, false,"),
        "{out}"
    );

    // Remove member 2: it stops, the others go on without it.
    let (_, list) = c.etcdctl(0, &["member", "list"]);
    let id2 = list
        .lines()
        .find(|l| l.contains(", m2, "))
        .and_then(|l| l.split(',').next())
        .expect("m2 id")
        .to_string();
    let (ok, out) = c.etcdctl(0, &["member", "remove", &id2]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + TIMEOUT;
    while c.members[2].is_running() {
        assert!(Instant::now() < deadline, "removed member still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    put_until_acknowledged(&c, learner, "after-remove", "1");
    let (_, list) = c.etcdctl(0, &["member", "list"]);
    assert_eq!(list.trim().lines().count(), 3, "{list}");
    assert!(!list.contains(", m2, "), "{list}");
}

/// One client's view of a v2 operation's fate.
enum Fate {
    Done(Output),
    /// Certainly not applied (refused before reaching Raft).
    NotApplied,
    /// May or may not have been applied.
    Unknown,
}

fn v2_op(addr: std::net::SocketAddr, key: &str, input: &Input) -> Fate {
    let req = match input {
        Input::Put(v) => Req::put(&format!("/v2/keys/{key}"), &format!("value={v}")),
        Input::Get => Req::get(&format!("/v2/keys/{key}?quorum=true")),
        Input::Cas { old, new } => Req::put(
            &format!("/v2/keys/{key}?prevValue={old}"),
            &format!("value={new}"),
        ),
        Input::Delete => Req::delete(&format!("/v2/keys/{key}")),
    };
    let r = match http::send(addr, &req, Duration::from_secs(2)) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Fate::NotApplied,
        Err(_) => return Fate::Unknown,
    };
    let body = r.json().unwrap_or_default();
    let code = body["errorCode"].as_u64();
    match (input, r.status, code) {
        (Input::Put(_), 200 | 201, _) => Fate::Done(Output::Ok),
        (Input::Get, 200, _) => Fate::Done(Output::Value(
            body["node"]["value"].as_str().map(str::to_string),
        )),
        (Input::Get, 404, Some(100)) => Fate::Done(Output::Value(None)),
        (Input::Cas { .. }, 200, _) | (Input::Delete, 200, _) => Fate::Done(Output::Done(true)),
        (Input::Cas { .. }, _, Some(100 | 101)) | (Input::Delete, _, Some(100)) => {
            Fate::Done(Output::Done(false))
        }
        // No leader: the proposal was dropped before entering the log.
        (_, _, Some(301)) => Fate::NotApplied,
        _ => Fate::Unknown,
    }
}

#[test]
fn a_partitioned_leader_steps_down_and_the_majority_goes_on() {
    let mut c = Cluster::start_in_netns(Flavor::Keel, 3, &[]);
    put_until_acknowledged(&c, 0, "before", "1");
    let old = c.wait_leader(TIMEOUT);
    let net = c.net.take().expect("namespaces");
    net.cut(old);
    // The old leader cannot reach a quorum (and the test reaches it only through the
    // hub, so not at all): nothing written through it is acknowledged.
    let (ok, out) = c.etcdctl(old, &["put", "minority", "x"]);
    assert!(!ok, "the minority acknowledged a write: {out}");
    let other = (old + 1) % 3;
    let failover = put_until_acknowledged(&c, other, "majority", "1");
    eprintln!("leader {old} cut off; the majority acknowledged a write after {failover:?}");
    let new = c.wait_leader(TIMEOUT);
    assert_ne!(new, old);
    net.heal(old);
    c.net = Some(net);
    c.wait_healthy(old, TIMEOUT);
    assert_converged(&mut c);
    let keys: Vec<String> = v3_dump(&c, old).into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"majority".to_string()), "{keys:?}");
    assert!(!keys.contains(&"minority".to_string()), "{keys:?}");

    // A cut follower misses writes and catches up when the link is back.
    let leader = c.wait_leader(TIMEOUT);
    let follower = (leader + 1) % 3;
    c.net.as_ref().expect("namespaces").cut(follower);
    for n in 0..20 {
        put_until_acknowledged(&c, leader, &format!("while-cut/{n}"), "v");
    }
    c.net.as_ref().expect("namespaces").heal(follower);
    c.wait_healthy(follower, TIMEOUT);
    assert_converged(&mut c);
}

#[test]
fn histories_under_kills_pauses_and_partitions_are_linearizable() {
    const CLIENTS: usize = 4;
    const KEYS: usize = 6;
    const ROUNDS: usize = 50;
    let mut c = Cluster::start_in_netns(Flavor::Keel, 3, &["--snapshot-count", "500"]);
    let addrs: Vec<_> = c.members.iter().map(|m| m.addr()).collect();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (stop, addrs) = (stop.clone(), addrs.clone());
        clients.push(std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(client as u64 + 1);
            let mut ops = Vec::new();
            let mut seq = 0u64;
            let mut seen: Vec<Option<String>> = vec![None; KEYS];
            while !stop.load(Ordering::Relaxed) {
                let k = rng.usize(..KEYS);
                let key = format!("lin/k{k}");
                seq += 1;
                let input = match rng.u32(..10) {
                    0..=2 => Input::Put(format!("c{client}-{seq}")),
                    3..=6 => Input::Get,
                    7..=8 => Input::Cas {
                        old: seen[k].clone().unwrap_or_else(|| "none".into()),
                        new: format!("c{client}-{seq}"),
                    },
                    _ => Input::Delete,
                };
                let addr = addrs[rng.usize(..addrs.len())];
                let call = start.elapsed().as_nanos() as u64;
                let fate = v2_op(addr, &key, &input);
                let ret = start.elapsed().as_nanos() as u64;
                match fate {
                    Fate::Done(out) => {
                        if let Output::Value(v) = &out {
                            seen[k].clone_from(v);
                        }
                        ops.push(Op {
                            client,
                            key,
                            input,
                            call,
                            ret: Some(ret),
                            output: Some(out),
                        });
                    }
                    Fate::Unknown if input != Input::Get => ops.push(Op {
                        client,
                        key,
                        input,
                        call,
                        ret: None,
                        output: None,
                    }),
                    Fate::Unknown | Fate::NotApplied => {}
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            ops
        }));
    }

    // The nemesis: one fault at a time, so a majority is always up. A cut leader is
    // in a minority of one: it must step down and acknowledge nothing.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut faults = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..ROUNDS {
        let leader = c.wait_leader(TIMEOUT);
        let follower = (leader + 1 + rng.usize(..2)) % 3;
        let (name, target) = match rng.u32(..6) {
            0 => ("kill leader", leader),
            1 => ("kill follower", follower),
            2 => ("pause leader", leader),
            3 => ("pause follower", follower),
            4 => ("partition leader", leader),
            _ => ("partition follower", follower),
        };
        *faults.entry(name).or_default() += 1;
        let kind = name.split(' ').next().unwrap_or("");
        match kind {
            "kill" => c.signal(target, Signal::SIGKILL),
            "pause" => c.signal(target, Signal::SIGSTOP),
            _ => c.net.as_ref().expect("namespaces").cut(target),
        }
        std::thread::sleep(Duration::from_millis(
            ELECTION_MS + rng.u64(..2 * ELECTION_MS),
        ));
        match kind {
            "kill" => c.spawn(target),
            "pause" => c.signal(target, Signal::SIGCONT),
            _ => c.net.as_ref().expect("namespaces").heal(target),
        }
        c.wait_healthy(target, TIMEOUT);
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = Vec::new();
    for t in clients {
        history.extend(t.join().expect("client"));
    }
    let done = history.iter().filter(|o| o.output.is_some()).count();
    let unknown = history.len() - done;
    eprintln!(
        "{ROUNDS} fault rounds {faults:?} in {:?}: {} operations recorded ({done} with a result, {unknown} unknown)",
        start.elapsed(),
        history.len()
    );
    assert!(done > 500, "too little traffic got through: {done}");
    let verdict = linearizability::check(&history, 5_000_000);
    assert_eq!(verdict, Verdict::Linearizable);
    assert_converged(&mut c);
}

#[test]
fn members_bootstrap_through_discovery_served_by_a_keel_store() {
    // A one-member keel-store is the discovery service, as discovery.etcd.io was.
    let disc = keel_tests::Server::start(Flavor::Keel);
    let url = format!("{}/v2/keys/discovery/abc123", disc.client_url());
    let r = disc.request(&Req::put(
        "/v2/keys/discovery/abc123/_config/size",
        "value=3",
    ));
    assert_eq!(r.status, 201, "{}", r.text());
    let mut c = Cluster::spawn_discovery(Flavor::Keel, 3, &url);
    for i in 0..3 {
        c.wait_healthy(i, TIMEOUT);
    }
    wait_published(&c);
    put_until_acknowledged(&c, 2, "discovered", "yes");
    assert_converged(&mut c);
    // A fourth member with the same URL finds the cluster full and stops.
    let mut late = Cluster::spawn_discovery(Flavor::Keel, 1, &url);
    let log = late.wait_exit(0, TIMEOUT);
    assert!(
        log.contains("cluster is full (3 members already registered)"),
        "{log}"
    );
}

#[test]
fn a_backup_from_one_member_seeds_a_new_cluster() {
    let mut a = Cluster::start(Flavor::Keel, 3, &[]);
    v2_put(&a, 0, "backup/v2", "kept").expect("v2 put");
    put_until_acknowledged(&a, 1, "backup/v3", "kept");
    assert_converged(&mut a);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let (ok, out) = a.etcdctl(2, &["snapshot", "save", &file.display().to_string()]);
    assert!(ok, "{out}");
    drop(a);

    // Every member of the new cluster restores the same file, then starts with the new
    // cluster's flags: the membership comes from them, the data from the backup.
    let mut b = Cluster::prepare(Flavor::Keel, 3, &[]);
    for m in &b.members {
        let out = std::process::Command::new(keel_tests::server::keel_store_bin())
            .args(["snapshot", "restore"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .output()
            .expect("run restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    b.start_all();
    wait_published(&b);
    put_until_acknowledged(&b, 0, "after-restore", "1");
    assert_converged(&mut b);
    for i in 0..3 {
        let kvs = v3_dump(&b, i);
        assert!(
            kvs.contains(&("backup/v3".to_string(), "kept".to_string())),
            "{kvs:?}"
        );
        assert!(
            kvs.contains(&("after-restore".to_string(), "1".to_string())),
            "{kvs:?}"
        );
        assert_eq!(v2_dump(&b, i)["nodes"][0]["nodes"][0]["value"], "kept");
    }
}

#[test]
fn peers_talk_over_mutual_tls_with_etcds_peer_flags() {
    let pki = keel_tests::pki::Pki::new();
    let (cert, key, ca) = (
        pki.file("peer.crt"),
        pki.file("peer.key"),
        pki.file("ca.crt"),
    );
    let mut c = Cluster::prepare(
        Flavor::Keel,
        3,
        &[
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
            "--peer-trusted-ca-file",
            &ca,
            "--peer-client-cert-auth",
        ],
    );
    c.use_https_peers();
    c.start_all();
    wait_published(&c);
    assert!(c.members[0].peer_url().starts_with("https://"));
    put_until_acknowledged(&c, 1, "over-tls", "1");
    assert_converged(&mut c);
    // Plain text on a TLS peer port goes nowhere.
    let leader = c.wait_leader(TIMEOUT);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.members[leader].peer_port))
        .expect("connect peer port");
    use std::io::{Read, Write};
    let _ = s.write_all(b"KEELRAFT");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || !buf[..n].starts_with(b"KEEL"),
        "plain text was answered"
    );
    let deadline = Instant::now() + TIMEOUT;
    while !c.log_tail(leader, 50).contains("peer TLS handshake failed") {
        assert!(Instant::now() < deadline, "{}", c.log_tail(leader, 20));
        std::thread::sleep(Duration::from_millis(50));
    }
    put_until_acknowledged(&c, 2, "still-fine", "1");
}

/// etcdctl (v3) as a long-running process on member `i`, its stdout lines on a channel.
fn etcdctl_proc(c: &Cluster, i: usize, args: &[&str]) -> keel_tests::ctl::LineProc {
    let mut cmd = std::process::Command::new(keel_tests::server::etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.members[i].endpoint()))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    keel_tests::ctl::LineProc::from_command(cmd)
}

#[test]
fn watches_and_leases_on_a_follower_survive_a_leader_change() {
    let mut c = Cluster::start(Flavor::Keel, 3, &[]);
    let leader = c.wait_leader(TIMEOUT);
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let watch = etcdctl_proc(&c, follower, &["watch", "--prefix", "w/"]);
    // A lease granted and kept alive through the follower: the keep-alives reach the
    // leader through the log.
    let (ok, out) = c.etcdctl(follower, &["lease", "grant", "3"]);
    assert!(ok, "{out}");
    let lease = out.split_whitespace().nth(1).expect("lease id").to_string();
    let keepalive = etcdctl_proc(&c, follower, &["lease", "keep-alive", &lease]);
    put_until_acknowledged(&c, leader, "leased", "1");
    let (ok, out) = c.etcdctl(follower, &["put", "leased", "1", "--lease", &lease]);
    assert!(ok, "{out}");
    for n in 1..=5 {
        put_until_acknowledged(&c, leader, &format!("w/{n}"), &format!("v{n}"));
    }
    c.kill(leader);
    for n in 6..=10 {
        put_until_acknowledged(&c, other, &format!("w/{n}"), &format!("v{n}"));
    }
    // Every event, in order, on the follower's watch across the leader change.
    let lines = watch.take(30, TIMEOUT);
    let keys: Vec<&String> = lines.iter().skip(1).step_by(3).collect();
    let want: Vec<String> = (1..=10).map(|n| format!("w/{n}")).collect();
    assert_eq!(keys, want.iter().collect::<Vec<_>>(), "{lines:?}");
    assert!(lines.iter().step_by(3).all(|l| l == "PUT"), "{lines:?}");

    // Two TTLs later the lease lives on under the new leader; without keep-alives it
    // expires and takes its key with it.
    std::thread::sleep(Duration::from_secs(6));
    let (ok, out) = c.etcdctl(other, &["lease", "timetolive", &lease]);
    assert!(ok && out.contains("remaining("), "{out}");
    let (_, out) = c.etcdctl(other, &["get", "leased"]);
    assert!(out.contains("leased"), "{out}");
    drop(keepalive);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, out) = c.etcdctl(other, &["get", "leased"]);
        if !out.contains("leased") {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, out) = c.etcdctl(follower, &["lease", "timetolive", &lease]);
    assert!(out.contains("already expired"), "{out}");
}

/// `POST /v2/members` through member `i`.
/// Member `i`'s id (hex) as `etcdctl member list` shows it.
fn listed_id(c: &Cluster, i: usize) -> String {
    let (_, list) = c.etcdctl(0, &["member", "list"]);
    list.lines()
        .find(|l| l.contains(&format!(", {}, ", c.members[i].name)))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("member {i} not in {list}"))
        .to_string()
}

/// Moves member `moved` to a new peer port through `update` (given the new URL; it
/// checks the API's answer), restarts it there, and shows it is reached there: with
/// `other` down, member 0 and the moved member make the majority for a write. `other`
/// then restarts and must find the moved member too.
fn move_member(c: &mut Cluster, moved: usize, other: usize, update: impl FnOnce(&Cluster, &str)) {
    c.kill(moved);
    // If it led, a proposal forwarded to it before the others notice is lost (as in
    // etcd): wait until the remaining two take writes.
    put_until_acknowledged(c, 0, &format!("before-move-{moved}"), "1");
    let port = keel_tests::server::free_port();
    update(c, &format!("http://127.0.0.1:{port}"));
    c.move_peer(moved, port);
    c.spawn(moved);
    c.wait_healthy(moved, TIMEOUT);
    c.kill(other);
    put_until_acknowledged(c, 0, &format!("after-move-{moved}"), "1");
    c.restart(other);
    c.wait_healthy(other, TIMEOUT);
}

#[test]
fn members_move_to_new_peer_urls_with_member_update() {
    let mut c = Cluster::start(Flavor::Keel, 3, &[]);
    wait_published(&c);
    // v3 MemberUpdate (etcdctl member update) moves member 2.
    let id2 = listed_id(&c, 2);
    move_member(&mut c, 2, 1, |c, url| {
        let peer_urls = format!("--peer-urls={url}");
        let (ok, out) = c.etcdctl(0, &["member", "update", &id2, &peer_urls]);
        // (etcdctl pads the id to 16 columns, as etcd's does)
        assert!(
            ok && out.contains(&format!("{id2:>16} updated in cluster")),
            "{out}"
        );
    });

    // v2 PUT /v2/members/<id> (204) moves member 1; another member's URL is a conflict.
    let id1 = listed_id(&c, 1);
    let via = c.members[0].addr();
    let update = |peer: &str| {
        http::send(
            via,
            &Req::new("PUT", &format!("/v2/members/{id1}")).raw_body(
                format!("{{\"peerURLs\":[\"{peer}\"]}}").into_bytes(),
                Some("application/json"),
            ),
            Duration::from_secs(10),
        )
        .expect("PUT /v2/members")
    };
    let r = update(&c.members[2].peer_url());
    assert_eq!(r.status, 409, "{}", r.text());
    move_member(&mut c, 1, 2, |_, url| {
        let r = update(url);
        assert_eq!(r.status, 204, "{}", r.text());
    });
    // Every member lists both moves.
    wait_published(&c);
    assert_converged(&mut c);
}

/// DNS discovery: the members of a new cluster find each other in SRV records
/// (`--discovery-srv`). Only `_etcd-server._tcp` records exist (plain-text peers), which
/// etcd documents as enough; etcd 3.4.23 itself stops here ("error querying DNS SRV
/// records for _etcd-server-ssl … no such host", etcd-io/etcd#11321, a 3.4 regression),
/// so it cannot serve as the reference in this test.
#[test]
fn members_bootstrap_from_dns_srv_records() {
    use keel_tests::dns::{SrvServer, private_resolver, write_resolver_files};
    let domain = "keel.test";
    let dir = tempfile::tempdir().expect("tempdir");
    let dns_ip = "127.0.0.153";
    {
        let flavor = Flavor::Keel;
        let mut c = Cluster::prepare_srv(flavor, 3, domain);
        let targets: Vec<(String, u16)> = (0..3)
            .map(|i| (format!("{}.", c.peer_name(i)), c.members[i].peer_port))
            .collect();
        let dns = SrvServer::start(
            dns_ip,
            vec![(format!("_etcd-server._tcp.{domain}."), targets)],
        );
        let names: Vec<String> = (0..3).map(|i| c.peer_name(i)).collect();
        let hosts: Vec<(&str, &str)> = names.iter().map(|n| ("127.0.0.1", n.as_str())).collect();
        let etc = write_resolver_files(dir.path(), dns.addr, &hosts);
        c.wrap(private_resolver(&etc));
        c.start_all();
        // Every member published its name with the peer URL from DNS.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (ok, list) = c.etcdctl(0, &["member", "list"]);
            let all = (0..3).all(|i| {
                list.contains(&format!(
                    ", started, {}, http://{}:{}, {}, false",
                    c.members[i].name,
                    c.peer_name(i),
                    c.members[i].peer_port,
                    c.members[i].client_url()
                ))
            });
            if ok && all {
                break;
            }
            assert!(Instant::now() < deadline, "{flavor:?}: {list}");
            std::thread::sleep(Duration::from_millis(50));
        }
        put_until_acknowledged(&c, 2, "found-in-dns", "yes");
        assert_converged(&mut c);
        let asked = dns.queries.lock().expect("queries").clone();
        for service in ["_etcd-server-ssl", "_etcd-server"] {
            let q = format!("{service}._tcp.{domain}.");
            assert!(
                asked.contains(&q),
                "{flavor:?} never asked for {q}: {asked:?}"
            );
        }
        // Member ids are etcd's, computed from the URLs the records give.
        for i in 0..3 {
            let url = format!("http://{}:{}", c.peer_name(i), c.members[i].peer_port);
            let id = keel_store::cluster::member_id(&[url], "keel-test-cluster");
            assert_eq!(listed_id(&c, i), format!("{id:x}"));
        }
    }

    // A member whose address is in no record refuses to start and says why.
    let mut c = Cluster::prepare_srv(Flavor::Keel, 1, domain);
    let dns = SrvServer::start(
        dns_ip,
        vec![(
            format!("_etcd-server._tcp.{domain}."),
            vec![("elsewhere.keel.test.".to_string(), 1)],
        )],
    );
    let etc = write_resolver_files(
        dir.path(),
        dns.addr,
        &[
            ("127.0.0.9", "elsewhere.keel.test"),
            ("127.0.0.1", "m0.keel.test"),
        ],
    );
    c.wrap(private_resolver(&etc));
    c.spawn(0);
    let log = c.wait_exit(0, TIMEOUT);
    assert!(
        log.contains("discovery-srv keel.test: no SRV target resolves to this member"),
        "{log}"
    );
}

fn add_v2_member(c: &Cluster, i: usize, peer: &str) -> http::Resp {
    http::send(
        c.members[i].addr(),
        &Req::new("POST", "/v2/members").raw_body(
            format!("{{\"peerURLs\":[\"{peer}\"]}}").into_bytes(),
            Some("application/json"),
        ),
        Duration::from_secs(10),
    )
    .expect("POST /v2/members")
}

#[test]
fn leadership_moves_on_request_and_v2_members_api_changes_membership() {
    let mut c = Cluster::start(Flavor::Keel, 3, &[]);
    wait_published(&c);
    let leader = c.wait_leader(TIMEOUT);
    let target = (leader + 1) % 3;
    let id = listed_id(&c, target);
    // etcdctl move-leader must be sent to the leader (etcdctl checks with Status).
    let (ok, out) = c.etcdctl((leader + 2) % 3, &["move-leader", &id]);
    assert!(!ok && out.contains("no leader endpoint given"), "{out}");
    let (ok, out) = c.etcdctl(leader, &["move-leader", &id]);
    assert!(ok && out.contains("Leadership transferred"), "{out}");
    assert_eq!(c.wait_leader(TIMEOUT), target);

    // v2: POST /v2/members adds (201 with the new member), DELETE removes (204).
    let peer = format!("http://127.0.0.1:{}", keel_tests::server::free_port());
    let r = add_v2_member(&c, 0, &peer);
    assert_eq!(r.status, 201, "{}", r.text());
    let added = r.json().expect("json");
    assert_eq!(added["peerURLs"][0], peer.as_str());
    let new_id = added["id"].as_str().expect("id").to_string();
    // Another member lists it once it has applied the change (GET /v2/members answers
    // from the member's own state, as etcd's does).
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let r = http::send(
            c.members[1].addr(),
            &Req::get("/v2/members"),
            Duration::from_secs(5),
        )
        .expect("GET /v2/members");
        if r.text().contains(&new_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same peer URL again conflicts, as in etcd.
    let r = add_v2_member(&c, 2, &peer);
    assert_eq!(r.status, 409, "{}", r.text());
    // With four voters (one never started) three still make a majority.
    put_until_acknowledged(&c, 2, "with-four", "1");
    let r = http::send(
        c.members[0].addr(),
        &Req::delete(&format!("/v2/members/{new_id}")),
        Duration::from_secs(10),
    )
    .expect("DELETE");
    assert_eq!(r.status, 204, "{}", r.text());
    let (_, list) = c.etcdctl(1, &["member", "list"]);
    assert_eq!(list.trim().lines().count(), 3, "{list}");
}
