//! keel-store over TLS with etcd's flags: `https://` client URLs, `--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, for the v2 and v3 APIs,
//! exercised with Debian's etcdctl; a client with no or a foreign certificate is refused.

use keel_tests::pki::Pki;
use keel_tests::server::{etcdctl_bin, free_port, keel_store_bin};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(pki: &Pki, client_cert_auth: bool) -> (Running, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(keel_store_bin());
    cmd.args([
        "--data-dir",
        data.path().to_str().unwrap(),
        "--listen-client-urls",
        &url,
        "--advertise-client-urls",
        &url,
    ])
    .args([
        "--cert-file",
        &pki.file("server.crt"),
        "--key-file",
        &pki.file("server.key"),
    ])
    .args(["--trusted-ca-file", &pki.file("ca.crt")]);
    if client_cert_auth {
        cmd.arg("--client-cert-auth");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Running(child), url, data)
}

fn ctl3(url: &str, pki: &Pki, cert: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .args([
            format!("--endpoints={url}"),
            format!("--cacert={}", pki.file("ca.crt")),
        ])
        .args(["--dial-timeout=2s", "--command-timeout=3s"]);
    if let Some(c) = cert {
        cmd.args([
            format!("--cert={}", pki.file(&format!("{c}.crt"))),
            format!("--key={}", pki.file(&format!("{c}.key"))),
        ]);
    }
    cmd.args(args).output().unwrap()
}

fn wait_healthy(url: &str, pki: &Pki, cert: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctl3(url, pki, cert, &["endpoint", "health"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "keel-store never became healthy over TLS"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_certificates_are_required_when_asked() {
    let pki = Pki::new();
    let (_server, url, _data) = start(&pki, true);
    wait_healthy(&url, &pki, Some("client"));

    let put = ctl3(&url, &pki, Some("client"), &["put", "k", "v"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = ctl3(
        &url,
        &pki,
        Some("client"),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");

    // v2 over the same TLS listener.
    let v2 = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "2")
        .args([
            format!("--endpoints={url}"),
            format!("--ca-file={}", pki.file("ca.crt")),
        ])
        .args([
            format!("--cert-file={}", pki.file("client.crt")),
            format!("--key-file={}", pki.file("client.key")),
        ])
        .args(["--no-sync", "set", "/tls", "yes"])
        .output()
        .unwrap();
    assert!(
        v2.status.success(),
        "{}",
        String::from_utf8_lossy(&v2.stderr)
    );

    let anonymous = ctl3(&url, &pki, None, &["get", "k"]);
    assert!(
        !anonymous.status.success(),
        "a client without a certificate was served"
    );
    let stranger = ctl3(&url, &pki, Some("stranger"), &["get", "k"]);
    assert!(
        !stranger.status.success(),
        "a certificate from an untrusted CA was accepted"
    );
}

#[test]
fn tls_without_client_auth_serves_any_client() {
    let pki = Pki::new();
    let (_server, url, _data) = start(&pki, false);
    wait_healthy(&url, &pki, None);
    assert!(ctl3(&url, &pki, None, &["put", "a", "1"]).status.success());
    let get = ctl3(&url, &pki, None, &["get", "a", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "1");
}

fn locksmith(url: &str, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(keel_tests::server::keel_locksmith_bin());
    cmd.args(["--endpoint", url]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

#[test]
fn locksmith_over_mutual_tls_and_ca_only() {
    let pki = Pki::new();
    let (_server, url, _data) = start(&pki, true);
    wait_healthy(&url, &pki, Some("client"));
    // locksmith's flags.
    let tls = [
        "--etcd-cafile",
        &pki.file("ca.crt"),
        "--etcd-certfile",
        &pki.file("client.crt"),
        "--etcd-keyfile",
        &pki.file("client.key"),
    ];
    let lock = locksmith(&url, &[], &[&tls[..], &["lock", "m1"]].concat());
    assert!(
        lock.status.success(),
        "{}",
        String::from_utf8_lossy(&lock.stderr)
    );
    // locksmithctl's environment variables.
    let env = [
        ("LOCKSMITHCTL_ETCD_CAFILE", pki.file("ca.crt")),
        ("LOCKSMITHCTL_ETCD_CERTFILE", pki.file("client.crt")),
        ("LOCKSMITHCTL_ETCD_KEYFILE", pki.file("client.key")),
    ];
    let status = locksmith(&url, &env, &["status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.starts_with("Available: 0\nMax: 1\n\nMACHINE ID\nm1\n"),
        "{out}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Without a client certificate the store refuses; the error says where it went.
    let anon = locksmith(&url, &[env[0].clone()], &["status"]);
    assert!(!anon.status.success());
    // A certificate without its key is a configuration error.
    let half = locksmith(&url, &[env[0].clone(), env[1].clone()], &["status"]);
    assert!(String::from_utf8_lossy(&half.stderr).contains("--etcd-certfile and --etcd-keyfile"));

    // CA only (server-verified TLS) works against a store without client auth, which
    // locksmith could not do (Flatcar #948).
    let (_server2, url2, _data2) = start(&pki, false);
    wait_healthy(&url2, &pki, None);
    let ok = locksmith(&url2, &[env[0].clone()], &["lock", "m2"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
