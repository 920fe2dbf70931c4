//! keel-store's command line as an etcd operator uses it: etcd's flags, Go's
//! single-dash spelling, `ETCD_*` variables, and clear refusals.

use keel_tests::Req;
use keel_tests::http::send;
use keel_tests::server::{free_port, keel_store_bin, wait_until_serving};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(port: u16) {
    wait_until_serving(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(30),
    );
}

fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(keel_store_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run keel-store");
    assert!(
        !out.status.success(),
        "keel-store accepted {args:?} {env:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn etcd_environment_and_go_style_flags_configure_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(keel_store_bin())
        // Go's flag package spelling, as in many etcd unit files.
        .args(["-data-dir", dir.path().join("d").to_str().unwrap()])
        .env("ETCD_NAME", "node-a")
        .env("ETCD_LISTEN_CLIENT_URLS", &url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://127.0.0.1:23800")
        .env("ETCD_INITIAL_CLUSTER", "node-a=http://127.0.0.1:23800")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    wait_ready(port);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let members = send(addr, &Req::get("/v2/members"), Duration::from_secs(5)).unwrap();
    let json = members.json().unwrap();
    assert_eq!(json["members"][0]["name"], "node-a");
    assert_eq!(json["members"][0]["clientURLs"][0], url.as_str());
    // Same id etcd derives from this peer URL and the default token.
    assert_eq!(json["members"][0]["id"], "2e1259d415f2a040");
    assert_eq!(members.header("x-etcd-cluster-id"), Some("48276a8f75b6a87"));
    assert!(
        dir.path().join("d/member/wal").is_dir(),
        "--data-dir honoured"
    );
}

#[test]
fn unknown_and_unsupported_flags_are_refused_clearly() {
    let e = refused(&["--no-such-flag"], &[]);
    assert!(e.contains("--no-such-flag"), "{e}");
    let e = refused(&["--auto-tls"], &[]);
    assert!(
        e.contains("--auto-tls") && e.contains("does not support yet"),
        "{e}"
    );
    let e = refused(&["--cert-file", "/x.pem"], &[]);
    assert!(e.contains("--key-file"), "{e}");
    let e = refused(&["--listen-client-urls", "https://127.0.0.1:1"], &[]);
    assert!(e.contains("--cert-file"), "{e}");
    let e = refused(
        &[
            "--initial-cluster",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "--name",
            "a",
        ],
        &[],
    );
    assert!(e.contains("--initial-cluster"), "{e}");
    let e = refused(&["--snapshot-count", "lots"], &[]);
    assert!(e.contains("--snapshot-count"), "{e}");
    let e = refused(&[], &[("ETCD_SNAPSHOT_COUNTT", "5")]);
    assert!(e.contains("ETCD_SNAPSHOT_COUNTT"), "{e}");
    let e = refused(&[], &[("ETCD_ELECTION_TIMEOUT", "100")]);
    assert!(e.contains("--election-timeout"), "{e}");
}
