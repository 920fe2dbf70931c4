//! etcdctl 3.4 with the endpoint written as a URL (`--endpoints=http://127.0.0.1:PORT`)
//! dials a second gRPC connection for `endpoint status`, `endpoint hashkv`, `defrag` and
//! `move-leader` whose HTTP/2 `:authority` is that whole URL; keel-store must serve
//! those requests as etcd does (`store/src/http/h2_authority/`). Every check also runs
//! against etcd, the oracle, so a wrong expectation shows up there first.
//!
//! Run: `cargo test -p keel-tests --test store_h2_authority`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use keel_tests::ctl::{self, CtlOut};
use keel_tests::server::etcdctl_bin;
use keel_tests::{Flavor, Server};
use serde_json::Value;

/// How long one etcdctl command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a watcher may take to report a put.
const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

fn etcdctl(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(etcdctl_bin());
    c.env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run etcdctl (v3) against `server`'s URL and insist that it succeeds.
fn ok(server: &Server, args: &[&str]) -> String {
    let mut child = etcdctl(&server.client_url(), args)
        .spawn()
        .expect("spawn etcdctl");
    let out: CtlOut = ctl::collect(&mut child, Instant::now() + CMD_TIMEOUT);
    assert!(
        out.code == Some(0) && !out.timed_out,
        "{}: `etcdctl --endpoints={} {}` failed: {}\n--- server log tail ---\n{}",
        server.flavor.name(),
        server.client_url(),
        args.join(" "),
        out.render(),
        server.log_tail(20)
    );
    out.stdout
}

/// `etcdctl … -w json` output, parsed.
fn json(server: &Server, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let out = ok(server, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn maintenance_commands(flavor: Flavor) {
    let server = Server::start(flavor);
    let url = server.client_url();
    ok(&server, &["put", "k", "v"]);

    let status = json(&server, &["endpoint", "status"]);
    assert_eq!(status[0]["Endpoint"], url.as_str(), "{status}");
    assert!(
        status[0]["Status"]["header"]["member_id"]
            .as_u64()
            .is_some(),
        "{status}"
    );
    assert!(
        status[0]["Status"]["header"]["revision"].as_i64() >= Some(2),
        "{status}"
    );

    let text = ok(&server, &["endpoint", "status"]);
    assert!(text.starts_with(&format!("{url}, ")), "{text}");

    let hash = json(&server, &["endpoint", "hashkv"]);
    assert_eq!(hash[0]["Endpoint"], url.as_str(), "{hash}");
    let text = ok(&server, &["endpoint", "hashkv"]);
    assert!(text.starts_with(&format!("{url}, ")), "{text}");

    let text = ok(&server, &["defrag"]);
    assert_eq!(
        text.trim(),
        format!("Finished defragmenting etcd member[{url}]")
    );

    // The data is intact after all that.
    assert_eq!(ok(&server, &["get", "k", "--print-value-only"]).trim(), "v");
}

#[test]
fn keel_serves_maintenance_commands_on_a_url_endpoint() {
    maintenance_commands(Flavor::Keel);
}

#[test]
fn etcd_serves_maintenance_commands_on_a_url_endpoint() {
    maintenance_commands(Flavor::Etcd);
}

/// A background `etcdctl watch` whose stdout lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: Receiver<String>,
}

impl Watcher {
    fn spawn(server: &Server, key: &str) -> Watcher {
        let mut child = etcdctl(&server.client_url(), &["watch", key])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kv_and_watch(flavor: Flavor) {
    let server = Server::start(flavor);
    assert_eq!(ok(&server, &["put", "a", "1"]).trim(), "OK");
    assert_eq!(ok(&server, &["get", "a"]), "a\n1\n");
    let range = json(&server, &["get", "", "--prefix"]);
    assert_eq!(range["count"], 1, "{range}");

    // The watcher may not be registered yet when a put lands: put until it reports one.
    let watcher = Watcher::spawn(&server, "w");
    let deadline = Instant::now() + WATCH_TIMEOUT;
    let mut n = 0;
    let first = loop {
        n += 1;
        ok(&server, &["put", "w", &format!("v{n}")]);
        match watcher.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => break line,
            Err(_) => assert!(
                Instant::now() < deadline,
                "{}: watch on a URL endpoint saw no put",
                flavor.name()
            ),
        }
    };
    assert_eq!(first, "PUT");
    let key = watcher.lines.recv_timeout(WATCH_TIMEOUT).expect("key line");
    let value = watcher
        .lines
        .recv_timeout(WATCH_TIMEOUT)
        .expect("value line");
    assert_eq!(key, "w");
    assert!(value.starts_with('v'), "{value}");
    ok(&server, &["put", "w", "last"]);
    // Puts made while the watcher started may still be queued ahead of the last one.
    let mut lines: Vec<String> = Vec::new();
    while lines.last().map(String::as_str) != Some("last") {
        let line = watcher
            .lines
            .recv_timeout(WATCH_TIMEOUT)
            .unwrap_or_else(|_| panic!("{}: no event for the last put: {lines:?}", flavor.name()));
        lines.push(line);
    }
    assert_eq!(&lines[lines.len() - 3..], ["PUT", "w", "last"]);
}

#[test]
fn keel_serves_kv_and_watch_on_a_url_endpoint() {
    kv_and_watch(Flavor::Keel);
}

#[test]
fn etcd_serves_kv_and_watch_on_a_url_endpoint() {
    kv_and_watch(Flavor::Etcd);
}
