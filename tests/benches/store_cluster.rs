//! 3-member cluster benchmark, etcd 3.4 vs keel-store on this machine in one run:
//! `cargo build --release --bins && cargo bench -p keel-tests --bench store_cluster`.
//!
//! For each implementation: a 3-member cluster on loopback (both with
//! `--heartbeat-interval 50 --election-timeout 500`), then `keel-store bench` (v3 gRPC)
//! against the leader: puts with 1 and 16 clients, linearizable ranges with 1 and 16
//! clients; then `KEEL_BENCH_FAILOVERS` (default 5) leader kills, each timed from the
//! SIGKILL to the first write acknowledged by another member (v2 PUTs of at most 100 ms
//! each, retried every 5 ms), the killed member restarted between rounds; then as many
//! rounds of a request in flight when the leader dies: the leader frozen (SIGSTOP), a v2
//! PUT or quorum GET sent through a follower (no client retry, 15 s client timeout), the
//! leader SIGKILLed 250 ms later, timed from the kill to the answer. Prints a Markdown
//! table.

use keel_tests::Flavor;
use keel_tests::cluster::Cluster;
use keel_tests::http::{self, Req};
use keel_tests::server::keel_store_bin;
use nix::sys::signal::Signal;
use std::process::Command;
use std::time::{Duration, Instant};

struct Run {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn bench(endpoint: &str, workload: &str, clients: usize, conns: usize) -> Run {
    let out = Command::new(keel_store_bin())
        .args([
            "bench",
            "--endpoint",
            endpoint,
            "--api",
            "v3",
            "--workload",
            workload,
            "--clients",
            &clients.to_string(),
            "--conns",
            &conns.to_string(),
            "--duration",
            "8s",
            "--key-space",
            "1000",
            "--format",
            "json",
        ])
        .output()
        .expect("run keel-store bench");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from bench: {text}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("bench json");
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    assert_eq!(f("errors"), 0.0, "errors in {line}");
    Run {
        ops_per_sec: f("ops_per_sec"),
        p50_ms: f("p50_us") / 1000.0,
        p99_ms: f("p99_us") / 1000.0,
    }
}

fn failover(c: &mut Cluster) -> Duration {
    let leader = c.wait_leader(Duration::from_secs(30));
    let other = (leader + 1) % c.members.len();
    let addr = c.members[other].addr();
    let killed = Instant::now();
    c.kill(leader);
    loop {
        if let Ok(r) = http::send(
            addr,
            &Req::put("/v2/keys/failover", "value=1"),
            // Short attempts: a proposal forwarded to the dead leader is lost, and
            // waiting it out would measure the client's timeout, not the failover.
            Duration::from_millis(100),
        ) && (r.status == 200 || r.status == 201)
        {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    c.spawn(leader);
    c.wait_healthy(leader, Duration::from_secs(30));
    took
}

/// Time from the leader's SIGKILL to the answer of `req`, sent through a follower
/// while the leader was frozen, and the answer (status, v2 error code).
fn in_flight(c: &mut Cluster, req: Req) -> (Duration, String) {
    let leader = c.wait_leader(Duration::from_secs(30));
    let addr = c.members[(leader + 1) % c.members.len()].addr();
    c.signal(leader, Signal::SIGSTOP);
    let client = std::thread::spawn(move || http::send(addr, &req, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(250));
    let killed = Instant::now();
    c.kill(leader);
    let answer = match client.join().expect("client thread") {
        Ok(r) => {
            let code = r.json().and_then(|b| b["errorCode"].as_u64());
            match code {
                Some(code) => format!("{} (error {code})", r.status),
                None => r.status.to_string(),
            }
        }
        Err(e) => e.kind().to_string(),
    };
    let took = killed.elapsed();
    c.spawn(leader);
    c.wait_healthy(leader, Duration::from_secs(30));
    (took, answer)
}

/// "median (min–max) ms, answers" of in-flight rounds.
fn summarize(mut runs: Vec<(Duration, String)>) -> String {
    runs.sort_by_key(|(d, _)| *d);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut answers: Vec<String> = runs.iter().map(|(_, a)| a.clone()).collect();
    answers.sort();
    answers.dedup();
    format!(
        "{:.0} ({:.0}–{:.0}), {}",
        ms(runs[runs.len() / 2].0),
        ms(runs[0].0),
        ms(runs[runs.len() - 1].0),
        answers.join(", ")
    )
}

fn main() {
    let rounds: usize = std::env::var("KEEL_BENCH_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |name: &str, value: String| match rows.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(value),
        None => rows.push((name.to_string(), vec![value])),
    };
    for flavor in [Flavor::Etcd, Flavor::Keel] {
        let mut c = Cluster::start(flavor, 3, &[]);
        let leader = c.wait_leader(Duration::from_secs(30));
        let endpoint = c.members[leader].client_url();
        for (label, workload, clients, conns) in [
            ("put, 1 client", "put", 1, 1),
            ("put, 16 clients / 4 conns", "put", 16, 4),
            ("range (linearizable), 1 client", "get", 1, 1),
            ("range (linearizable), 16 clients / 4 conns", "get", 16, 4),
        ] {
            let r = bench(&endpoint, workload, clients, conns);
            eprintln!(
                "{}: {label}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
                flavor.name(),
                r.ops_per_sec,
                r.p50_ms,
                r.p99_ms
            );
            push(&format!("{label}: ops/s"), format!("{:.0}", r.ops_per_sec));
            push(
                &format!("{label}: p50 / p99 (ms)"),
                format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms),
            );
        }
        let mut times: Vec<Duration> = (0..rounds).map(|_| failover(&mut c)).collect();
        times.sort();
        eprintln!("{}: failovers {times:?}", flavor.name());
        push(
            "leader SIGKILL → first acknowledged write: median (ms)",
            format!("{:.0}", times[times.len() / 2].as_secs_f64() * 1000.0),
        );
        push(
            "leader SIGKILL → first acknowledged write: min / max (ms)",
            format!(
                "{:.0} / {:.0}",
                times[0].as_secs_f64() * 1000.0,
                times[times.len() - 1].as_secs_f64() * 1000.0
            ),
        );
        for (label, req) in [
            ("v2 PUT", Req::put("/v2/keys/in-flight", "value=1")),
            ("v2 quorum GET", Req::get("/v2/keys/failover?quorum=true")),
        ] {
            let runs: Vec<(Duration, String)> = (0..rounds)
                .map(|_| in_flight(&mut c, req.clone()))
                .collect();
            eprintln!("{}: {label} in flight {runs:?}", flavor.name());
            push(
                &format!(
                    "{label} in flight at leader SIGKILL → answer: median (min–max) ms, status"
                ),
                summarize(runs),
            );
        }
    }
    println!("| 3-member cluster | etcd 3.4.23 | keel-store |");
    println!("|---|---:|---:|");
    for (name, v) in rows {
        println!("| {name} | {} |", v.join(" | "));
    }
}
