//! `keel-locksmith fleetlock-server` (the real binary, backed by keel-store): the
//! FleetLock protocol's exact requests, responses and errors, the shared locksmith
//! semaphore behind it, and Keel's FleetLock client against it.

use keel_locksmith::fleetlock::client::{FleetLockClient, FleetLockError};
use keel_tests::server::{free_port, keel_locksmith_bin, wait_until_serving};
use keel_tests::v3::run;
use keel_tests::{Flavor, Server};
use serde_json::{Value, json};
use std::time::Duration;

struct Fleet {
    _server: Server,
    lock: std::process::Child,
    base: String,
    etcd: etcd_client::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.lock.kill();
        let _ = self.lock.wait();
    }
}

async fn start() -> Fleet {
    let server = Server::start(Flavor::Keel);
    let port = free_port();
    let lock = std::process::Command::new(keel_locksmith_bin())
        .args(["fleetlock-server", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--endpoint", &server.client_url()])
        .spawn()
        .unwrap();
    wait_until_serving(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(20),
    );
    let etcd = etcd_client::Client::connect([server.client_url()], None)
        .await
        .unwrap();
    Fleet {
        _server: server,
        lock,
        base: format!("http://127.0.0.1:{port}"),
        etcd,
    }
}

async fn post(
    base: &str,
    path: &str,
    header: Option<&str>,
    body: &str,
) -> (u16, String, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body(body.to_string());
    if let Some(h) = header {
        req = req.header("fleet-lock-protocol", h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), ctype)
}

fn params(id: &str, group: &str) -> String {
    json!({"client_params": {"id": id, "group": group}}).to_string()
}

fn kind(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "only kind and value: {body}");
    (
        v["kind"].as_str().unwrap().to_string(),
        v["value"].as_str().unwrap().to_string(),
    )
}

async fn semaphore(etcd: &etcd_client::Client, key: &str) -> String {
    let resp = etcd.clone().get(key, None).await.unwrap();
    String::from_utf8(resp.kvs()[0].value().to_vec()).unwrap()
}

const KEY: &str = "coreos.com/updateengine/rebootlock/semaphore";

#[test]
fn protocol_requests_responses_and_errors() {
    run(|| async {
        let f = start().await;
        let b = f.base.as_str();
        // A client that does not speak FleetLock: no header, or a wrong one.
        let (s, body, ctype) = post(b, "/v1/pre-reboot", None, &params("a", "default")).await;
        assert_eq!(
            (s, kind(&body).0.as_str()),
            (400, "invalid_protocol_header"),
            "{body}"
        );
        assert_eq!(ctype.as_deref(), Some("application/json"));
        let (s, body, _) = post(
            b,
            "/v1/steady-state",
            Some("false"),
            &params("a", "default"),
        )
        .await;
        assert_eq!(
            (s, kind(&body).0.as_str()),
            (400, "invalid_protocol_header")
        );
        // Bad identities.
        for bad in [
            "not json".to_string(),
            json!({"client_params": {"id": "a"}}).to_string(),
            params("", "default"),
            params("a", ""),
            params("a", "bad group!"),
            params("a", "prod/db"),
        ] {
            let (s, body, _) = post(b, "/v1/pre-reboot", Some("true"), &bad).await;
            assert_eq!(
                (s, kind(&body).0.as_str()),
                (400, "invalid_client_identity"),
                "{bad}: {body}"
            );
        }
        // Lock: 200 with no body, recorded in locksmith's semaphore (group default = the
        // default locksmith group).
        let (s, body, _) = post(
            b,
            "/v1/pre-reboot",
            Some("true"),
            &params("node-a", "default"),
        )
        .await;
        assert_eq!((s, body.as_str()), (200, ""));
        assert_eq!(
            semaphore(&f.etcd, KEY).await,
            r#"{"semaphore":0,"max":1,"holders":["node-a"]}"#
        );
        // Recursive lock by the holder.
        let (s, _, _) = post(
            b,
            "/v1/pre-reboot",
            Some("true"),
            &params("node-a", "default"),
        )
        .await;
        assert_eq!(s, 200);
        // Full.
        let (s, body, _) = post(
            b,
            "/v1/pre-reboot",
            Some("true"),
            &params("node-b", "default"),
        )
        .await;
        let (k, v) = kind(&body);
        assert_eq!(
            (s, k.as_str()),
            (409, "failed_lock_semaphore_full"),
            "{body}"
        );
        assert!(v.contains("semaphore currently full"), "{v}");
        // Unlock of a non-holder is fine (UnlockIfHeld); the holder's unlock frees the slot.
        let (s, _, _) = post(
            b,
            "/v1/steady-state",
            Some("true"),
            &params("node-b", "default"),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _, _) = post(
            b,
            "/v1/steady-state",
            Some("true"),
            &params("node-a", "default"),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(
            semaphore(&f.etcd, KEY).await,
            r#"{"semaphore":1,"max":1,"holders":[]}"#
        );
        // Other groups use locksmith's group keys.
        let (s, _, _) = post(
            b,
            "/v1/pre-reboot",
            Some("true"),
            &params("w1", "workers.eu-1"),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(
            semaphore(
                &f.etcd,
                "coreos.com/updateengine/rebootlock/groups/workers.eu-1/semaphore"
            )
            .await,
            r#"{"semaphore":0,"max":1,"holders":["w1"]}"#
        );
        // Wrong method, unknown path.
        let resp = reqwest::get(format!("{b}/v1/pre-reboot")).await.unwrap();
        assert_eq!(resp.status().as_u16(), 405);
        assert_eq!(kind(&resp.text().await.unwrap()).0, "method_not_allowed");
        let (s, body, _) = post(b, "/v2/pre-reboot", Some("true"), &params("a", "default")).await;
        assert_eq!((s, kind(&body).0.as_str()), (404, "not_found"));
        // A paused group refuses.
        let out = std::process::Command::new(keel_locksmith_bin())
            .args([
                "--endpoint",
                &f._server.client_url(),
                "pause",
                "--reason",
                "db migration",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let (s, body, _) = post(
            b,
            "/v1/pre-reboot",
            Some("true"),
            &params("node-c", "default"),
        )
        .await;
        let (k, v) = kind(&body);
        assert_eq!((s, k.as_str()), (409, "group_paused"));
        assert!(v.contains("db migration"), "{v}");
    });
}

#[test]
fn keel_fleetlock_client_against_the_server() {
    run(|| async {
        let f = start().await;
        let a = FleetLockClient::new(f.base.clone(), "default".into(), "host-a".into()).unwrap();
        let b = FleetLockClient::new(format!("{}/", f.base), "default".into(), "host-b".into())
            .unwrap();
        a.pre_reboot().await.unwrap();
        a.pre_reboot().await.unwrap();
        match b.pre_reboot().await {
            Err(FleetLockError::Refused { status, kind, .. }) => {
                assert_eq!((status, kind.as_str()), (409, "failed_lock_semaphore_full"))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        a.steady_state().await.unwrap();
        b.pre_reboot().await.unwrap();
        assert_eq!(
            semaphore(&f.etcd, KEY).await,
            r#"{"semaphore":0,"max":1,"holders":["host-b"]}"#
        );
        assert!(FleetLockClient::new("ftp://x".into(), "default".into(), "h".into()).is_err());
    });
}

#[test]
fn daemon_with_strategy_fleet_lock() {
    run(|| async {
        let f = start().await;
        let dir = tempfile::tempdir().unwrap();
        let host = keel_locksmith::sim::SimHost::create(dir.path(), 0).unwrap();
        let daemon = || {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(host.root.join("daemon.log"))
                .unwrap();
            tokio::process::Command::new(keel_locksmith_bin())
                .args(["daemon", "--no-dbus", "--reboot-method", "exit", "--root"])
                .arg(&host.root)
                .args(["--strategy", "fleet-lock", "--endpoint", &f.base])
                .args(["--retry-interval", "200ms", "--login-delay", "0s"])
                .env("LOCKSMITHD_FLEETLOCK_GROUP", "workers")
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        };
        let status = tokio::time::timeout(Duration::from_secs(30), daemon().wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(75), "{}", host.log());
        let key = "coreos.com/updateengine/rebootlock/groups/workers/semaphore";
        assert_eq!(
            semaphore(&f.etcd, key).await,
            format!(r#"{{"semaphore":0,"max":1,"holders":["{}"]}}"#, host.id)
        );
        // Back up on the target version: steady-state releases the slot.
        host.new_boot(keel_locksmith::sim::TARGET_VERSION).unwrap();
        let mut d = daemon();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while semaphore(&f.etcd, key).await != r#"{"semaphore":1,"max":1,"holders":[]}"# {
            assert!(
                std::time::Instant::now() < deadline,
                "not released:\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = d.start_kill();
    });
}
