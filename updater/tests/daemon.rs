//! The update agent end to end on a private D-Bus: an Omaha server on loopback offers an
//! update, `AttemptUpdate` starts it, a test client observes update_engine's
//! `StatusUpdate` signals up to `UPDATE_STATUS_UPDATED_NEED_REBOOT` and the Omaha events;
//! after the "reboot" into the new slot the health gate holds the bless until the health
//! command passes, and `GetBootStatus` says so (what keel-locksmith waits for).

mod common;

use axum::extract::State as AxState;
use common::*;
use futures_util::StreamExt;
use keel_tests::dbus::PrivateBus;
use keel_updater::payload::Compression;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Requests = Arc<Mutex<Vec<String>>>;

async fn omaha(payload_url: String, version: &'static str, size: u64) -> (String, Requests) {
    let seen: Requests = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/update/",
            axum::routing::post(
                move |AxState(seen): AxState<Requests>, body: String| {
                    let payload_url = payload_url.clone();
                    async move {
                        let check = body.contains("<updatecheck");
                        seen.lock().unwrap().push(body);
                        let (base, name) = payload_url.rsplit_once('/').unwrap();
                        if check {
                            format!(
                                r#"<?xml version="1.0" encoding="UTF-8"?><response protocol="3.0" server="test"><daystart elapsed_seconds="0"></daystart><app appid="x" status="ok"><ping status="ok"></ping><updatecheck status="ok"><urls><url codebase="{base}/"></url></urls><manifest version="{version}"><packages><package name="{name}" hash="" size="{size}" required="true"></package></packages><actions><action event="postinstall" sha256="" DisablePayloadBackoff="true"></action></actions></manifest></updatecheck></app></response>"#
                            )
                        } else {
                            r#"<?xml version="1.0" encoding="UTF-8"?><response protocol="3.0"><app status="ok"><event status="ok"></event></app></response>"#.to_string()
                        }
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/update/"), seen)
}

fn daemon(t: &TestHost, bus: &PrivateBus, server: &str, extra: &[&str]) -> tokio::process::Child {
    let h = &t.host;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(t.dir.path().join("daemon.log"))
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keel-updater"))
        .arg("--root")
        .arg(&h.root)
        .arg("--disk")
        .arg(&h.disk)
        .arg("--grubenv")
        .arg(&h.grubenv)
        .arg("--state-dir")
        .arg(&h.state_dir)
        .args([
            "--board",
            "amd64-usr",
            "--arch",
            "x86_64",
            "daemon",
            "--server",
            server,
        ])
        .args([
            "--group",
            "beta",
            "--interval",
            "1h",
            "--allow-failed-units",
        ])
        .args(extra)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_for_name(conn: &zbus::Connection) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dbus
        .name_has_owner("com.coreos.update1".try_into().unwrap())
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the daemon never took com.coreos.update1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call<R: serde::de::DeserializeOwned + zbus::zvariant::Type>(
    conn: &zbus::Connection,
    method: &str,
) -> R {
    conn.call_method(
        Some("com.coreos.update1"),
        "/com/coreos/update1",
        Some("com.coreos.update1.Manager"),
        method,
        &(),
    )
    .await
    .unwrap()
    .body()
    .deserialize()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_over_dbus_then_health_gated_bless() {
    let bus = PrivateBus::start();
    let t = TestHost::new();
    std::fs::create_dir_all(t.host.root.join("etc")).unwrap();
    std::fs::write(
        t.host.root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::create_dir_all(t.host.root.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(
        t.host.root.join("proc/sys/kernel/random/boot_id"),
        "boot-1\n",
    )
    .unwrap();
    let img = image(9);
    let p = t.payload("update", &img, "1.1.0", 5, Compression::Zstd);
    let size = std::fs::metadata(&p).unwrap().len();
    let (payload_url, _srv) = serve(std::fs::read(&p).unwrap(), 0).await;
    let (omaha_url, requests) = omaha(payload_url, "1.1.0", size).await;

    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("com.coreos.update1.Manager")
        .unwrap()
        .member("StatusUpdate")
        .unwrap()
        .build();
    let mut signals = zbus::MessageStream::for_match_rule(rule, &conn, Some(1024))
        .await
        .unwrap();
    let mut d = daemon(&t, &bus, &omaha_url, &[]);
    wait_for_name(&conn).await;
    let (_, _, op, _, _): (i64, f64, String, String, i64) = call(&conn, "GetStatus").await;
    assert_eq!(op, "UPDATE_STATUS_IDLE");
    let _: () = call(&conn, "AttemptUpdate").await;

    // Observe the signals up to NEED_REBOOT.
    let mut ops: Vec<String> = Vec::new();
    let mut last_progress = 0.0;
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            m = signals.next() => {
                let m = m.unwrap().unwrap();
                let (_, progress, op, version, _): (i64, f64, String, String, i64) = m.body().deserialize().unwrap();
                if op == "UPDATE_STATUS_DOWNLOADING" {
                    assert!(progress >= last_progress, "progress never goes back");
                    last_progress = progress;
                }
                if ops.last() != Some(&op) {
                    ops.push(op.clone());
                }
                if op == "UPDATE_STATUS_UPDATED_NEED_REBOOT" {
                    assert_eq!(version, "1.1.0");
                    break;
                }
            }
            () = &mut deadline => panic!("no NEED_REBOOT; saw {ops:?}; log:\n{}", std::fs::read_to_string(t.dir.path().join("daemon.log")).unwrap()),
        }
    }
    assert_eq!(
        ops,
        [
            "UPDATE_STATUS_CHECKING_FOR_UPDATE",
            "UPDATE_STATUS_UPDATE_AVAILABLE",
            "UPDATE_STATUS_DOWNLOADING",
            "UPDATE_STATUS_VERIFYING",
            "UPDATE_STATUS_FINALIZING",
            "UPDATE_STATUS_UPDATED_NEED_REBOOT"
        ]
    );
    assert_eq!(last_progress, 1.0);
    let (_, _, op, version, _): (i64, f64, String, String, i64) = call(&conn, "GetStatus").await;
    assert_eq!(
        (op.as_str(), version.as_str()),
        ("UPDATE_STATUS_UPDATED_NEED_REBOOT", "1.1.0")
    );
    assert_eq!(
        slot_bytes(&t.host.disk, keel_updater::boot::Slot::B, img.len()),
        img
    );
    {
        let reqs = requests.lock().unwrap();
        let check = &reqs[0];
        assert!(
            check.contains(r#"appid="{6d1e9c1a-2f3b-4c8e-9a4d-5b7e0f1c2a3d}""#),
            "{check}"
        );
        assert!(
            check.contains(r#"track="beta""#)
                && check.contains(r#"machineid="0123456789abcdef0123456789abcdef""#),
            "{check}"
        );
        assert!(
            check.contains(r#"version="1.0.0""#) && check.contains("<updatecheck"),
            "{check}"
        );
        let events: Vec<String> = reqs[1..]
            .iter()
            .map(|r| {
                let at = r.find("eventtype=").unwrap();
                r[at..].split('>').next().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            events,
            [
                r#"eventtype="13" eventresult="1""#,
                r#"eventtype="14" eventresult="1""#,
                r#"eventtype="3" eventresult="1""#
            ]
        );
    }

    // Reboot into B (a new boot id); the bless waits for the health command.
    d.start_kill().unwrap();
    let _ = d.wait().await;
    std::fs::write(t.host.root.join("proc/cmdline"), "keel.slot=B\n").unwrap();
    std::fs::write(
        t.host.root.join("proc/sys/kernel/random/boot_id"),
        "boot-2\n",
    )
    .unwrap();
    std::fs::write(
        t.host.root.join("usr/lib/os-release"),
        "ID=keel\nVERSION=1.1.0\n",
    )
    .unwrap();
    let healthy = t.dir.path().join("healthy");
    let cmd = format!("test -e {}", healthy.display());
    let mut d = daemon(
        &t,
        &bus,
        &omaha_url,
        &["--health-grace", "0s", "--health-command", &cmd],
    );
    wait_for_name(&conn).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (v, good): (String, bool) = call(&conn, "GetBootStatus").await;
    assert_eq!(
        (v.as_str(), good),
        ("1.1.0", false),
        "not blessed while unhealthy"
    );
    assert!(t.grub_list().contains("B_OK=0"));
    std::fs::write(&healthy, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, good): (String, bool) = call(&conn, "GetBootStatus").await;
        if good {
            break;
        }
        assert!(Instant::now() < deadline, "never blessed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        t.grub_list(),
        "ORDER=B A\nA_OK=1\nA_LEFT=0\nB_OK=1\nB_LEFT=0\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.contains(r#"eventtype="3" eventresult="2" previousversion="1.0.0""#))
    {
        assert!(
            Instant::now() < deadline,
            "no 3/2 event with the previous version"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = d.start_kill();
}

/// systemd for the health gate: `ListUnitsFiltered(["failed"])`, `GetUnit`, and the unit's
/// `ActiveState` property.
struct FakeSystemd {
    failed: Arc<Mutex<Vec<String>>>,
}

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    zbus::zvariant::OwnedObjectPath,
    u32,
    String,
    zbus::zvariant::OwnedObjectPath,
);

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    fn list_units_filtered(&self, states: Vec<String>) -> Vec<UnitRow> {
        assert_eq!(states, ["failed"]);
        let root = zbus::zvariant::OwnedObjectPath::try_from("/").unwrap();
        self.failed
            .lock()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    String::new(),
                    "loaded".into(),
                    "failed".into(),
                    "failed".into(),
                    String::new(),
                    root.clone(),
                    0,
                    String::new(),
                    root.clone(),
                )
            })
            .collect()
    }

    fn get_unit(&self, name: String) -> zbus::fdo::Result<zbus::zvariant::OwnedObjectPath> {
        match name.as_str() {
            "keel-store.service" => Ok(zbus::zvariant::OwnedObjectPath::try_from(
                "/org/freedesktop/systemd1/unit/keel_2dstore_2eservice",
            )
            .unwrap()),
            _ => Err(zbus::fdo::Error::Failed(format!("Unit {name} not loaded."))),
        }
    }
}

struct FakeUnit {
    state: Arc<Mutex<String>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl FakeUnit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.state.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_gate_asks_systemd() {
    let bus = PrivateBus::start();
    let failed = Arc::new(Mutex::new(vec!["broken.service".to_string()]));
    let state = Arc::new(Mutex::new("activating".to_string()));
    let _systemd = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.systemd1")
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1",
            FakeSystemd {
                failed: failed.clone(),
            },
        )
        .unwrap()
        .serve_at(
            "/org/freedesktop/systemd1/unit/keel_2dstore_2eservice",
            FakeUnit {
                state: state.clone(),
            },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let cfg = keel_updater::health::HealthConfig {
        grace: Duration::ZERO,
        timeout: Duration::from_millis(200),
        no_failed_units: true,
        units: vec!["keel-store.service".into(), "missing.service".into()],
        commands: vec![],
        interval: Duration::from_millis(50),
    };
    let problems = keel_updater::health::check(&cfg, Some(&conn)).await;
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("broken.service"), "{problems:?}");
    assert!(
        problems[1].contains("keel-store.service is activating"),
        "{problems:?}"
    );
    assert!(problems[2].contains("missing.service"), "{problems:?}");
    assert!(keel_updater::health::gate(&cfg, Some(&conn)).await.is_err());
    failed.lock().unwrap().clear();
    *state.lock().unwrap() = "active".into();
    let cfg = keel_updater::health::HealthConfig {
        units: vec!["keel-store.service".into()],
        ..cfg
    };
    assert_eq!(keel_updater::health::gate(&cfg, Some(&conn)).await, Ok(()));
}
