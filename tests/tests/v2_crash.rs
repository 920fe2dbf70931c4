//! Crash safety of keel-store: SIGKILL at random moments under concurrent writers, then
//! restart and check that nothing acknowledged was lost, no index was handed out twice
//! and `X-Etcd-Index` never went back; and a damaged WAL or snapshot makes the store
//! refuse to start with a message naming the file and offset.

use keel_tests::http::send;
use keel_tests::server::wait_until_serving;
use keel_tests::{Flavor, Req, Server};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const WRITERS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A write the server acknowledged: key → (value, modifiedIndex).
type Acked = HashMap<String, (String, u64)>;

fn list_all(server: &Server) -> (u64, Vec<(String, String, u64)>) {
    let resp = send(
        server.addr(),
        &Req::get("/v2/keys/crash?recursive=true"),
        REQUEST_TIMEOUT,
    )
    .expect("listing after restart");
    let index = resp.etcd_index().expect("X-Etcd-Index on listing");
    if resp.status == 404 {
        return (index, Vec::new());
    }
    assert_eq!(resp.status, 200, "listing: {}", resp.render());
    let json = resp.json().expect("listing is JSON");
    let mut out = Vec::new();
    fn walk(n: &serde_json::Value, out: &mut Vec<(String, String, u64)>) {
        if let Some(children) = n.get("nodes").and_then(|v| v.as_array()) {
            for c in children {
                walk(c, out);
            }
        } else if let Some(v) = n.get("value").and_then(|v| v.as_str()) {
            out.push((
                n["key"].as_str().unwrap().to_string(),
                v.to_string(),
                n["modifiedIndex"].as_u64().unwrap(),
            ));
        }
    }
    walk(&json["node"], &mut out);
    (index, out)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut server = Server::start(Flavor::Keel);
    let mut acked: Acked = HashMap::new();
    let mut index_owner: HashMap<u64, String> = HashMap::new();
    let mut max_seen_index = 0u64;

    for round in 0..ROUNDS {
        let addr = server.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let round_acked = Arc::new(Mutex::new(Vec::new()));
        let max_index = Arc::new(Mutex::new(0u64));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (stop, count, round_acked, max_index) = (
                stop.clone(),
                count.clone(),
                round_acked.clone(),
                max_index.clone(),
            );
            writers.push(std::thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("/crash/r{round}/w{w}/k{seq}");
                    let value = format!("v{round}-{w}-{seq}");
                    let req = Req::put(&format!("/v2/keys{key}"), &format!("value={value}"));
                    match send(addr, &req, REQUEST_TIMEOUT) {
                        Ok(resp) if resp.status == 201 => {
                            let json = resp.json().expect("JSON body");
                            let index = json["node"]["modifiedIndex"].as_u64().expect("index");
                            let header = resp.etcd_index().expect("X-Etcd-Index");
                            let mut m = max_index.lock().unwrap();
                            *m = (*m).max(header);
                            round_acked.lock().unwrap().push((key, value, index));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(resp) => panic!("unexpected answer to {key}: {}", resp.render()),
                        // The server was killed under us: this write is unacknowledged.
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill after a random number of acknowledged writes (a random moment).
        let target = fastrand::usize(5..400);
        let deadline = Instant::now() + Duration::from_secs(60);
        while count.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: writers made no progress"
            );
            std::thread::yield_now();
        }
        server.kill(Signal::SIGKILL);
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
        for (key, value, index) in round_acked.lock().unwrap().drain(..) {
            acked.insert(key, (value, index));
        }
        max_seen_index = max_seen_index.max(*max_index.lock().unwrap());

        server.restart();
        let (index_now, nodes) = list_all(&server);
        assert!(
            index_now >= max_seen_index,
            "round {round}: X-Etcd-Index went back from {max_seen_index} to {index_now}"
        );
        max_seen_index = index_now;
        let present: HashMap<&str, (&str, u64)> = nodes
            .iter()
            .map(|(k, v, i)| (k.as_str(), (v.as_str(), *i)))
            .collect();
        for (key, (value, index)) in &acked {
            let got = present.get(key.as_str());
            assert_eq!(
                got,
                Some(&(value.as_str(), *index)),
                "round {round}: acknowledged write {key}={value}@{index} lost or changed"
            );
        }
        for (key, _, index) in &nodes {
            let owner = index_owner.entry(*index).or_insert_with(|| key.clone());
            assert_eq!(
                owner, key,
                "round {round}: index {index} given to two different writes"
            );
        }
    }
    assert!(
        acked.len() >= ROUNDS * 5,
        "too few writes were made: {}",
        acked.len()
    );
}

fn wal_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("member/wal"))
        .expect("wal dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Start keel-store on `server`'s data dir and ports and expect it to refuse.
fn expect_refusal(server: &Server) -> String {
    let out = Command::new(&server.bin)
        .args(server.args())
        .stdin(Stdio::null())
        .output()
        .expect("run keel-store");
    assert!(
        !out.status.success(),
        "keel-store started on a damaged data dir"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run keel-store on `server`'s data dir and ports with `extra` flags; wait until ready.
fn start_with(server: &Server, extra: &[&str]) -> std::process::Child {
    let child = Command::new(&server.bin)
        .args(server.args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel-store");
    wait_until_serving(server.addr(), Duration::from_secs(30));
    child
}

#[test]
fn flipped_wal_bytes_are_refused_with_file_and_offset() {
    let mut server = Server::start(Flavor::Keel);
    for i in 0..50 {
        let r = send(
            server.addr(),
            &Req::put(&format!("/v2/keys/f/k{i}"), "value=0123456789"),
            REQUEST_TIMEOUT,
        )
        .unwrap();
        assert_eq!(r.status, 201);
    }
    server.kill(Signal::SIGKILL);
    let files = wal_files(&server.data_dir);
    let wal = files.last().expect("a WAL segment").clone();
    let mut bytes = std::fs::read(&wal).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0xA5;
    }
    std::fs::write(&wal, &bytes).unwrap();

    let stderr = expect_refusal(&server);
    assert!(stderr.contains("WAL corrupt"), "stderr: {stderr}");
    assert!(
        stderr.contains(&wal.display().to_string()),
        "message names the file: {stderr}"
    );
    assert!(
        stderr.contains("offset"),
        "message names the offset: {stderr}"
    );
    // The damaged file is left exactly as found, for the operator.
    assert_eq!(std::fs::read(&wal).unwrap(), bytes);
}

#[test]
fn torn_tail_is_truncated_and_acknowledged_writes_kept() {
    let mut server = Server::start(Flavor::Keel);
    for i in 0..20 {
        let r = send(
            server.addr(),
            &Req::put(&format!("/v2/keys/t/k{i}"), "value=x"),
            REQUEST_TIMEOUT,
        )
        .unwrap();
        assert_eq!(r.status, 201);
    }
    server.kill(Signal::SIGKILL);
    // Simulate a crash in the middle of writing one more frame.
    let wal = wal_files(&server.data_dir).pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, b"KWAL\x40\x00\x00\x00partial").unwrap();
    drop(f);
    server.restart();
    let (index, nodes) = {
        let r = send(
            server.addr(),
            &Req::get("/v2/keys/t?recursive=true"),
            REQUEST_TIMEOUT,
        )
        .unwrap();
        (
            r.etcd_index().unwrap(),
            r.json().unwrap()["node"]["nodes"].as_array().unwrap().len(),
        )
    };
    assert_eq!((index, nodes), (20, 20));
    let r = send(
        server.addr(),
        &Req::put("/v2/keys/t/after", "value=y"),
        REQUEST_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.etcd_index(), Some(21));
}

#[test]
fn snapshots_bound_the_wal_and_restore_state() {
    let mut server = Server::start(Flavor::Keel);
    let addr = server.addr();
    // keel-store's --snapshot-count is honoured: restart with a small one.
    server.kill(Signal::SIGTERM);
    let mut child = start_with(&server, &["--snapshot-count", "100"]);
    for i in 0..1000 {
        let r = send(
            addr,
            &Req::put(&format!("/v2/keys/s/k{}", i % 300), &format!("value={i}")),
            REQUEST_TIMEOUT,
        )
        .unwrap();
        assert!(r.status == 200 || r.status == 201);
    }
    // Snapshots are written in the background; wait for the WAL to be compacted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal_files(&server.data_dir).len() > 3 {
        assert!(
            Instant::now() < deadline,
            "WAL never compacted: {:?}",
            wal_files(&server.data_dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let snaps = std::fs::read_dir(server.data_dir.join("member/snap"))
        .unwrap()
        .count();
    assert!(snaps >= 1, "no snapshot written");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    server.restart();
    let r = send(
        addr,
        &Req::get("/v2/keys/s?recursive=true&sorted=true"),
        REQUEST_TIMEOUT,
    )
    .unwrap();
    assert_eq!(r.etcd_index(), Some(1000));
    let nodes = r.json().unwrap()["node"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(nodes.len(), 300);
    let k299 = nodes.iter().find(|n| n["key"] == "/s/k299").unwrap();
    assert_eq!(k299["value"], "899");
}

#[test]
fn corrupt_snapshot_is_refused_with_its_name() {
    let mut server = Server::start(Flavor::Keel);
    server.kill(Signal::SIGTERM);
    let addr = server.addr();
    let mut child = start_with(&server, &["--snapshot-count", "10"]);
    for i in 0..30 {
        send(
            addr,
            &Req::put(&format!("/v2/keys/c/k{i}"), "value=x"),
            REQUEST_TIMEOUT,
        )
        .unwrap();
    }
    let snap_dir = server.data_dir.join("member/snap");
    let deadline = Instant::now() + Duration::from_secs(30);
    let snap = loop {
        let mut snaps: Vec<PathBuf> = std::fs::read_dir(&snap_dir)
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "snap"))
                    .collect()
            })
            .unwrap_or_default();
        snaps.sort();
        if let Some(s) = snaps.pop() {
            break s;
        }
        assert!(Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    snaps.sort();
    let newest = snaps.pop().unwrap_or(snap);
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xFF;
    std::fs::write(&newest, &bytes).unwrap();
    let stderr = expect_refusal(&server);
    assert!(
        stderr.contains(&newest.display().to_string()),
        "names the snapshot: {stderr}"
    );
}
